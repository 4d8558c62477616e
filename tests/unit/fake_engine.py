"""A scripted ``Engine`` for testing the gateway's HTTP mechanics without a model.

It "tokenizes" into one token per character and generates the letters of
``REPLY`` one per step; a message whose content is ``BAD_TEMPLATE`` fails to
render, as a chat template error would. Only tests about mechanics use it
(limits, deadlines, rate limiting, drain); what the model answers is tested
against the real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engine.protocol import EngineDeadError, GenerationDelta, GenerationRequest, InvalidRequestError, ModelInfo, Prompt
from engine.tools import ToolCalling, ToolChoice, forced_tool_calling

REPLY = "abcdefghijklmnopqrstuvwxyz"
BAD_TEMPLATE = "{% bad"


class FakeEngine:
    def __init__(self, step_s: float = 0.0, max_model_len: int = 4096, die_at_step: int | None = None) -> None:
        self.step_s = step_s
        self.die_at_step = die_at_step
        self._info = ModelInfo(name="fake", max_model_len=max_model_len)
        self.aborted: list[str] = []
        self.dead = False

    def info(self) -> ModelInfo:
        return self._info

    async def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    async def detokenize(self, token_ids: list[int]) -> str:
        if any(token_id >= 0x110000 for token_id in token_ids):  # the "vocabulary": every code point
            raise InvalidRequestError("token ids must be below the vocabulary size", param="tokens")
        return "".join(chr(token_id) for token_id in token_ids)

    async def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                          tools: list[dict] | None = None) -> Prompt:
        if any(m["content"] == BAD_TEMPLATE for m in messages):
            raise InvalidRequestError("the chat template failed to render: unexpected end of template",
                                      param="messages", code="chat_template_error")
        return Prompt(await self.tokenize("".join(f"<{m['role']}>{m['content']}" for m in messages)))

    def tool_calling(self, tools: list[dict], choice: ToolChoice, parallel: bool) -> ToolCalling:
        if choice.mode == "auto":
            raise InvalidRequestError("no tool-call format", param="tool_choice", code="unsupported_value")
        return forced_tool_calling(tools, choice, parallel)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        count = request.sampling.max_tokens
        try:
            for step in range(count):
                await asyncio.sleep(self.step_s)
                if step == self.die_at_step:
                    self.dead = True
                if self.dead:
                    raise EngineDeadError("fake engine died")
                last = step == count - 1
                for index in range(request.sampling.n):
                    yield GenerationDelta(index=index, text=REPLY[step % len(REPLY)], token_ids=[step],
                                          finish_reason="length" if last else None)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request.request_id)
            raise

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("fake engine died")

    async def shutdown(self) -> None:
        pass
