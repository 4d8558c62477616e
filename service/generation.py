"""The path every generation takes through the gateway, whatever the endpoint.

Admission (bounded queue, 429 beyond it), timing for the metrics, and
cleanup: leaving the ``async for`` early — a client gone, a deadline passed —
closes the engine stream, which aborts the engine request and frees its slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from engine.protocol import Engine, GenerationDelta, GenerationRequest, InvalidRequestError, SamplingOptions
from service import metrics
from service.admission import AdmissionController
from service.errors import bad_request


@dataclass(frozen=True)
class GenerationContext:
    """What a serving class needs to run generations: the engine and its gatekeeper."""

    engine: Engine
    admission: AdmissionController
    model_name: str


def resolve_max_tokens(requested: int | None, prompt_tokens: int, max_model_len: int, param: str) -> int:
    """Fit max_tokens into the context window, or explain in a 400 why it cannot fit."""
    available = max_model_len - prompt_tokens
    if requested is None:
        if available < 1:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens, "
                f"but the prompt has {prompt_tokens} tokens.",
                param="messages" if param == "max_completion_tokens" else "prompt",
                code="context_length_exceeded",
            )
        return available
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
    arrival_s: float,
) -> AsyncIterator[GenerationDelta]:
    """Run one engine request inside an admission slot and record its metrics."""
    stats = metrics.RequestStats(arrival_s=arrival_s, prompt_tokens=len(request.prompt_token_ids))
    last_token_at: dict[int, float] = {}
    finished = 0
    async with context.admission.slot():
        admitted_s = time.monotonic()
        try:
            async with aclosing(context.engine.generate(request)) as stream:
                async for delta in stream:
                    now = time.monotonic()
                    if stats.scheduled_s is None:
                        stats.scheduled_s = admitted_s + (delta.queue_time_s or 0.0)
                    _record_tokens(stats, last_token_at, delta, now)
                    if delta.finish_reason is not None:
                        finished += 1
                        stats.finish_reasons.append(delta.finish_reason)
                    yield delta
        except InvalidRequestError as error:
            raise bad_request(str(error), param=error.param) from error
        finally:
            stats.finish_reasons.extend(["abort"] * (request.sampling.n - finished))
            metrics.record_request(context.model_name, stats)


def _record_tokens(
    stats: metrics.RequestStats, last_token_at: dict[int, float], delta: GenerationDelta, now: float,
) -> None:
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


async def merge_streams(streams: list[AsyncIterator[GenerationDelta]]) -> AsyncIterator[tuple[int, GenerationDelta]]:
    """Interleave several prompts' streams as (prompt index, delta), as they arrive."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for delta in only:
                yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, GenerationDelta | None | BaseException]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerationDelta]) -> None:
        try:
            async with aclosing(stream) as owned:
                async for delta in owned:
                    await queue.put((index, delta))
            await queue.put((index, None))
        except Exception as error:  # surfaced to the consumer below
            await queue.put((index, error))

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sampling_options(
    *,
    max_tokens: int,
    n: int,
    temperature: float | None,
    top_p: float | None,
    seed: int | None,
    stop: tuple[str, ...],
    presence_penalty: float,
    frequency_penalty: float,
    logprobs: int | None,
    ignore_eos: bool = False,
) -> SamplingOptions:
    """OpenAI defaults (temperature 1, top_p 1) applied where the client sent nothing."""
    return SamplingOptions(
        max_tokens=max_tokens,
        n=n,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        seed=seed,
        stop=stop,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        logprobs=logprobs,
        ignore_eos=ignore_eos,
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def validate_model(requested: str, served: str) -> None:
    if requested != served:
        raise bad_request(f"The model `{requested}` does not exist; this server serves `{served}`.",
                          param="model", code="model_not_found")
