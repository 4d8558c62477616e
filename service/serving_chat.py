"""POST /v1/chat/completions: messages -> chat template -> engine -> OpenAI JSON or SSE."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse

from engine.protocol import GenerationDelta, GenerationRequest, TokenLogprob
from service.choices import ChoiceAccumulator, UsageTally
from service.generation import GenerationContext, RequestScope, resolve_max_tokens, tracked_generation
from service.plugin_options import plugin_options
from service.protocol import ChatCompletionRequest
from service.sse import DONE, encode_event, primed_event_stream


def _logprob_entry(entry: TokenLogprob) -> dict:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.token.encode())}


def chat_logprobs(entries: list[TokenLogprob]) -> dict:
    """Engine logprobs -> OpenAI's ``choices[].logprobs`` object."""
    return {"content": [
        {**_logprob_entry(entry), "top_logprobs": [_logprob_entry(top) for top in entry.top]}
        for entry in entries
    ]}


class ChatCompletionServing:
    """Turns one validated chat request into an engine request and formats its output."""

    def __init__(self, context: GenerationContext) -> None:
        self._context = context

    async def create(self, body: ChatCompletionRequest, scope: RequestScope) -> JSONResponse | StreamingResponse:
        info = self._context.engine.info()
        options = plugin_options(body, info)
        messages = [{"role": message.role, "content": message.text()} for message in body.messages]
        prompt = await self._context.engine.render_chat(messages)
        max_tokens = resolve_max_tokens(
            body.requested_max_tokens(), len(prompt.token_ids), info.max_model_len, "max_completion_tokens",
            self._context.limits,
        )
        request = GenerationRequest(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            prompt=prompt,
            sampling=body.sampling_options(max_tokens),
            options=options,
        )
        deltas = tracked_generation(self._context, request, scope)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await primed_event_stream(self._events(request, deltas, include_usage))
        return JSONResponse(await self._collect(request, deltas))

    async def _collect(self, request: GenerationRequest, deltas: AsyncIterator[GenerationDelta]) -> dict:
        n = request.sampling.n
        choices = ChoiceAccumulator(n, len(request.prompt.token_ids))
        async for delta in deltas:
            choices.add(delta.index, delta)
        wants_logprobs = request.sampling.logprobs is not None
        return {
            "id": request.request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._context.model_name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": choices.text(i)},
                    "logprobs": chat_logprobs(choices.logprobs[i]) if wants_logprobs else None,
                    "finish_reason": choices.finish_reasons[i],
                }
                for i in range(n)
            ],
            "usage": choices.usage.as_dict(),
            "system_fingerprint": None,
        }

    async def _events(
        self, request: GenerationRequest, deltas: AsyncIterator[GenerationDelta], include_usage: bool,
    ) -> AsyncIterator[str]:
        header = {
            "id": request.request_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self._context.model_name,
        }
        if include_usage:
            header["usage"] = None
        wants_logprobs = request.sampling.logprobs is not None
        usage = UsageTally(len(request.prompt.token_ids))
        started = False
        try:
            async for delta in deltas:
                if not started:  # the role chunks follow the first engine output (see sse.py)
                    started = True
                    for i in range(request.sampling.n):
                        yield encode_event({**header, "choices": [
                            {"index": i, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None},
                        ]})
                usage.add(delta)
                if not delta.text and delta.finish_reason is None:
                    continue
                choice = {
                    "index": delta.index,
                    "delta": {"content": delta.text} if delta.text else {},
                    "logprobs": chat_logprobs(delta.logprobs or []) if wants_logprobs else None,
                    "finish_reason": delta.finish_reason,
                }
                yield encode_event({**header, "choices": [choice]})
        finally:
            await deltas.aclose()
        if include_usage:
            yield encode_event({**header, "choices": [], "usage": usage.as_dict()})
        yield DONE
