"""The seam between the HTTP gateway and whatever generates tokens.

The gateway (``service``) only ever sees these types. Keeping them free of vLLM
imports lets ``service`` be tested without a model, and lets composite engines
(entropy-adaptive switching between two models) pose as one engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class EngineError(Exception):
    """Base class of errors raised by an engine."""


class InvalidRequestError(EngineError):
    """The request cannot be served as asked (the client's fault: HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class EngineDeadError(EngineError):
    """The engine can no longer serve anything (HTTP 503; the process should restart)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the gateway needs to know about the model it fronts."""

    name: str
    max_model_len: int
    modalities: tuple[str, ...] = ("text",)
    plugins: tuple[str, ...] = ()


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling parameters in OpenAI's terms, validated by the gateway."""

    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: no logprobs; k >= 0: sampled token plus top-k
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, already tokenized, and how to continue it."""

    request_id: str
    prompt_token_ids: Sequence[int]
    sampling: SamplingOptions


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of one generated token and its strongest alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class GenerationDelta:
    """New output of one choice since the previous delta.

    ``finish_reason`` is set on the last delta of a choice: "stop" (EOS or a stop
    string), "length" (max_tokens or context), or "abort".
    """

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    logprobs: list[TokenLogprob] | None = None
    queue_time_s: float | None = field(default=None)


@dataclass(frozen=True)
class SpeculationStats:
    """What speculative decoding did in one engine step (summed over the batch).

    ``drafts`` counts (request, step) pairs that carried draft tokens; each accepted
    token is one target forward pass saved for that request.
    """

    drafts: int
    draft_tokens: int
    accepted_tokens: int
    accepted_per_position: tuple[int, ...]


@runtime_checkable
class Engine(Protocol):
    """Anything that turns prompts into tokens; the gateway's only view of a model."""

    def info(self) -> ModelInfo: ...

    async def tokenize(self, text: str) -> list[int]: ...

    async def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]: ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None: ...

    async def shutdown(self) -> None: ...
