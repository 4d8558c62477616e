"""OpenAI request models, ordered like OpenAI's API reference.

Ranges fixed by the API are checked here; bounds an operator sets (n, stop
sequences, logprobs, prompt count) are checked against ``RequestLimits`` in
``service/limits.py``. Either way an out-of-range value is a 400 naming its
``param`` before anything reaches the engine. Nothing is accepted and then ignored:
an unknown field inside a message or a part is a 400, and the request bodies keep
theirs (``model_extra``) only because plugins' per-request options arrive that way;
``service/plugin_options.py`` refuses the rest. Fields that are only metadata
(``user``, ``metadata``, ``store: false``...) are accepted and documented as ignored.

``sampling_options`` is the one conversion from a request body to the engine's
``SamplingOptions`` (as vLLM's ``to_sampling_params``).
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator, model_validator

from engine.protocol import SamplingOptions
from service.content_parts import ContentPart, ImageContentPart, TextContentPart, VideoContentPart
from service.errors import bad_request
from service.structured import GuidedFields, ResponseFormat, structured_output
from service.tool_calls import MessageToolCall, ToolFields

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**63)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Timeout = Annotated[float, Field(gt=0, le=86400)]
StopText = Annotated[str, Field(min_length=1)]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]


@functools.cache
def _numeric_only(annotation: object) -> bool:
    """True for int/float fields (optionally None), not for fields that also take text."""
    args = set(get_args(annotation)) or {annotation}
    for arg in list(args):
        args |= set(get_args(arg))
    return bool(args & {int, float}) and str not in args and not any(get_args(a) for a in args if a is list)


def _first_unencodable(value: object, path: str) -> str | None:
    """The path of the first string holding a lone UTF-16 surrogate (JSON allows "\\ud800"; UTF-8 does not)."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where
        elif isinstance(item, dict):
            stack.extend((child, f"{where}.{key}" if where else str(key)) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _json_numbers(cls, value: object, info: ValidationInfo) -> object:
        """JSON numbers only: pydantic's lax mode would also take true and "3" (3.0 stays an integer)."""
        if isinstance(value, (bool, str)) and _numeric_only(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number")
        return value


class RequestBody(_Request):
    """A whole request body, its text checked to be encodable."""

    @model_validator(mode="before")
    @classmethod
    def _encodable_text(cls, value: object) -> object:
        """A lone surrogate would fail in the tokenizer or the response encoder (a 500): refuse it here."""
        where = _first_unencodable(value, "")
        if where is not None:
            raise bad_request(f"{where or 'body'}: text contains a lone UTF-16 surrogate, which is not valid "
                              "Unicode text", param=where or None, code="invalid_encoding")
        return value


class StreamOptions(_Request):
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None  # padding against length side channels: none sent, ignored


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    # What the openai package writes back when a client appends a response's message: accepted, not read.
    refusal: str | None = None
    annotations: list[dict] | None = None
    audio: None = None
    function_call: None = None

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


class _SamplingFields(RequestBody, GuidedFields):
    """Fields shared by chat and completions (and vLLM's extensions, through ``extra_body``).

    Extra fields are kept: plugins' options arrive that way (``service/plugin_options.py``)."""

    model_config = ConfigDict(extra="allow")

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
    logit_bias: dict[str, Bias] | None = Field(None, max_length=1024)
    ignore_eos: StrictBool = Field(False, description="vLLM extension: keep generating past end-of-sequence")
    top_k: Annotated[int, Field(ge=-1)] = Field(0, description="vLLM extension: 0 or -1 for every token")
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    min_tokens: NonNegativeInt = 0

    # Metadata only: accepted and ignored (README, "OpenAI API").
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: StrictBool | None = None  # only false: this server keeps nothing
    service_tier: Literal["auto", "default"] | None = None
    prompt_cache_key: str | None = None  # prefix caching is automatic here
    safety_identifier: str | None = None

    timeout_s: Timeout | None = Field(None, description="leanserve extension: this request's deadline (s)")

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def requested_logprobs(self) -> int | None:
        """vLLM's count of alternatives per token, or None when logprobs are off."""
        raise NotImplementedError

    def token_biases(self) -> dict[int, float] | None:
        """``logit_bias`` keyed by token id; a key that is not one is a 400 naming it."""
        if not self.logit_bias:
            return None
        biases = {}
        for key, bias in self.logit_bias.items():
            if not key.isascii() or not key.isdigit() or int(key) >= 2**31:
                raise bad_request(f"logit_bias keys must be token ids (decimal strings), got {key!r}",
                                  param=f"logit_bias.{key}", code="invalid_value")
            biases[int(key)] = bias
        return biases

    def sampling_options(self, max_tokens: int) -> SamplingOptions:
        """OpenAI defaults (temperature 1, top_p 1) applied where the client sent nothing."""
        if self.store:
            raise bad_request("store: true is not supported: this server keeps no responses", param="store",
                              code="unsupported_value")
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
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            min_tokens=self.min_tokens,
            logit_bias=self.token_biases(),
            structured=structured_output(self, getattr(self, "response_format", None)),
        )


class ChatCompletionRequest(_SamplingFields, ToolFields):
    """POST /v1/chat/completions"""

    messages: list[ChatMessage] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    modalities: list[Literal["text"]] | None = None
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
