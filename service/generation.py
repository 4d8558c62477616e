"""The path every generation takes through the gateway, whatever the endpoint.

Admission (bounded queue, 429 beyond it), timing for the metrics, and
cleanup: leaving the ``async for`` early — a client gone, a deadline passed —
closes the engine stream, which aborts the engine request and frees its slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from engine.protocol import Engine, EngineDeadError, GenerationDelta, GenerationRequest, InvalidRequestError
from service import metrics
from service.admission import AdmissionController
from service.errors import api_error, bad_request
from service.limits import RequestLimits, check_prompt_tokens
from service.tracing import GenerationPhases, RequestTrace


@dataclass(frozen=True)
class GenerationContext:
    """What a serving class needs to run generations: the engine, its gatekeeper, the bounds."""

    engine: Engine
    admission: AdmissionController
    model_name: str
    limits: RequestLimits
    # Told at once when a generation sees the engine die, so /health turns 503 without
    # waiting for the next health poll.
    on_engine_dead: Callable[[str], None] | None = None


@dataclass(frozen=True)
class RequestScope:
    """Per-HTTP-request facts the generation path needs: when it arrived, when it must end,
    whom to tell how many tokens it used (per-key token budgets), and its trace (if traced)."""

    arrival_s: float
    deadline_s: float | None = None
    on_tokens: Callable[[int], None] | None = None
    trace: RequestTrace | None = None

    def remaining_s(self) -> float | None:
        return None if self.deadline_s is None else self.deadline_s - time.monotonic()


def resolve_max_tokens(
    requested: int | None, prompt_tokens: int, max_model_len: int, param: str, limits: RequestLimits,
) -> int:
    """Fit max_tokens into the context window, or explain in a 400 why it cannot fit."""
    prompt_param = {"max_completion_tokens": "messages", "max_output_tokens": "input"}.get(param, "prompt")
    check_prompt_tokens(prompt_tokens, limits, prompt_param)
    available = max_model_len - prompt_tokens
    if requested is None:
        if available < 1:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens, "
                f"but the prompt has {prompt_tokens} tokens.",
                param=prompt_param,
                code="context_length_exceeded",
            )
        return available if limits.max_tokens_limit is None else min(available, limits.max_tokens_limit)
    if requested > available:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, {requested} for the "
            f"completion). Please reduce the prompt or {param}.",
            param=param,
            code="context_length_exceeded",
        )
    return requested


async def tracked_generation(
    context: GenerationContext,
    request: GenerationRequest,
    scope: RequestScope,
) -> AsyncIterator[GenerationDelta]:
    """Run one engine request inside an admission slot, within its deadline; record its metrics.

    Timeouts wrap single awaits, never a ``yield``: a timeout spanning a yield
    would cancel whatever the consumer is doing at that moment instead.
    """
    stats = metrics.RequestStats(arrival_s=scope.arrival_s, prompt_tokens=len(request.prompt.token_ids))
    last_token_at: dict[int, float] = {}
    finished = 0
    phases = GenerationPhases(arrival_s=scope.arrival_s, slot_asked_s=time.monotonic())
    usage = None
    if scope.trace is not None:
        request = dataclasses.replace(request, trace_headers=scope.trace.engine_headers())
    try:
        async with context.admission.slot(timeout_s=scope.remaining_s()):
            admitted_s = phases.admitted_s = time.monotonic()
            try:
                async with aclosing(context.engine.generate(request)) as stream:
                    while True:
                        try:
                            async with asyncio.timeout(scope.remaining_s()):
                                delta = await anext(stream)
                        except StopAsyncIteration:
                            break
                        now = time.monotonic()
                        if stats.scheduled_s is None:
                            stats.scheduled_s = admitted_s + (delta.queue_time_s or 0.0)
                        _record_tokens(stats, last_token_at, delta, now)
                        usage = delta.usage or usage
                        if delta.finish_reason is not None:
                            finished += 1
                            stats.finish_reasons.append(delta.finish_reason)
                        yield delta
            except InvalidRequestError as error:
                raise api_error(error) from error
            except EngineDeadError as error:
                if context.on_engine_dead is not None:
                    context.on_engine_dead(str(error) or type(error).__name__)
                raise
            finally:
                stats.finish_reasons.extend(["abort"] * (request.sampling.n - finished))
                metrics.record_request(context.model_name, stats)
                if scope.on_tokens is not None:
                    scope.on_tokens(stats.prompt_tokens + stats.output_tokens)
                if scope.trace is not None:
                    scope.trace.add_generation(_traced_phases(phases, stats), usage)
    except TimeoutError as error:
        raise api_error(error) from error  # 408: the deadline passed


def _traced_phases(phases: GenerationPhases, stats: metrics.RequestStats) -> GenerationPhases:
    """The stats' timestamps and token counts, in the trace's terms (OpenTelemetry gen_ai names)."""
    return dataclasses.replace(
        phases, scheduled_s=stats.scheduled_s, first_token_s=stats.first_token_s, last_token_s=stats.last_token_s,
        attributes={"gen_ai.usage.input_tokens": stats.prompt_tokens, "gen_ai.usage.output_tokens": stats.output_tokens,
                    "gen_ai.response.finish_reasons": list(stats.finish_reasons)},
    )


def _record_tokens(
    stats: metrics.RequestStats, last_token_at: dict[int, float], delta: GenerationDelta, now: float,
) -> None:
    if delta.expanded_prompt_tokens:
        stats.prompt_tokens += delta.expanded_prompt_tokens  # image tokens the model read: as usage counts them
    count = len(delta.token_ids)
    if count == 0:
        return
    stats.output_tokens += count
    if stats.first_token_s is None:
        stats.first_token_s = now
    stats.last_token_s = now
    previous = last_token_at.get(delta.index)
    if previous is not None:
        stats.inter_token_latencies_s.extend([(now - previous) / count] * count)
    last_token_at[delta.index] = now


def validate_model(requested: str, served: str) -> None:
    if requested != served:
        raise bad_request(f"The model `{requested}` does not exist; this server serves `{served}`.",
                          param="model", code="model_not_found")
