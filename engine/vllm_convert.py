"""One explicit conversion each way between the seam's types and vLLM's.

Kept apart from ``VllmEngine`` so that the engine class only orchestrates, and so that
every vLLM field leanserve reads on the way in and out is in one short module
(tests/unit/test_vllm_surface.py checks them against the pinned version).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vllm import SamplingParams
from vllm.inputs.engine import tokens_input
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from engine.protocol import Prompt, SamplingOptions, StructuredOutput, TokenLogprob


def to_sampling_params(options: SamplingOptions, extra_args: Mapping[str, Any] | None = None) -> SamplingParams:
    """OpenAI's sampling fields -> vLLM's; ``extra_args`` carries plugins' per-request options."""
    return SamplingParams(
        n=options.n,
        temperature=options.temperature,
        top_p=options.top_p,
        seed=options.seed,
        stop=list(options.stop),
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        max_tokens=options.max_tokens,
        logprobs=options.logprobs,
        ignore_eos=options.ignore_eos,
        top_k=options.top_k,
        min_p=options.min_p,
        repetition_penalty=options.repetition_penalty,
        min_tokens=options.min_tokens,
        logit_bias=dict(options.logit_bias) if options.logit_bias else None,
        structured_outputs=to_structured_outputs(options.structured),
        prompt_logprobs=options.prompt_logprobs,
        skip_special_tokens=options.skip_special_tokens,
        output_kind=RequestOutputKind.DELTA,
        extra_args=dict(extra_args) if extra_args else None,
    )


def to_structured_outputs(structured: StructuredOutput | None) -> StructuredOutputsParams | None:
    """The seam's constraint -> vLLM's guided-decoding parameters (compiled by its xgrammar backend;
    JSON compact, as ``vllm_args.structured_outputs_config`` sets for the engine)."""
    if structured is None:
        return None
    if structured.kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(**{structured.kind: structured.spec})


def to_vllm_prompt(prompt: Prompt, processor_kwargs: Mapping[str, Any] | None = None,
                   cache_salt: str | None = None) -> Any:
    """Token ids, with the multimodal items grouped by modality as vLLM's processors take them
    and plugins' ``mm_processor_kwargs`` (which also key vLLM's multimodal caches); a
    ``cache_salt`` keeps the prompt's prefix-cache blocks apart from other salts'."""
    if not prompt.multimodal:
        return tokens_input(list(prompt.token_ids), cache_salt=cache_salt)
    grouped: dict[str, list[Any]] = {}
    for item in prompt.multimodal:
        grouped.setdefault(item.modality, []).append(item.data)
    vllm_prompt: dict[str, Any] = {"prompt_token_ids": list(prompt.token_ids), "multi_modal_data": grouped}
    if processor_kwargs:
        vllm_prompt["mm_processor_kwargs"] = dict(processor_kwargs)
    if cache_salt is not None:
        vllm_prompt["cache_salt"] = cache_salt
    return vllm_prompt


def _position_logprob(token_id: int, position: Mapping[int, Any], num_top: int) -> TokenLogprob:
    """One position's {token_id: Logprob} map -> the chosen token plus its top-``num_top`` alternatives."""
    chosen = position[token_id]
    ranked = sorted(((tid, entry) for tid, entry in position.items()
                     if entry.rank is not None and entry.rank <= num_top), key=lambda pair: pair[1].rank)
    return TokenLogprob(token_id, chosen.decoded_token or "", chosen.logprob,
                        tuple(TokenLogprob(tid, entry.decoded_token or "", entry.logprob)
                              for tid, entry in ranked[:num_top]))


def token_logprobs(output: CompletionOutput, num_top: int) -> list[TokenLogprob]:
    """vLLM's per-position maps of the generated tokens -> sampled token plus top-``num_top``."""
    assert output.logprobs is not None
    return [_position_logprob(token_id, position, num_top)
            for token_id, position in zip(output.token_ids, output.logprobs, strict=True)]


def prompt_token_logprobs(output: RequestOutput, num_top: int) -> list[TokenLogprob | None]:
    """vLLM's prompt logprobs (None for the first token, which nothing predicts) -> the seam's."""
    return [None if position is None else _position_logprob(token_id, position, num_top)
            for token_id, position in zip(output.prompt_token_ids or (), output.prompt_logprobs or (), strict=False)]


def engine_queue_time(output: RequestOutput) -> float | None:
    """Seconds the request waited in vLLM's scheduler queue (None when vLLM did not time it)."""
    stats = output.metrics
    if stats is None or not stats.scheduled_ts or not stats.queued_ts:
        return None
    return max(0.0, stats.scheduled_ts - stats.queued_ts)


def input_modalities(model_config: Any) -> tuple[str, ...]:
    """The inputs besides text that the model reads ("image", "video"), as its vLLM processor declares them."""
    if not model_config.is_multimodal_model:
        return ()
    from vllm.multimodal import MULTIMODAL_REGISTRY

    limits = MULTIMODAL_REGISTRY.get_processing_info(model_config).get_supported_mm_limits()
    mm_config = model_config.multimodal_config
    return tuple(modality for modality in ("image", "video")
                 if modality in limits and mm_config.get_limit_per_prompt(modality) > 0)
