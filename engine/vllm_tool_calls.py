"""Tools on a vLLM model: rendering them into the prompt, and ``auto`` calls in the model's own format.

Which format a model calls tools in is read from its chat template: one that writes
``<tool_call>`` tags is Hermes-style (the Qwen2.5 models of the catalogue), parsed with vLLM's
``Hermes2ProToolParser``. A template without tools (SmolLM2's) gets the functions described in
a system message and earlier calls written as JSON, so forced calls (``required``, a named
function: guided decoding, ``engine/tools.py``) work on any model; ``auto`` on such a model is a
400, since nothing in its output can be told apart as a call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from engine.protocol import InvalidRequestError
from engine.tools import (
    ParsedText,
    PlainTextParser,
    ToolCallDelta,
    ToolCalling,
    ToolChoice,
    forced_tool_calling,
    new_call_id,
    tools_system_prompt,
)

HERMES_START = "<tool_call>"
HERMES_END = "</tool_call>"


def template_takes_tools(chat_template: str | None) -> bool:
    return bool(chat_template) and "tools" in chat_template


def hermes_format(chat_template: str | None) -> bool:
    return bool(chat_template) and HERMES_START in chat_template


def _held_back(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that begins ``tag`` (it may be the tag, cut mid-way)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


_BARE_OPENINGS = ("{", "```json")


class HermesCallParser:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``: content until the first tag; each
    call is handed to vLLM's parser when its closing tag arrives, and sent whole (name and arguments
    in one delta, a valid form of OpenAI's stream). Whitespace between calls is not content.

    Small Qwen2.5 models often leave the tags out and answer with the call's JSON alone (bare or in a
    ```json fence): an answer that begins so is held back, and is a call if, whole, it is exactly one
    ``{"name": <a declared tool>, "arguments": {...}}``; otherwise it is sent as content at the end.
    """

    def __init__(self, vllm_parser: Any, tool_names: Sequence[str] = ()) -> None:
        self._vllm_parser = vllm_parser  # vllm.tool_parsers.hermes_tool_parser.Hermes2ProToolParser
        self._tool_names = frozenset(tool_names)
        self._buffer = ""
        self._calls = 0
        self._space = ""  # whitespace after a call: content only if more text follows
        self._bare: str | None = ""  # the answer so far while it may be a bare call; None once it cannot

    def feed(self, text: str) -> ParsedText:
        if self._bare is not None:
            self._bare += text
            start = self._bare.lstrip()
            if any(start.startswith(o) or o.startswith(start) for o in _BARE_OPENINGS):
                return ParsedText()  # may still be a bare call: wait
            text, self._bare = self._bare, None
        self._buffer += text
        content: list[str] = []
        calls: list[ToolCallDelta] = []
        while True:
            start = self._buffer.find(HERMES_START)
            if start < 0:
                keep = _held_back(self._buffer, HERMES_START)
                content.append(self._text(self._buffer[:len(self._buffer) - keep]))
                self._buffer = self._buffer[len(self._buffer) - keep:]
                break
            content.append(self._text(self._buffer[:start]))
            end = self._buffer.find(HERMES_END, start)
            if end < 0:
                self._buffer = self._buffer[start:]
                break
            segment, self._buffer = self._buffer[start:end + len(HERMES_END)], self._buffer[end + len(HERMES_END):]
            parsed = self._parse(segment)
            content.append(self._text(parsed.content))
            calls.extend(parsed.calls)
        return ParsedText("".join(content), tuple(calls))

    def finish(self) -> ParsedText:
        """An unterminated call (``max_tokens`` cut it) is parsed if its JSON is whole, else it is content."""
        if self._bare is not None:
            held, self._bare = self._bare, None
            call = self._bare_call(held)
            if call is not None:
                return ParsedText(calls=(call,))
            result = self.feed(held)
            tail = self.finish()
            return ParsedText(result.content + tail.content, result.calls + tail.calls)
        segment, self._buffer = self._buffer, ""
        if not segment.startswith(HERMES_START):
            return ParsedText(self._text(segment))
        parsed = self._parse(segment)
        return ParsedText(self._text(parsed.content), parsed.calls)

    def _text(self, piece: str) -> str:
        """Content to send: whitespace after a call waits until more text follows (dropped if none does)."""
        if self._calls and not piece.strip():
            self._space += piece
            return ""
        piece, self._space = self._space + piece, ""
        return piece

    def _bare_call(self, text: str) -> ToolCallDelta | None:
        body = text.strip().removeprefix("```json").removesuffix("```").strip()
        try:
            call = json.loads(body)
        except ValueError:
            return None
        if not (isinstance(call, dict) and set(call) == {"name", "arguments"} and call["name"] in self._tool_names
                and isinstance(call["arguments"], dict)):
            return None
        self._calls += 1
        return ToolCallDelta(0, json.dumps(call["arguments"], ensure_ascii=False), new_call_id(), call["name"])

    def _parse(self, segment: str) -> ParsedText:
        info = self._vllm_parser.extract_tool_calls(segment, request=None)
        if not info.tools_called:
            return ParsedText(content=segment)
        calls = []
        for call in info.tool_calls:
            calls.append(ToolCallDelta(self._calls, call.function.arguments, new_call_id(), call.function.name))
            self._calls += 1
        return ParsedText(calls=tuple(calls))


def tool_calling(tokenizer: Any, tools: Sequence[Mapping[str, Any]], choice: ToolChoice,
                 parallel: bool) -> ToolCalling:
    """How this model serves the request's tools (``Engine.tool_calling``)."""
    if choice.mode == "none":
        return ToolCalling(PlainTextParser)
    if choice.mode in ("required", "function"):
        return forced_tool_calling(tools, choice, parallel)
    if not hermes_format(tokenizer.chat_template):
        raise InvalidRequestError(
            "this model has no tool-call format of its own, so tool_choice \"auto\" cannot tell a call from an "
            "answer: send tool_choice \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
            param="tool_choice", code="unsupported_value")
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    names = [tool["function"]["name"] for tool in tools]
    return ToolCalling(lambda: HermesCallParser(Hermes2ProToolParser(tokenizer), names), skip_special_tokens=False)


def _calls_as_text(message: Mapping[str, Any]) -> str:
    calls = [{"name": call["function"]["name"], "parameters": call["function"]["arguments"]}
             for call in message.get("tool_calls") or ()]
    return ((message.get("content") or "") + (json.dumps(calls, ensure_ascii=False) if calls else ""))


def messages_for_template(chat_template: str | None, messages: list[dict],
                          tools: Sequence[Mapping[str, Any]] | None) -> tuple[list[dict], list[dict] | None]:
    """The messages (and ``tools`` argument) to render: as they are for a template that takes tools;
    otherwise with the functions described in the system message and earlier calls written as JSON."""
    if template_takes_tools(chat_template):
        return messages, list(tools) if tools else None
    rendered = [{**message, "content": _calls_as_text(message)} if message.get("tool_calls")
                or message.get("content") is None else message for message in messages]
    rendered = [{key: value for key, value in message.items() if key in ("role", "content")}
                for message in rendered]
    if tools:
        described = tools_system_prompt(tools)
        if rendered and rendered[0]["role"] == "system" and isinstance(rendered[0]["content"], str):
            rendered[0] = {"role": "system", "content": rendered[0]["content"] + "\n\n" + described}
        else:
            rendered.insert(0, {"role": "system", "content": described})
    return rendered, None
