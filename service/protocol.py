"""OpenAI request models, ordered like OpenAI's API reference.

Ranges fixed by the API are checked here; bounds an operator sets (n, stop
sequences, logprobs, prompt count) are checked against ``RequestLimits`` in
``service/limits.py``. Either way an out-of-range value is a 400 naming its
``param`` before anything reaches the engine. Unknown fields are
ignored, as vLLM does, so that clients sending newer OpenAI fields still work;
the two request bodies keep them (``model_extra``) because plugins' per-request
options arrive that way (``service/plugin_options.py``).

``sampling_options`` is the one conversion from a request body to the engine's
``SamplingOptions`` (as vLLM's ``to_sampling_params``).
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator

from engine.protocol import SamplingOptions
from service.content_parts import ContentPart, ImageContentPart, TextContentPart, VideoContentPart

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**63)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Timeout = Annotated[float, Field(gt=0, le=86400)]
StopText = Annotated[str, Field(min_length=1)]


@functools.cache
def _numeric_only(annotation: object) -> bool:
    """True for int/float fields (optionally None), not for fields that also take text."""
    args = set(get_args(annotation)) or {annotation}
    for arg in list(args):
        args |= set(get_args(arg))
    return bool(args & {int, float}) and str not in args and not any(get_args(a) for a in args if a is list)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _json_numbers(cls, value: object, info: ValidationInfo) -> object:
        """JSON numbers only: pydantic's lax mode would also take true and "3" (3.0 stays an integer)."""
        if isinstance(value, (bool, str)) and _numeric_only(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number")
        return value


class StreamOptions(_Request):
    include_usage: StrictBool = False


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The text of the message (image and video parts left out)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextContentPart))

    def media_parts(self) -> list[tuple[int, ImageContentPart | VideoContentPart]]:
        """(index in content, part) of every image and video part."""
        if not isinstance(self.content, list):
            return []
        return [(i, part) for i, part in enumerate(self.content) if not isinstance(part, TextContentPart)]


class _SamplingFields(_Request):
    """Fields shared by chat and completions."""

    model: str
    n: PositiveInt = 1
    stop: StopText | list[StopText] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: StrictBool = Field(False, description="vLLM extension: keep generating past end-of-sequence")

    timeout_s: Timeout | None = Field(None, description="leanserve extension: this request's deadline (s)")

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def requested_logprobs(self) -> int | None:
        """vLLM's count of alternatives per token, or None when logprobs are off."""
        raise NotImplementedError

    def sampling_options(self, max_tokens: int) -> SamplingOptions:
        """OpenAI defaults (temperature 1, top_p 1) applied where the client sent nothing."""
        return SamplingOptions(
            max_tokens=max_tokens,
            n=self.n,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=self.stop_sequences(),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=self.requested_logprobs(),
            ignore_eos=self.ignore_eos,
        )


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions"""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None
    max_tokens: PositiveInt | None = Field(None, description="deprecated alias of max_completion_tokens")
    logprobs: StrictBool = False
    top_logprobs: NonNegativeInt | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def requested_logprobs(self) -> int | None:
        if not self.logprobs:
            return None
        return self.top_logprobs or 0


TokenId = Annotated[int, Field(strict=True, ge=0, lt=2**31)]
PromptTokens = Annotated[list[TokenId], Field(min_length=1)]
PromptText = Annotated[str, Field(min_length=1)]


class CompletionRequest(_SamplingFields):
    """POST /v1/completions"""

    model_config = ConfigDict(extra="allow")

    prompt: PromptText | list[PromptText] | PromptTokens | list[PromptTokens]
    max_tokens: PositiveInt | None = Field(None, description="default 16, capped by the server's limit")
    logprobs: NonNegativeInt | None = None
    echo: StrictBool = False
    suffix: str | None = None
    best_of: PositiveInt | None = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: object) -> object:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        return value

    def requested_logprobs(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        """The prompt field as a list of prompts (each text or token ids)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and isinstance(prompt[0], int):
            return [prompt]  # type: ignore[list-item]
        return list(prompt)  # type: ignore[arg-type]


# Responses. The gateway builds them as plain dicts on the hot path; these models
# document them in the OpenAPI spec (which clients and schemathesis check against).


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    """Token counts; each active plugin may add an object of figures under its own name."""

    model_config = ConfigDict(extra="allow")

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Status(BaseModel):
    status: str
    reason: str | None = None
