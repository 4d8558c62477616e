"""POST /v1/chat/completions: messages -> chat template -> engine -> OpenAI JSON or SSE."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse

from engine.protocol import (
    GenerationDelta,
    GenerationRequest,
    ModelInfo,
    MultimodalItem,
    Prompt,
    SamplingOptions,
    TokenLogprob,
)
from engine.tools import ParsedText, PlainTextParser, ToolCalling
from service.choices import ChoiceAccumulator, UsageTally
from service.errors import bad_request
from service.generation import GenerationContext, RequestScope, resolve_max_tokens, tracked_generation
from service.images import ImageLimits, load_image
from service.plugin_options import plugin_options
from service.protocol import ChatCompletionRequest, ChatMessage, ImageContentPart, TextContentPart, VideoContentPart
from service.sse import DONE, encode_event, primed_event_stream
from service.tool_calls import ChoiceCalls, finish_reason, stream_tool_calls, template_tool_calls, tool_request
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
    messages = template_messages(body.messages)
    items = tuple(MultimodalItem(_modality(part), data)
                  for (_, part), data in zip(parts, media, strict=True))
    return messages, items


def template_messages(messages: list[ChatMessage]) -> list[dict]:
    return [_template_message(message, f"messages[{m}]") for m, message in enumerate(messages)]


def _template_message(message: ChatMessage, param: str) -> dict:
    """One message as chat templates take it: media parts in place, earlier tool calls as objects."""
    if message.media_parts():
        content: object = [{"type": "text", "text": part.text} if isinstance(part, TextContentPart)
                           else {"type": _modality(part)} for part in message.content]
    elif message.content is None and message.tool_calls:
        content = None
    else:
        content = message.text()
    rendered = {"role": message.role, "content": content}
    if message.tool_calls:
        rendered["tool_calls"] = template_tool_calls(message.tool_calls, f"{param}.tool_calls")
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        rendered["name"] = message.name
    return rendered


def _logprob_entry(entry: TokenLogprob) -> dict:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.token.encode())}


def chat_logprobs(entries: list[TokenLogprob]) -> dict:
    """Engine logprobs -> OpenAI's ``choices[].logprobs`` object."""
    return {"content": [
        {**_logprob_entry(entry), "top_logprobs": [_logprob_entry(top) for top in entry.top]}
        for entry in entries
    ]}


def _with_tool_calling(sampling: SamplingOptions, calling: ToolCalling, has_tools: bool) -> SamplingOptions:
    """The tool calling's constraint on decoding; a second constraint (``response_format``) is a 400."""
    if calling.structured is None and calling.skip_special_tokens:
        return sampling
    if sampling.structured is not None and has_tools:
        raise bad_request(f"{sampling.structured.param} cannot be combined with tools: send tool_choice \"none\" "
                          "or leave one out", param=sampling.structured.param, code="invalid_value")
    return dataclasses.replace(sampling, structured=calling.structured or sampling.structured,
                               skip_special_tokens=calling.skip_special_tokens)


class ChatCompletionServing:
    """Turns one validated chat request into an engine request and formats its output."""

    def __init__(self, context: GenerationContext) -> None:
        self._context = context

    async def create(self, body: ChatCompletionRequest, scope: RequestScope) -> JSONResponse | StreamingResponse:
        request, calling = await self.prepare(body, f"chatcmpl-{uuid.uuid4().hex}")
        deltas = tracked_generation(self._context, request, scope)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await primed_event_stream(self._events(request, deltas, include_usage, calling))
        return JSONResponse(await self._collect(request, deltas, calling))

    async def prepare(self, body: ChatCompletionRequest, request_id: str,
                      max_tokens_param: str = "max_completion_tokens") -> tuple[GenerationRequest, ToolCalling]:
        """The engine request (prompt rendered, images loaded, sampling checked) and its tool calling."""
        info = self._context.engine.info()
        options = plugin_options(body, info)
        limits = self._context.limits
        messages, media = await chat_inputs(body, info, limits.images, limits.videos)
        tools = tool_request(body)
        calling = ToolCalling(PlainTextParser)
        if tools is not None and tools[1].mode != "none":
            calling = self._context.engine.tool_calling(*tools)
        prompt = await self._context.engine.render_chat(
            messages, tools=tools[0] if tools is not None and tools[1].mode != "none" else None)
        if media:
            prompt = Prompt(prompt.token_ids, media)
        max_tokens = resolve_max_tokens(
            body.requested_max_tokens(), len(prompt.token_ids), info.max_model_len, max_tokens_param,
            self._context.limits,
        )
        request = GenerationRequest(
            request_id=request_id,
            prompt=prompt,
            sampling=_with_tool_calling(body.sampling_options(max_tokens), calling, tools is not None),
            options=options,
        )
        return request, calling

    async def _collect(self, request: GenerationRequest, deltas: AsyncIterator[GenerationDelta],
                       calling: ToolCalling) -> dict:
        n = request.sampling.n
        choices = ChoiceAccumulator(n, len(request.prompt.token_ids))
        async for delta in deltas:
            choices.add(delta.index, delta)
        wants_logprobs = request.sampling.logprobs is not None
        messages = []
        for i in range(n):
            parser, calls = calling.new_parser(), ChoiceCalls()
            calls.add(parser.feed(choices.text(i)))
            calls.add(parser.finish())
            messages.append(calls)
        return {
            "id": request.request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._context.model_name,
            "choices": [
                {
                    "index": i,
                    "message": messages[i].message(),
                    "logprobs": chat_logprobs(choices.logprobs[i]) if wants_logprobs else None,
                    "finish_reason": finish_reason(choices.finish_reasons[i], bool(messages[i].calls)),
                }
                for i in range(n)
            ],
            "usage": choices.usage.as_dict(),
            "system_fingerprint": None,
        }

    async def _events(
        self, request: GenerationRequest, deltas: AsyncIterator[GenerationDelta], include_usage: bool,
        calling: ToolCalling,
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
        parsers = [calling.new_parser() for _ in range(request.sampling.n)]
        called = [False] * request.sampling.n
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
                parsed = parsers[delta.index].feed(delta.text)
                if delta.finish_reason is not None:
                    tail = parsers[delta.index].finish()
                    parsed = ParsedText(parsed.content + tail.content, parsed.calls + tail.calls)
                called[delta.index] |= bool(parsed.calls)
                message: dict = {"content": parsed.content} if parsed.content else {}
                if parsed.calls:
                    message["tool_calls"] = stream_tool_calls(parsed.calls)
                if not message and delta.finish_reason is None and not wants_logprobs:
                    continue  # held back by the parser (a tool call still arriving)
                choice = {
                    "index": delta.index,
                    "delta": message,
                    "logprobs": chat_logprobs(delta.logprobs or []) if wants_logprobs else None,
                    "finish_reason": finish_reason(delta.finish_reason, called[delta.index]),
                }
                yield encode_event({**header, "choices": [choice]})
        finally:
            await deltas.aclose()
        if include_usage:
            yield encode_event({**header, "choices": [], "usage": usage.as_dict()})
        yield DONE
