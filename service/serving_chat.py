"""POST /v1/chat/completions: messages -> chat template -> engine -> OpenAI JSON or SSE."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse

from engine.protocol import GenerationDelta, GenerationRequest, ModelInfo, MultimodalItem, Prompt, TokenLogprob
from service.choices import ChoiceAccumulator, UsageTally
from service.errors import bad_request
from service.generation import GenerationContext, RequestScope, resolve_max_tokens, tracked_generation
from service.images import ImageLimits, load_image
from service.plugin_options import plugin_options
from service.protocol import ChatCompletionRequest, ImageContentPart, TextContentPart, VideoContentPart
from service.sse import DONE, encode_event, primed_event_stream
from service.videos import VideoLimits, load_video


def _modality(part: ImageContentPart | VideoContentPart) -> str:
    return "image" if isinstance(part, ImageContentPart) else "video"


async def chat_inputs(body: ChatCompletionRequest, info: ModelInfo, images: ImageLimits,
                      videos: VideoLimits) -> tuple[list[dict], tuple[MultimodalItem, ...]]:
    """The messages as the chat template takes them, and the images and videos in placeholder order.

    A message with media keeps its parts in order (``{"type": "image"}`` / ``{"type": "video"}``
    where each goes); every other message is plain text. Media the model does not read, or more
    images or videos than the server allows, are 400s naming the part.
    """
    parts = [(f"messages[{m}].content[{i}]", part) for m, message in enumerate(body.messages)
             for i, part in message.media_parts()]
    for param, part in parts:
        modality = _modality(part)
        if modality not in info.modalities:
            raise bad_request(f"model {info.name} does not accept {modality} input", param=param,
                              code="unsupported_modality")
        if modality == "image" and part.image_url.detail != "auto":  # the processor has one resolution
            raise bad_request(f"image_url.detail {part.image_url.detail!r} is not supported: this server reads every "
                              "image at its model's one resolution (send \"auto\" or leave it out)",
                              param=f"{param}.image_url.detail", code="unsupported_value")
    counts = Counter(_modality(part) for _, part in parts)
    for modality, limit in (("image", images.max_images), ("video", videos.max_videos)):
        if counts[modality] > limit:
            raise bad_request(f"{counts[modality]} {modality}s in the request; this server accepts at most {limit}",
                              param="messages", code=f"too_many_{modality}s")
    media = await asyncio.gather(*(
        load_image(part.image_url.url, images, f"{param}.image_url") if isinstance(part, ImageContentPart)
        else load_video(part.video_url.url, videos, f"{param}.video_url") for param, part in parts))
    messages = []
    for message in body.messages:
        if message.media_parts():
            content = [{"type": "text", "text": part.text} if isinstance(part, TextContentPart)
                       else {"type": _modality(part)}
                       for part in message.content]
        else:
            content = message.text()
        messages.append({"role": message.role, "content": content})
    items = tuple(MultimodalItem(_modality(part), data)
                  for (_, part), data in zip(parts, media, strict=True))
    return messages, items


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
        limits = self._context.limits
        messages, media = await chat_inputs(body, info, limits.images, limits.videos)
        prompt = await self._context.engine.render_chat(messages)
        if media:
            prompt = Prompt(prompt.token_ids, media)
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
