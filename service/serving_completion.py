"""POST /v1/completions: one or more prompts (text or token ids) -> engine -> JSON or SSE.

Each prompt is its own engine request; choice ``index`` is ``prompt * n + sample``,
as in OpenAI's API.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Echo:
    """``echo``: the prompt's text, returned before the completion, and its first token (no logprob)."""

    text: str
    first_token: str


def completion_logprobs(entries: list[TokenLogprob | None], text_offset: int,
                        first_token: str = "") -> dict:
    """Engine logprobs -> the legacy completions ``logprobs`` object. A None entry is an echoed prompt's
    first token (``first_token``), which nothing predicts: null logprob and alternatives, as OpenAI has it."""
    offsets = []
    tokens = [first_token if entry is None else entry.token for entry in entries]
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [None if entry is None else entry.logprob for entry in entries],
        "top_logprobs": [None if entry is None else {top.token: top.logprob for top in entry.top}
                         for entry in entries],
        "text_offset": offsets,
    }


def _prompt_tokens(requests: list[GenerationRequest]) -> int:
    return sum(len(request.prompt.token_ids) for request in requests)


def _check_unsupported(body: CompletionRequest) -> None:
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
        echoes = [await self._echo(prompt, request) for prompt, request in zip(prompts, requests, strict=True)
                  ] if body.echo else None
        deltas = merge_streams([tracked_generation(self._context, request, scope) for request in requests])
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await primed_event_stream(self._events(base_id, requests, deltas, include_usage, echoes))
        return JSONResponse(await self._collect(base_id, requests, deltas, echoes))

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
        sampling = body.sampling_options(max_tokens)
        if body.echo and body.logprobs is not None:  # the echoed prompt's tokens get logprobs too
            sampling = dataclasses.replace(sampling, prompt_logprobs=body.logprobs)
        return GenerationRequest(request_id, Prompt(prompt_ids), sampling, options)

    async def _echo(self, prompt: str | list[int], request: GenerationRequest) -> Echo:
        engine = self._context.engine
        text = prompt if isinstance(prompt, str) else await engine.detokenize(prompt)
        first = await engine.detokenize(list(request.prompt.token_ids[:1])) if request.sampling.prompt_logprobs \
            is not None else ""
        return Echo(text, first)

    async def _collect(
        self, base_id: str, requests: list[GenerationRequest], deltas: AsyncIterator[tuple[int, GenerationDelta]],
        echoes: list[Echo] | None,
    ) -> dict:
        n = requests[0].sampling.n
        total = len(requests) * n
        choices = ChoiceAccumulator(total, _prompt_tokens(requests))
        prompt_logprobs: dict[int, list] = {}
        async for prompt_index, delta in deltas:
            choices.add(prompt_index * n + delta.index, delta)
            if delta.prompt_logprobs is not None:
                prompt_logprobs[prompt_index] = delta.prompt_logprobs
        wants_logprobs = requests[0].sampling.logprobs is not None

        def text(i: int) -> str:
            return (echoes[i // n].text if echoes else "") + choices.text(i)

        def logprobs(i: int) -> dict:
            echoed = prompt_logprobs.get(i // n, []) if echoes else []
            return completion_logprobs([*echoed, *choices.logprobs[i]], 0, echoes[i // n].first_token if echoes else "")

        return {
            "id": base_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self._context.model_name,
            "choices": [
                {
                    "index": i,
                    "text": text(i),
                    "logprobs": logprobs(i) if wants_logprobs else None,
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
        echoes: list[Echo] | None,
    ) -> AsyncIterator[str]:
        header = {"id": base_id, "object": "text_completion", "created": int(time.time()),
                  "model": self._context.model_name}
        if include_usage:
            header["usage"] = None
        n = requests[0].sampling.n
        wants_logprobs = requests[0].sampling.logprobs is not None
        text_offsets = [0] * (len(requests) * n)
        echoed = [echoes is None] * (len(requests) * n)
        prompt_logprobs: dict[int, list] = {}
        usage = UsageTally(_prompt_tokens(requests))
        try:
            async for prompt_index, delta in deltas:
                index = prompt_index * n + delta.index
                usage.add(delta)
                if delta.prompt_logprobs is not None:
                    prompt_logprobs[prompt_index] = delta.prompt_logprobs
                if not delta.text and delta.finish_reason is None and echoed[index]:
                    continue
                text, entries, first_token = delta.text, delta.logprobs or [], ""
                if not echoed[index]:  # the choice's first chunk starts with its prompt
                    echoed[index] = True
                    echo = echoes[prompt_index]
                    text, first_token = echo.text + text, echo.first_token
                    entries = [*prompt_logprobs.get(prompt_index, []), *entries]
                logprobs = None
                if wants_logprobs:
                    logprobs = completion_logprobs(entries, text_offsets[index], first_token)
                text_offsets[index] += len(text)
                yield encode_event({**header, "choices": [
                    {"index": index, "text": text, "logprobs": logprobs, "finish_reason": delta.finish_reason},
                ]})
        finally:
            await deltas.aclose()
        if include_usage:
            yield encode_event({**header, "choices": [], "usage": usage.as_dict()})
        yield DONE
