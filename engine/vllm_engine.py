"""``VllmEngine``: the ``Engine`` protocol on vLLM's in-process ``AsyncLLM`` (V1).

The engine core runs in a subprocess that vLLM spawns; this object lives in the
gateway's event loop, so everything here must stay cheap per token: it only
translates vLLM's ``RequestOutput`` deltas into ``GenerationDelta``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.inputs.engine import tokens_input
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError
from vllm.v1.metrics.loggers import StatLoggerBase

from engine.protocol import (
    EngineDeadError,
    GenerationDelta,
    GenerationRequest,
    InvalidRequestError,
    ModelInfo,
    SamplingOptions,
    SpeculationStats,
    TokenLogprob,
)

logger = logging.getLogger(__name__)

_CPU_DEFAULT_KV_CACHE_GIB = 4.0


@dataclass(frozen=True)
class VllmEngineConfig:
    """The engine fields of ``Settings``, passed through to vLLM's ``AsyncEngineArgs``."""

    model: str
    served_model_name: str
    max_model_len: int | None = None
    dtype: str = "auto"
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    kv_cache_gib: float | None = None
    seed: int = 0
    speculative_config: dict | None = None  # engine/plugins/speculative/config.py builds it


def resolve_dtype(requested: str) -> str:
    """``auto`` means float32 on CPUs without native bf16 (AVX512-BF16/AMX).

    vLLM's CPU build picks bf16 for ``auto``; on an AVX2-only CPU bf16 matmuls
    fall back to slow paths: SmolLM2-135M decoded 3.2x faster and prefilled 6x
    faster in float32 on this project's 2-core AMD EPYC (benchmarks/RESULTS.md).
    """
    import torch
    from vllm.platforms import current_platform

    if requested == "auto" and current_platform.is_cpu() and not torch.cpu._is_avx512_bf16_supported():
        return "float32"
    return requested


def _engine_args(config: VllmEngineConfig) -> AsyncEngineArgs:
    from vllm.platforms import current_platform

    optional: dict[str, object] = {}
    if config.max_model_len is not None:
        optional["max_model_len"] = config.max_model_len
    if config.max_num_seqs is not None:
        optional["max_num_seqs"] = config.max_num_seqs
    if config.gpu_memory_utilization is not None:
        optional["gpu_memory_utilization"] = config.gpu_memory_utilization
    kv_cache_gib = config.kv_cache_gib
    if kv_cache_gib is None and current_platform.is_cpu():
        # vLLM's CPU default (a fraction of the NUMA node) fails on small machines.
        kv_cache_gib = _CPU_DEFAULT_KV_CACHE_GIB
    if kv_cache_gib is not None:
        optional["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
    return AsyncEngineArgs(
        model=config.model,
        served_model_name=[config.served_model_name],
        dtype=resolve_dtype(config.dtype),
        enforce_eager=config.enforce_eager,
        tensor_parallel_size=config.tensor_parallel_size,
        seed=config.seed,
        speculative_config=config.speculative_config,
        **optional,
    )


def speculation_logger(sink: Callable[[SpeculationStats], None]) -> Callable[..., StatLoggerBase]:
    """A vLLM stat-logger factory that forwards spec-decode counts to ``sink``.

    vLLM aggregates them per scheduler step in ``SchedulerStats.spec_decoding_stats``;
    this is the documented way to read them without scraping vLLM's own metrics.
    """

    class _SpeculationLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0) -> None:
            del vllm_config, engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
            stats = getattr(scheduler_stats, "spec_decoding_stats", None)
            if stats is None or stats.num_drafts == 0:
                return
            sink(SpeculationStats(
                drafts=stats.num_drafts,
                draft_tokens=stats.num_draft_tokens,
                accepted_tokens=stats.num_accepted_tokens,
                accepted_per_position=tuple(stats.num_accepted_tokens_per_pos),
            ))

        def log_engine_initialized(self) -> None:
            pass

    return _SpeculationLogger


def to_sampling_params(options: SamplingOptions) -> SamplingParams:
    """One explicit conversion from OpenAI's sampling fields to vLLM's."""
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
        output_kind=RequestOutputKind.DELTA,
    )


def _token_logprobs(output: CompletionOutput, num_top: int) -> list[TokenLogprob]:
    """vLLM's per-position {token_id: Logprob} maps -> sampled token plus top-``num_top``."""
    result = []
    assert output.logprobs is not None
    for token_id, position in zip(output.token_ids, output.logprobs, strict=True):
        sampled = position[token_id]
        ranked = sorted(
            (entry for entry in position.values() if entry.rank is not None and entry.rank <= num_top),
            key=lambda entry: entry.rank,
        )
        result.append(TokenLogprob(
            token=sampled.decoded_token or "",
            logprob=sampled.logprob,
            top=tuple((entry.decoded_token or "", entry.logprob) for entry in ranked[:num_top]),
        ))
    return result


class VllmEngine:
    """An ``Engine`` backed by one vLLM ``AsyncLLM``."""

    def __init__(self, llm: AsyncLLM, served_model_name: str) -> None:
        self._llm = llm
        self._tokenizer = llm.get_tokenizer()
        self._tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
        self._info = ModelInfo(name=served_model_name, max_model_len=llm.model_config.max_model_len)

    @classmethod
    async def start(cls, config: VllmEngineConfig,
                    on_speculation: Callable[[SpeculationStats], None] | None = None) -> VllmEngine:
        """Load the model; runs vLLM's blocking start-up off the event loop.

        ``on_speculation`` receives each engine step's speculative-decoding counts
        (only called when ``config.speculative_config`` is set).
        """
        args = _engine_args(config)
        loggers = [speculation_logger(on_speculation)] if on_speculation and config.speculative_config else None
        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args, stat_loggers=loggers)
        return cls(llm, config.served_model_name)

    def info(self) -> ModelInfo:
        return self._info

    async def tokenize(self, text: str) -> list[int]:
        """Off the event loop, as vLLM's own server does: a long prompt does not stall other
        streams, and requests arriving together reach the engine together (one prefill step)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._tokenizer_pool, partial(self._tokenizer.encode, text, add_special_tokens=False),
        )

    async def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        try:
            text = self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt,
            )
        except Exception as error:  # jinja errors: a message the template cannot render
            raise InvalidRequestError(f"chat template failed: {error}", param="messages") from error
        return await self.tokenize(text)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        prompt = tokens_input(list(request.prompt_token_ids))
        num_top = request.sampling.logprobs
        first = True
        try:
            params = to_sampling_params(request.sampling)
            async for output in self._llm.generate(prompt, params, request.request_id):
                queue_time = _engine_queue_time(output) if first else None
                first = False
                for choice in output.outputs:
                    yield GenerationDelta(
                        index=choice.index,
                        text=choice.text,
                        token_ids=list(choice.token_ids),
                        finish_reason=choice.finish_reason,
                        stop_reason=choice.stop_reason,
                        logprobs=_token_logprobs(choice, num_top) if num_top is not None else None,
                        queue_time_s=queue_time,
                    )
        except VllmEngineDeadError as error:
            raise EngineDeadError(str(error) or "the engine died") from error
        except (VLLMClientError, ValueError) as error:
            message = error.args[0] if error.args else str(error)
            raise InvalidRequestError(message, param=getattr(error, "parameter", None)) from error

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    async def check_health(self) -> None:
        if self._llm.errored:
            raise EngineDeadError(str(self._llm.dead_error))
        try:
            await self._llm.check_health()
        except Exception as error:
            raise EngineDeadError(str(error)) from error

    async def shutdown(self) -> None:
        self._llm.shutdown()


def _engine_queue_time(output: RequestOutput) -> float | None:
    stats = output.metrics
    if stats is None or not stats.scheduled_ts or not stats.queued_ts:
        return None
    return max(0.0, stats.scheduled_ts - stats.queued_ts)
