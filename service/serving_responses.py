"""POST /v1/responses: a chat generation, told as a Response object or as its stream of typed events.

The event sequence is the one the ``openai`` package's ``client.responses.stream`` accumulates:
``response.created`` and ``response.in_progress``; per output item ``output_item.added``, its
deltas (``content_part.added`` then ``output_text.delta``s for a message,
``function_call_arguments.delta``s for a call), their ``.done`` events and ``output_item.done``;
then ``response.completed`` (or ``response.incomplete`` when ``max_output_tokens`` cut it),
each with a rising ``sequence_number``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from engine.protocol import GenerationDelta, GenerationRequest
from engine.tools import ParsedText, ToolCalling
from service.choices import UsageTally
from service.errors import APIError, bad_request
from service.generation import GenerationContext, RequestScope, tracked_generation
from service.protocol import ChatCompletionRequest
from service.responses_protocol import ResponsesRequest, chat_body, responses_param
from service.serving_chat import ChatCompletionServing
from service.sse import encode_event, primed_event_stream


def _usage(tally: UsageTally) -> dict[str, Any]:
    counts = tally.as_dict()
    plugins = {key: value for key, value in counts.items() if isinstance(value, dict) and key != "prompt_tokens_details"}
    return {"input_tokens": counts["prompt_tokens"], "input_tokens_details": counts["prompt_tokens_details"],
            "output_tokens": counts["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counts["total_tokens"], **plugins}


class _Output:
    """The response's output items as they form, and the events that tell each step of it."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self._open: dict | None = None
        self._calls: dict[int, dict] = {}  # parser's call index -> its item
        self.sequence = 0

    def event(self, kind: str, **fields: Any) -> dict:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence - 1, **fields}

    def add(self, parsed: ParsedText) -> list[dict]:
        events = []
        if parsed.content:
            if self._open is None or self._open["type"] != "message":
                events += self._close()
                events += self._open_item({"type": "message", "id": f"msg_{uuid.uuid4().hex}", "status": "in_progress",
                                           "role": "assistant", "content": []})
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                self._open["content"].append(part)
                events.append(self.event("response.content_part.added", **self._where(), content_index=0, part=part))
            self._open["content"][0]["text"] += parsed.content
            events.append(self.event("response.output_text.delta", **self._where(), content_index=0,
                                     delta=parsed.content, logprobs=[]))
        for call in parsed.calls:
            if call.id is not None:
                events += self._close()
                events += self._open_item({"type": "function_call", "id": f"fc_{uuid.uuid4().hex}",
                                           "call_id": call.id, "name": call.name, "arguments": "",
                                           "status": "in_progress"})
                self._calls[call.index] = self._open
            if call.arguments:
                self._calls[call.index]["arguments"] += call.arguments
                events.append(self.event("response.function_call_arguments.delta", **self._where(),
                                         delta=call.arguments))
        return events

    def finish(self) -> list[dict]:
        return self._close()

    def _where(self) -> dict:
        return {"item_id": self._open["id"], "output_index": len(self.items) - 1}

    def _open_item(self, item: dict) -> list[dict]:
        self.items.append(item)
        self._open = item
        return [self.event("response.output_item.added", output_index=len(self.items) - 1, item=dict(item))]

    def _close(self) -> list[dict]:
        item, events = self._open, []
        if item is None:
            return events
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self.event("response.output_text.done", **self._where(), content_index=0,
                                     text=part["text"], logprobs=[]))
            events.append(self.event("response.content_part.done", **self._where(), content_index=0, part=part))
        else:
            events.append(self.event("response.function_call_arguments.done", **self._where(),
                                     name=item["name"], arguments=item["arguments"]))
        item["status"] = "completed"
        events.append(self.event("response.output_item.done", output_index=len(self.items) - 1, item=item))
        self._open = None
        return events


class ResponsesServing:
    """Runs a Responses request through the chat path and formats it as a Response."""

    def __init__(self, context: GenerationContext, chat: ChatCompletionServing) -> None:
        self._context = context
        self._chat = chat

    async def create(self, body: ResponsesRequest, scope: RequestScope) -> JSONResponse | StreamingResponse:
        body.refuse_state()
        response_id = f"resp_{uuid.uuid4().hex}"
        try:
            chat = ChatCompletionRequest.model_validate(chat_body(body))
            request, calling = await self._chat.prepare(chat, response_id, "max_output_tokens")
        except ValidationError as error:
            first = error.errors()[0]
            param = responses_param(".".join(str(part) for part in first.get("loc", ()))) or None
            raise bad_request(f"{param}: {first.get('msg')}", param=param, code="invalid_value") from error
        except APIError as error:
            error.param = responses_param(error.param)
            raise
        deltas = self._renamed(tracked_generation(self._context, request, scope))
        if body.stream:
            return await primed_event_stream(self._events(body, request, deltas, calling))
        output, tally, reason = _Output(), UsageTally(len(request.prompt.token_ids)), None
        parser = calling.new_parser()
        async for delta in deltas:
            tally.add(delta)
            output.add(parser.feed(delta.text))
            reason = delta.finish_reason or reason
        output.add(parser.finish())
        output.finish()
        return JSONResponse(self._response(body, response_id, output.items, reason, tally))

    @staticmethod
    async def _renamed(deltas: AsyncIterator[GenerationDelta]) -> AsyncIterator[GenerationDelta]:
        """Engine errors name chat fields (``response_format``); say what the Responses request called them."""
        try:
            async for delta in deltas:
                yield delta
        except APIError as error:
            error.param = responses_param(error.param)
            raise
        finally:
            await deltas.aclose()

    async def _events(self, body: ResponsesRequest, request: GenerationRequest,
                      deltas: AsyncIterator[GenerationDelta], calling: ToolCalling) -> AsyncIterator[str]:
        output, tally, reason = _Output(), UsageTally(len(request.prompt.token_ids)), None
        parser = calling.new_parser()
        created = self._response(body, request.request_id, [], None, None)
        try:
            async for delta in deltas:
                if output.sequence == 0:  # after the first engine output: errors before it are plain 4xx (sse.py)
                    yield encode_event(output.event("response.created", response=created))
                    yield encode_event(output.event("response.in_progress", response=created))
                tally.add(delta)
                reason = delta.finish_reason or reason
                for event in output.add(parser.feed(delta.text)):
                    yield encode_event(event)
        finally:
            await deltas.aclose()
        if output.sequence == 0:
            yield encode_event(output.event("response.created", response=created))
        for event in [*output.add(parser.finish()), *output.finish()]:
            yield encode_event(event)
        final = self._response(body, request.request_id, output.items, reason, tally)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield encode_event(output.event(kind, response=final))

    def _response(self, body: ResponsesRequest, response_id: str, items: list[dict], reason: str | None,
                  tally: UsageTally | None) -> dict:
        status = "in_progress" if tally is None else "incomplete" if reason == "length" else "completed"
        text_format = body.text.format.model_dump(by_alias=True) if body.text and body.text.format else {"type": "text"}
        tool_choice = body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump") else body.tool_choice
        return {
            "id": response_id, "object": "response", "created_at": int(time.time()), "status": status,
            "model": self._context.model_name, "output": items, "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens, "temperature": body.temperature, "top_p": body.top_p,
            "parallel_tool_calls": body.parallel_tool_calls, "tool_choice": tool_choice or "auto",
            "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or ()],
            "text": {"format": text_format}, "truncation": "disabled", "store": False, "background": False,
            "metadata": body.metadata or {}, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "usage": None if tally is None else _usage(tally),
        }
