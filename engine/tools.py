"""Tool calling across the seam: what the gateway asks for, and the parsers that find calls in text.

The gateway validates ``tools`` and ``tool_choice``; the engine decides how its model calls a
tool (``Engine.tool_calling``): a forced call (``required``, or a named function) is guided
decoding into a JSON shape any model can produce, so the parsers for it are here, model-free;
``auto`` needs the model's own format (Qwen2.5's ``<tool_call>`` tags, parsed with vLLM's
parser in ``engine/vllm_tool_calls.py``). A parser turns one choice's text, delta by delta,
into content and tool-call deltas in OpenAI's streamed shape (``index``, ``id`` and ``name``
on a call's first delta, ``arguments`` fragments after).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from engine.protocol import StructuredOutput


@dataclass(frozen=True)
class ToolChoice:
    """OpenAI's ``tool_choice``: ``none``, ``auto``, ``required``, or one named ``function``."""

    mode: Literal["none", "auto", "required", "function"]
    name: str | None = None


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call: the call's first delta has ``id`` and ``name``, every one may add arguments."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class ParsedText:
    """What a parser made of new text: content for the user and tool-call deltas."""

    content: str = ""
    calls: tuple[ToolCallDelta, ...] = ()


class ToolCallParser(Protocol):
    """Finds the tool calls in one choice's text; ``finish`` flushes whatever it held back."""

    def feed(self, text: str) -> ParsedText: ...

    def finish(self) -> ParsedText: ...


@dataclass(frozen=True)
class ToolCalling:
    """How the engine serves one request's tools: its constraint on decoding and a parser per choice."""

    new_parser: Callable[[], ToolCallParser]
    structured: StructuredOutput | None = None
    skip_special_tokens: bool = True


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def forced_call_schema(tools: Sequence[Mapping[str, Any]], choice: ToolChoice, parallel: bool) -> dict:
    """The JSON a forced call is decoded into: the named function's arguments, or for ``required`` an
    array of ``{"name", "parameters"}`` objects, one per call (exactly one unless ``parallel``).

    vLLM's own serving layer uses the same two shapes (``get_json_schema_from_tools``); it is
    written out here because the gateway's parsers must agree with it field by field.
    """
    functions = {tool["function"]["name"]: tool["function"] for tool in tools}
    if choice.mode == "function":
        return functions[choice.name].get("parameters") or {"type": "object"}
    calls = [{"type": "object",
              "properties": {"name": {"type": "string", "enum": [name]},
                             "parameters": function.get("parameters") or {"type": "object"}},
              "required": ["name", "parameters"]}
             for name, function in functions.items()]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


class NamedCallParser:
    """``tool_choice`` names a function: the whole text is its arguments, streamed as they come."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._started = False

    def feed(self, text: str) -> ParsedText:
        if not text:
            return ParsedText()
        first = not self._started
        self._started = True
        return ParsedText(calls=(ToolCallDelta(0, text, new_call_id() if first else None,
                                               self._name if first else None),))

    def finish(self) -> ParsedText:
        return ParsedText() if self._started else ParsedText(calls=(ToolCallDelta(0, "{}", new_call_id(), self._name),))


class RequiredCallsParser:
    """``tool_choice: required``: the text is a JSON array of calls, parsed whole at the end.

    Guided decoding guarantees the array; one cut short by ``max_tokens`` keeps the calls it
    completed (``finish_reason`` stays ``length``), and text with no complete call is content.
    """

    def __init__(self) -> None:
        self._text: list[str] = []

    def feed(self, text: str) -> ParsedText:
        self._text.append(text)
        return ParsedText()

    def finish(self) -> ParsedText:
        text = "".join(self._text)
        calls = _complete_items(text)
        try:
            deltas = tuple(ToolCallDelta(i, json.dumps(call["parameters"], ensure_ascii=False), new_call_id(),
                                         call["name"]) for i, call in enumerate(calls))
        except (TypeError, KeyError):
            deltas = ()
        return ParsedText(calls=deltas) if deltas else ParsedText(content=text)


def _complete_items(text: str) -> list:
    """The items of a JSON array that are complete, even if the array itself was cut short."""
    decoder, items = json.JSONDecoder(), []
    position = text.find("[") + 1
    if position == 0:
        return items
    while position < len(text):
        while position < len(text) and text[position] in " \t\n\r,":
            position += 1
        if position >= len(text) or text[position] == "]":
            break
        try:
            item, position = decoder.raw_decode(text, position)
        except ValueError:
            break
        items.append(item)
    return items


class PlainTextParser:
    """``tool_choice: none``: every character is content."""

    def feed(self, text: str) -> ParsedText:
        return ParsedText(content=text)

    def finish(self) -> ParsedText:
        return ParsedText()


def tools_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """For chat templates that ignore ``tools``: the functions, described where the model reads them."""
    described = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
    return f"You can call these functions (JSON schema of each):\n{described}"


def forced_tool_calling(tools: Sequence[Mapping[str, Any]], choice: ToolChoice, parallel: bool) -> ToolCalling:
    """``required`` or a named function, on any model: guided decoding into ``forced_call_schema``."""
    structured = StructuredOutput("json", forced_call_schema(tools, choice, parallel), param="tool_choice")
    if choice.mode == "function":
        name = choice.name
        return ToolCalling(lambda: NamedCallParser(name), structured)
    return ToolCalling(RequiredCallsParser, structured)
