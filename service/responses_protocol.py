"""POST /v1/responses, the stateless subset: the request body, and its translation to a chat request.

OpenAI's Responses API is its recommended API in current SDKs. This server keeps nothing, so
``store: true``, ``previous_response_id`` and ``background`` are 400s; everything else a request
can say about one answer (``input`` as text or items, ``instructions``, ``max_output_tokens``,
sampling, ``text.format``, function ``tools``) maps onto the chat path, which renders the
conversation, enforces structured output and finds tool calls exactly as for chat completions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from service.errors import bad_request
from service.protocol import RequestBody, Temperature, TopP
from service.structured import JsonObjectFormat, TextFormat
from service.tool_calls import FunctionDefinition, FunctionName


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[dict] | None = None  # on output_text written back by a client: not read
    logprobs: list[dict] | None = None  # likewise


class InputImage(_Strict):
    type: Literal["input_image"]
    image_url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] = "auto"


InputContent = Annotated[InputText | InputImage, Field(discriminator="type")]


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputContent]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = FunctionName
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str
    id: str | None = None
    status: str | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem


class JsonSchemaTextFormat(_Strict):
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: StrictBool | None = None


class TextConfig(_Strict):
    format: Annotated[TextFormat | JsonObjectFormat | JsonSchemaTextFormat, Field(discriminator="type")] | None = None


class FunctionTool(FunctionDefinition):
    """A Responses tool: the chat function definition, flat, with its type beside it."""

    type: Literal["function"]


class NamedFunction(_Strict):
    type: Literal["function"]
    name: str = FunctionName


class ResponsesRequest(RequestBody):
    """The body of POST /v1/responses (fields beyond these are refused by name)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)  # plugins' options arrive as extra fields

    model: str
    input: Annotated[str, Field(min_length=1)] | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: StrictBool = False
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: StrictBool = True
    truncation: Literal["disabled"] | None = None  # "auto" would drop input silently: refused
    store: StrictBool | None = None
    previous_response_id: str | None = None
    background: StrictBool | None = None
    # Metadata only: accepted and ignored.
    user: str | None = None
    metadata: dict[str, str] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: Literal["auto", "default"] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=86400)] | None = Field(None, description="leanserve: deadline (s)")

    def refuse_state(self) -> None:
        """What needs a server that stores responses: a 400 naming it."""
        for field, value in (("store", self.store), ("background", self.background)):
            if value:
                raise bad_request(f"{field}: true is not supported: this server keeps no responses", param=field,
                                  code="unsupported_value")
        if self.previous_response_id is not None:
            raise bad_request("previous_response_id is not supported: this server keeps no responses; send the "
                              "conversation in input", param="previous_response_id", code="unsupported_value")


def _content(content: str | list[InputText | InputImage]) -> str | list[dict]:
    if isinstance(content, str):
        return content
    return [{"type": "text", "text": part.text} if isinstance(part, InputText)
            else {"type": "image_url", "image_url": {"url": part.image_url, "detail": part.detail}}
            for part in content]


def chat_messages(body: ResponsesRequest) -> list[dict]:
    """``instructions`` and ``input`` as chat messages: consecutive function calls become one assistant
    message's ``tool_calls``, each function output a ``tool`` message."""
    messages: list[dict] = [{"role": "system", "content": body.instructions}] if body.instructions else []
    items = [MessageItem(role="user", content=body.input)] if isinstance(body.input, str) else body.input
    for item in items:
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": _content(item.content)})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            previous = messages[-1] if messages else None
            if previous is not None and previous["role"] == "assistant" and "tool_calls" in previous:
                previous["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return messages


def chat_body(body: ResponsesRequest) -> dict[str, Any]:
    """The chat-completions body that asks for the same answer (validated as one by the caller)."""
    chat: dict[str, Any] = {"model": body.model, "messages": chat_messages(body), "stream": False}
    for field in ("temperature", "top_p", "user", "metadata", "safety_identifier", "prompt_cache_key",
                  "service_tier", "timeout_s"):
        if getattr(body, field) is not None:
            chat[field] = getattr(body, field)
    if body.max_output_tokens is not None:
        chat["max_completion_tokens"] = body.max_output_tokens
    text_format = body.text.format if body.text is not None else None
    if isinstance(text_format, JsonSchemaTextFormat):
        chat["response_format"] = {"type": "json_schema", "json_schema": {
            "name": text_format.name, "schema": text_format.schema_, "strict": text_format.strict}}
    elif text_format is not None:
        chat["response_format"] = {"type": text_format.type}
    if body.tools:
        chat["tools"] = [{"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
                         for tool in body.tools]
        chat["parallel_tool_calls"] = body.parallel_tool_calls
    if isinstance(body.tool_choice, NamedFunction):
        chat["tool_choice"] = {"type": "function", "function": {"name": body.tool_choice.name}}
    elif body.tool_choice is not None:
        chat["tool_choice"] = body.tool_choice
    chat.update(body.model_extra or {})  # plugins' options
    return chat


# Chat fields named in errors -> the Responses fields they came from.
_PARAMS = {"response_format.json_schema.schema": "text.format.schema", "response_format": "text.format",
           "max_completion_tokens": "max_output_tokens", "messages": "input"}


def responses_param(param: str | None) -> str | None:
    """A chat field named in an error, as the Responses request calls it."""
    if param is None:
        return None
    for chat, responses in _PARAMS.items():
        if param == chat or param.startswith((chat + ".", chat + "[")):
            return responses + param[len(chat):]
    return param
