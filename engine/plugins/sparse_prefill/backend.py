"""vLLM's CPU attention backend with a token-sparse path for long prompts (TSA) on chosen layers.

vLLM 0.32's CPU backend writes every new token's K/V into the paged cache in a separate op
before attention runs (``forward_includes_kv_cache_update = False``), so this backend leaves that
write alone: the cache holds every token, and decode, later turns and prefix caching read it as
usual. Only the attention of a long prompt on a sparse layer changes: the whole prompt's
query/key/value rows are in the step (chunked prefill is off), so the token-sparse kernel
(``kernels.token_sparse_attention``) runs on them directly, with vLLM's own C++ kernel for the
attention over each head's kept tokens (paged_attend.py), and writes the prompt's output rows.
The step's other requests (decodes, short prompts, tokens after a cached prefix) run through
vLLM's own C++ kernel as a sub-batch. ``register`` puts the class in place of ``CPU_ATTN``
(shared/VLLM_INTERNALS.md: the CPU platform always asks the registry for that entry).
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from vllm import _custom_ops as ops
from vllm import envs
from vllm.model_executor.models.utils import extract_layer_index
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadata,
)

from engine.plugins.sparse_prefill.paged_attend import attend_kept_paged
from engine.plugins.sparse_prefill.rows import OPTIONS_KEY, EngineSparsity, StepPlan, plan_step
from engine.plugins.sparse_prefill.wire import RecordSender, request_tag
from kernels.token_sparse_attention import token_sparse_attention

_CONFIG: EngineSparsity | None = None
_RUNNER: weakref.ref | None = None  # the model runner of this process, for its requests' extra_args
_SENDER = RecordSender()
_RECORDS: list[tuple[bytes, int, int, int, int, float]] = []  # this step's figures, sent after its last sparse layer
_STEP: tuple[Any, StepPlan, Any] | None = None  # (metadata of the step, its plan, dense sub-batch)


def register(config: EngineSparsity) -> None:
    """Serve ``CPU_ATTN`` with this backend, sparse on ``config.layers``; remember the runner at load."""
    global _CONFIG
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    _CONFIG = config
    register_backend(AttentionBackendEnum.CPU_ATTN, f"{__name__}.SparsePrefillAttentionBackend")
    _remember_runner_at_load()


class SparsePrefillAttentionBackend(CPUAttentionBackend):
    """``CPU_ATTN`` with ``SparsePrefillAttentionImpl``; name, metadata and cache layout unchanged."""

    @staticmethod
    def get_impl_cls() -> type[CPUAttentionBackendImpl]:
        return SparsePrefillAttentionImpl


class SparsePrefillAttentionImpl(CPUAttentionBackendImpl):
    def forward(self, layer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: CPUAttentionMetadata | None, output: torch.Tensor, output_scale=None,
                output_block_scale=None) -> torch.Tensor:
        """query [T, H, D], key/value [T, H_kv, D], output [T, H, D] (rows of every request of the step)."""
        step = self._step(layer, attn_metadata, query.dtype) if output_scale is None and output_block_scale is None else None
        if step is None:
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                                   output_block_scale)
        plan, dense = step
        if dense is not None:
            self._dense_sub_batch(layer, query, kv_cache, attn_metadata, output, dense)
        layer_index = extract_layer_index(layer.layer_name)
        for row in plan.sparse:
            started = time.perf_counter()
            _, counts = token_sparse_attention(query[row.start:row.end], key[row.start:row.end],
                                               value[row.start:row.end], self.scale, row.sparsity,
                                               out=output[row.start:row.end],
                                               attend=functools.partial(attend_kept_paged, isa=layer.isa,
                                                                        block_size=kv_cache.shape[2],
                                                                        kv_cache_dtype=self.kv_cache_dtype))
            # counts [H]: tokens each head kept
            if row.request_id is not None:
                counts = counts.double()
                _RECORDS.append((request_tag(row.request_id), layer_index, row.end - row.start,
                                 round(counts.mean().item()), round(counts.square().mean().sqrt().item()),
                                 time.perf_counter() - started))
        if layer_index == max(_CONFIG.layers):  # the step's last sparse layer: its figures leave together
            _SENDER.send(_RECORDS)
            _RECORDS.clear()
        return output

    def _step(self, layer, metadata: CPUAttentionMetadata | None, query_dtype: torch.dtype
              ) -> tuple[StepPlan, Any] | None:
        """This step's plan if this layer may go sparse and some prompt does, else None (all dense)."""
        if (_CONFIG is None or metadata is None or not self._plain_causal() or not metadata.causal
                or extract_layer_index(layer.layer_name) not in _CONFIG.layers):
            return None
        global _STEP
        if _STEP is None or _STEP[0] is not metadata:
            plan = plan_step(metadata.query_start_loc.tolist(), metadata.seq_lens.tolist(),
                             _requests_extra_args(len(metadata.seq_lens)), _CONFIG)
            _STEP = (metadata, plan, {})
        _, plan, dense_batches = _STEP
        if not plan.sparse:
            return None
        if plan.dense_requests and "batch" not in dense_batches:
            dense_batches["batch"] = self._sub_batch(layer, metadata, plan, query_dtype)
        return plan, dense_batches.get("batch")

    def _plain_causal(self) -> bool:
        return (self.attn_type == AttentionType.DECODER and self.sliding_window == -1 and self.alibi_slopes is None
                and not self.logits_soft_cap and self.sinks is None)

    def _sub_batch(self, layer, metadata: CPUAttentionMetadata, plan: StepPlan,
                   dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The dense requests as a batch of their own: rows, query starts, lengths, blocks, kernel schedule."""
        rows = torch.tensor(plan.dense_requests, dtype=torch.long)
        starts = metadata.query_start_loc[rows]
        ends = metadata.query_start_loc[rows + 1]
        tokens = torch.cat([torch.arange(int(s), int(e)) for s, e in zip(starts, ends, strict=True)])
        query_start_loc = torch.zeros(len(rows) + 1, dtype=metadata.query_start_loc.dtype)
        query_start_loc[1:] = torch.cumsum(ends - starts, 0)
        seq_lens = metadata.seq_lens[rows].contiguous()
        schedule = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=len(rows), num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_size,
            seq_lens=seq_lens, dtype=dtype, query_start_loc=query_start_loc, causal=True,
            sliding_window_size=-1, isa=layer.isa, enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV,
            dynamic_causal=None, kv_cache_dtype=self.kv_cache_dtype)
        return {"tokens": tokens, "query_start_loc": query_start_loc, "seq_lens": seq_lens,
                "block_table": metadata.block_table[rows].contiguous(), "schedule": schedule}

    def _dense_sub_batch(self, layer, query: torch.Tensor, kv_cache: torch.Tensor, metadata: CPUAttentionMetadata,
                         output: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> None:
        """vLLM's own kernel on the step's dense requests, reading K/V back from the paged cache."""
        num_blocks, num_kv_heads, block_size, _ = kv_cache.size()
        key_cache, value_cache = kv_cache.view((num_blocks, num_kv_heads, block_size * 2, -1)).chunk(2, dim=2)
        tokens = batch["tokens"]
        sub_output = output.new_empty((len(tokens), *output.shape[1:]))  # [T_dense, H, D]
        ops.cpu_attention_with_kv_cache(
            query=query[tokens], key_cache=key_cache, value_cache=value_cache, output=sub_output,
            query_start_loc=batch["query_start_loc"], seq_lens=batch["seq_lens"], scale=self.scale, causal=True,
            alibi_slopes=None, sliding_window=-1, block_table=batch["block_table"], softcap=0,
            scheduler_metadata=batch["schedule"], s_aux=None, dynamic_causal=None, k_scale=layer._k_scale_float,
            v_scale=layer._v_scale_float, kv_cache_dtype=self.kv_cache_dtype)
        output[tokens] = sub_output


def _requests_extra_args(num_reqs: int) -> list[Mapping[str, Any] | None]:
    """Each request row's ``SamplingParams.extra_args``, in the input batch's order (= metadata rows).

    A request that asks for its prompt's log-probabilities (``echo`` with ``logprobs``) runs dense unless
    it says ``"enabled": true`` itself (the quality benchmark does): rows a sparse layer dropped have no
    attention output there, and their log-probabilities would be poor.
    """
    runner = _RUNNER() if _RUNNER is not None else None
    if runner is None:
        return [None] * num_reqs
    args = []
    for request_id in runner.input_batch.req_ids[:num_reqs]:
        state = runner.requests.get(request_id)
        params = getattr(state, "sampling_params", None)
        extra = getattr(params, "extra_args", None)
        if getattr(params, "prompt_logprobs", None) is not None and \
                ((extra or {}).get(OPTIONS_KEY) or {}).get("enabled") is not True:
            extra = {**(extra or {}), OPTIONS_KEY: {"enabled": False}}
        args.append(extra)
    return args


def _remember_runner_at_load() -> None:
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    original = CPUModelRunner.load_model
    if getattr(original, "_leanserve_remembers_runner", False):
        return

    def load_model(self, *args, **kwargs) -> None:
        global _RUNNER
        original(self, *args, **kwargs)
        _RUNNER = weakref.ref(self)

    load_model._leanserve_remembers_runner = True  # type: ignore[attr-defined]
    CPUModelRunner.load_model = load_model
