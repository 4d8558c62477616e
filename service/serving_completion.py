"""POST /v1/completions: one or more prompts (text or token ids) -> engine -> JSON or SSE.

Each prompt is its own engine request; choice ``index`` is ``prompt * n + sample``,
as in OpenAI's API.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse

from engine.protocol import GenerationDelta, GenerationRequest, Prompt, TokenLogprob
from engine.streams import merge_streams
from service.choices import ChoiceAccumulator, UsageTally
from service.errors import bad_request
from service.generation import GenerationContext, RequestScope, resolve_max_tokens, tracked_generation
from service.plugin_options import plugin_options
from service.protocol import CompletionRequest
from service.sse import DONE, encode_event, primed_event_stream

DEFAULT_MAX_TOKENS = 16


def completion_logprobs(entries: list[TokenLogprob], text_offset: int) -> dict:
    """Engine logprobs -> the legacy completions ``logprobs`` object."""
    offsets = []
    for entry in entries:
        offsets.append(text_offset)
        text_offset += len(entry.token)
    return {
        "tokens": [entry.token for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [{top.token: top.logprob for top in entry.top} for entry in entries],
        "text_offset": offsets,
    }


def _prompt_tokens(requests: list[GenerationRequest]) -> int:
    return sum(len(request.prompt.token_ids) for request in requests)


def _check_unsupported(body: CompletionRequest) -> None:
    if body.echo:
        raise bad_request("echo is not supported", param="echo")
    if body.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise bad_request("best_of other than n is not supported", param="best_of")


class CompletionServing:
    """Turns one validated completions request into engine requests and formats their output."""

    def __init__(self, context: GenerationContext) -> None:
        self._context = context

    async def create(self, body: CompletionRequest, scope: RequestScope) -> JSONResponse | StreamingResponse:
        _check_unsupported(body)
        options = plugin_options(body, self._context.engine.info())
        prompts = body.prompts()
        base_id = f"cmpl-{uuid.uuid4().hex}"
        requests = [await self._engine_request(f"{base_id}-{i}", prompt, body, options)
                    for i, prompt in enumerate(prompts)]
        deltas = merge_streams([tracked_generation(self._context, request, scope) for request in requests])
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await primed_event_stream(self._events(base_id, requests, deltas, include_usage))
        return JSONResponse(await self._collect(base_id, requests, deltas))

    async def _engine_request(
        self, request_id: str, prompt: str | list[int], body: CompletionRequest, options: dict,
    ) -> GenerationRequest:
        info = self._context.engine.info()
        prompt_ids = await self._context.engine.tokenize(prompt) if isinstance(prompt, str) else prompt
        if not prompt_ids:
            raise bad_request("prompt must not be empty", param="prompt", code="invalid_value")
        limits = self._context.limits
        requested = body.max_tokens
        if requested is None:  # OpenAI's default for completions, within this server's cap
            requested = min(DEFAULT_MAX_TOKENS, limits.max_tokens_limit or DEFAULT_MAX_TOKENS)
        max_tokens = resolve_max_tokens(requested, len(prompt_ids), info.max_model_len, "max_tokens", limits)
        return GenerationRequest(request_id, Prompt(prompt_ids), body.sampling_options(max_tokens), options)

    async def _collect(
        self, base_id: str, requests: list[GenerationRequest], deltas: AsyncIterator[tuple[int, GenerationDelta]],
    ) -> dict:
        n = requests[0].sampling.n
        total = len(requests) * n
        choices = ChoiceAccumulator(total, _prompt_tokens(requests))
        async for prompt_index, delta in deltas:
            choices.add(prompt_index * n + delta.index, delta)
        wants_logprobs = requests[0].sampling.logprobs is not None
        return {
            "id": base_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self._context.model_name,
            "choices": [
                {
                    "index": i,
                    "text": choices.text(i),
                    "logprobs": completion_logprobs(choices.logprobs[i], 0) if wants_logprobs else None,
                    "finish_reason": choices.finish_reasons[i],
                }
                for i in range(total)
            ],
            "usage": choices.usage.as_dict(),
            "system_fingerprint": None,
        }

    async def _events(
        self,
        base_id: str,
        requests: list[GenerationRequest],
        deltas: AsyncIterator[tuple[int, GenerationDelta]],
        include_usage: bool,
    ) -> AsyncIterator[str]:
        header = {"id": base_id, "object": "text_completion", "created": int(time.time()),
                  "model": self._context.model_name}
        if include_usage:
            header["usage"] = None
        n = requests[0].sampling.n
        wants_logprobs = requests[0].sampling.logprobs is not None
        text_offsets = [0] * (len(requests) * n)
        usage = UsageTally(_prompt_tokens(requests))
        try:
            async for prompt_index, delta in deltas:
                index = prompt_index * n + delta.index
                usage.add(delta)
                if not delta.text and delta.finish_reason is None:
                    continue
                logprobs = None
                if wants_logprobs:
                    logprobs = completion_logprobs(delta.logprobs or [], text_offsets[index])
                text_offsets[index] += len(delta.text)
                yield encode_event({**header, "choices": [
                    {"index": index, "text": delta.text, "logprobs": logprobs, "finish_reason": delta.finish_reason},
                ]})
        finally:
            await deltas.aclose()
        if include_usage:
            yield encode_event({**header, "choices": [], "usage": usage.as_dict()})
        yield DONE
