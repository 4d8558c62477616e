"""Tool calling in OpenAI's shape: ``tools``, ``tool_choice``, ``parallel_tool_calls``, and the calls that come back.

The gateway validates the definitions (names, parameter schemas, a named choice that exists)
and formats calls; the engine renders the tools into the prompt and finds the calls in the
model's text (``Engine.tool_calling``, ``engine/tools.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from engine.tools import ParsedText, ToolCallDelta, ToolChoice
from service.errors import bad_request
from service.structured import check_schema

FunctionName = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionDefinition(_Strict):
    name: str = FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class ChosenFunction(_Strict):
    name: str = FunctionName


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: ChosenFunction


ToolChoiceField = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(_Strict):
    name: str = FunctionName
    arguments: str


class MessageToolCall(_Strict):
    """A call the assistant made earlier in the conversation (``messages[].tool_calls``)."""

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ToolFields(BaseModel):
    tools: list[ToolDefinition] | None = Field(None, max_length=128)
    tool_choice: ToolChoiceField | None = None
    parallel_tool_calls: StrictBool = True


def tool_request(body: ToolFields) -> tuple[list[dict], ToolChoice, bool] | None:
    """The validated tools (as plain dicts for the template), the choice and ``parallel_tool_calls``;
    None when the request has no tools. Refuses what OpenAI refuses, with the field named."""
    if not body.tools:
        if body.tool_choice not in (None, "none"):
            raise bad_request("tool_choice needs tools", param="tool_choice", code="invalid_value")
        return None
    names = [tool.function.name for tool in body.tools]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise bad_request(f"two tools are named {name!r}", param=f"tools[{i}].function.name",
                              code="invalid_value")
    for i, tool in enumerate(body.tools):
        if tool.function.parameters is not None:
            check_schema(tool.function.parameters, f"tools[{i}].function.parameters")
    choice = body.tool_choice or "auto"
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise bad_request(f"tool_choice names {choice.function.name!r}, which is not in tools",
                              param="tool_choice.function.name", code="invalid_value")
        chosen = ToolChoice("function", choice.function.name)
    else:
        chosen = ToolChoice(choice)
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools]
    return tools, chosen, body.parallel_tool_calls


def template_tool_calls(calls: Sequence[MessageToolCall], param: str) -> list[dict]:
    """Earlier calls as chat templates take them: arguments as an object, not a JSON string."""
    rendered = []
    for i, call in enumerate(calls):
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError as error:
            raise bad_request(f"{param}[{i}].function.arguments is not valid JSON: {error}",
                              param=f"{param}[{i}].function.arguments", code="invalid_value") from error
        rendered.append({"id": call.id, "type": "function",
                         "function": {"name": call.function.name, "arguments": arguments}})
    return rendered


class ChoiceCalls:
    """One choice's tool calls, gathered from parser output for a non-streamed message."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.calls: list[dict] = []

    def add(self, parsed: ParsedText) -> None:
        self.content.append(parsed.content)
        for delta in parsed.calls:
            if delta.index == len(self.calls):
                self.calls.append({"id": delta.id, "type": "function",
                                   "function": {"name": delta.name, "arguments": ""}})
            self.calls[delta.index]["function"]["arguments"] += delta.arguments

    def message(self) -> dict[str, Any]:
        text = "".join(self.content)
        message: dict[str, Any] = {"role": "assistant", "content": text or (None if self.calls else "")}
        if self.calls:
            message["tool_calls"] = self.calls
        return message


def stream_tool_calls(calls: Sequence[ToolCallDelta]) -> list[dict]:
    """Parser deltas -> ``delta.tool_calls`` entries: id, type and name only on a call's first delta."""
    entries = []
    for call in calls:
        entry: dict[str, Any] = {"index": call.index}
        function: dict[str, Any] = {"arguments": call.arguments}
        if call.id is not None:
            entry.update(id=call.id, type="function")
            function["name"] = call.name
        entry["function"] = function
        entries.append(entry)
    return entries


def finish_reason(reason: str | None, called: bool) -> str | None:
    """``tool_calls`` for a choice that ended (not cut by ``length``) having called a tool, as OpenAI reports."""
    return "tool_calls" if called and reason == "stop" else reason
