"""POST /tokenize and /detokenize, with the request and response shapes of vLLM's server.

``/tokenize`` takes a completions-style ``prompt`` or chat ``messages`` (rendered through the
model's chat template, tools included, exactly as /v1/chat/completions would): a client can
count a prompt's tokens before sending it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool

from engine.protocol import Engine
from service.errors import bad_request
from service.protocol import ChatMessage, RequestBody, TokenId
from service.serving_chat import template_messages
from service.tool_calls import ToolDefinition


class TokenizeRequest(RequestBody):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_generation_prompt: StrictBool = True
    add_special_tokens: StrictBool = False
    tools: list[ToolDefinition] | None = None


class DetokenizeRequest(RequestBody):
    model: str | None = None
    tokens: Annotated[list[TokenId], Field(max_length=1_000_000)]


async def tokenize(body: TokenizeRequest, engine: Engine, max_model_len: int) -> dict:
    """``{"count", "max_model_len", "tokens"}``; exactly one of ``prompt`` and ``messages``."""
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("send exactly one of prompt and messages", param="prompt", code="invalid_value")
    if body.add_special_tokens:
        raise bad_request("add_special_tokens is not supported: the served models add none to a prompt",
                          param="add_special_tokens", code="unsupported_value")
    if body.prompt is not None:
        tokens = await engine.tokenize(body.prompt)
    else:
        messages = template_messages(body.messages)
        tools = [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None
        tokens = list((await engine.render_chat(messages, body.add_generation_prompt, tools)).token_ids)
    return {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens}


async def detokenize(body: DetokenizeRequest, engine: Engine) -> dict:
    return {"prompt": await engine.detokenize(list(body.tokens))}
