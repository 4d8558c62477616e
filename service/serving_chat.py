"""POST /v1/chat/completions: messages -> chat template -> engine -> OpenAI JSON or SSE."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse

from engine.protocol import GenerationDelta, GenerationRequest, TokenLogprob
from service.generation import (
    GenerationContext,
    RequestScope,
    resolve_max_tokens,
    sampling_options,
    tracked_generation,
    usage,
)
from service.protocol import ChatCompletionRequest
from service.sse import DONE, encode_event, primed_event_stream


def chat_logprobs(entries: list[TokenLogprob]) -> dict:
    """Engine logprobs -> OpenAI's ``choices[].logprobs`` object."""
    return {"content": [
        {
            "token": entry.token,
            "logprob": entry.logprob,
            "bytes": list(entry.token.encode()),
            "top_logprobs": [
                {"token": token, "logprob": logprob, "bytes": list(token.encode())}
                for token, logprob in entry.top
            ],
        }
        for entry in entries
    ]}


class ChatCompletionServing:
    """Turns one validated chat request into an engine request and formats its output."""

    def __init__(self, context: GenerationContext) -> None:
        self._context = context

    async def create(self, body: ChatCompletionRequest, scope: RequestScope) -> JSONResponse | StreamingResponse:
        info = self._context.engine.info()
        messages = [{"role": message.role, "content": message.text()} for message in body.messages]
        prompt_ids = await self._context.engine.render_chat(messages)
        max_tokens = resolve_max_tokens(
            body.requested_max_tokens(), len(prompt_ids), info.max_model_len, "max_completion_tokens",
            self._context.limits,
        )
        request = GenerationRequest(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            prompt_token_ids=prompt_ids,
            sampling=sampling_options(
                max_tokens=max_tokens, n=body.n, temperature=body.temperature, top_p=body.top_p,
                seed=body.seed, stop=body.stop_sequences(), presence_penalty=body.presence_penalty,
                frequency_penalty=body.frequency_penalty, logprobs=body.requested_logprobs(),
                ignore_eos=body.ignore_eos,
            ),
        )
        deltas = tracked_generation(self._context, request, scope)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await primed_event_stream(self._events(request, deltas, include_usage))
        return JSONResponse(await self._collect(request, deltas))

    async def _collect(self, request: GenerationRequest, deltas: AsyncIterator[GenerationDelta]) -> dict:
        n = request.sampling.n
        texts = [[] for _ in range(n)]
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
        finish = [None] * n
        completion_tokens = 0
        async for delta in deltas:
            texts[delta.index].append(delta.text)
            completion_tokens += len(delta.token_ids)
            if delta.logprobs:
                logprobs[delta.index].extend(delta.logprobs)
            if delta.finish_reason is not None:
                finish[delta.index] = delta.finish_reason
        wants_logprobs = request.sampling.logprobs is not None
        return {
            "id": request.request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._context.model_name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "".join(texts[i])},
                    "logprobs": chat_logprobs(logprobs[i]) if wants_logprobs else None,
                    "finish_reason": finish[i],
                }
                for i in range(n)
            ],
            "usage": usage(len(request.prompt_token_ids), completion_tokens),
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
        completion_tokens = 0
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
                completion_tokens += len(delta.token_ids)
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
            yield encode_event({**header, "choices": [], "usage": usage(len(request.prompt_token_ids), completion_tokens)})
        yield DONE
