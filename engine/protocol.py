"""The seam between the HTTP gateway and whatever generates tokens.

The gateway (``service``) only ever sees these types. Keeping them free of vLLM
imports lets ``service`` be tested without a model, and lets composite engines
(entropy-adaptive switching between two models) pose as one engine.

Plugins cross the seam without the gateway learning their names: a request carries
each plugin's validated options under the plugin's name (``GenerationRequest.options``),
an engine reports per-request accounting the same way (``GenerationDelta.usage``), and
engine-wide statistics flow as ``MetricUpdate``s of metrics the plugin declared with a
``MetricSpec``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from engine.tools import ToolCalling, ToolChoice


class EngineError(Exception):
    """Base class of errors raised by an engine."""


class InvalidRequestError(EngineError):
    """The request cannot be served as asked (the client's fault: HTTP 400)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class EngineDeadError(EngineError):
    """The engine can no longer serve anything (HTTP 503; the process should restart)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the gateway needs to know about the model it fronts.

    ``request_options`` maps a request field (a plugin's name) to the pydantic model its
    value must satisfy; the gateway validates it and passes the result through untouched.
    ``disabled_options`` are the fields of plugins this server runs without: a request that
    sends one is refused rather than silently served without it. ``modalities`` are the
    inputs besides text the model reads ("image", "video").
    """

    name: str
    max_model_len: int
    request_options: Mapping[str, type] = field(default_factory=dict)
    disabled_options: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()


StructuredKind = Literal["json", "json_object", "regex", "choice", "grammar"]


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on what may be generated (guided decoding), whatever field asked for it.

    ``spec`` is the JSON schema (``json``), the pattern (``regex``), the list of allowed answers
    (``choice``) or the grammar text (``grammar``); None for ``json_object`` (any JSON object).
    ``param`` is the request field it came from, named in the 400 when the engine cannot compile it.
    """

    kind: StructuredKind
    spec: Any = None
    param: str = "response_format"


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling parameters in OpenAI's terms (and vLLM's extensions), validated by the gateway."""

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
    top_k: int = 0  # 0: every token
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    logit_bias: Mapping[int, float] | None = None  # token id -> bias added to its logit
    structured: StructuredOutput | None = None
    prompt_logprobs: int | None = None  # None: none; k >= 0: each prompt token's logprob plus top-k
    skip_special_tokens: bool = True  # False where a tool-call format is made of special tokens


@dataclass(frozen=True)
class EncodedVideo:
    """A video as the client sent it (container bytes: MP4, WebM, ...), checked for size only.

    The engine decodes it, sampling at most ``max_frames`` frames evenly, each at most
    ``max_frame_pixels`` large: decoding and frame sampling belong to the model's side (vLLM's
    video loader), and a video it cannot read is an ``InvalidRequestError`` naming ``param``.
    """

    data: bytes
    max_frames: int
    max_frame_pixels: int
    param: str  # the request field it came from, e.g. "messages[0].content[1].video_url"


@dataclass(frozen=True)
class MultimodalItem:
    """One image or video of a prompt, in the order its placeholder appears in the tokens.

    ``data`` is what the engine's processor takes (a decoded image) or an ``EncodedVideo``; ``options``
    are per-item settings a plugin reads (e.g. a visual-token budget).
    """

    modality: Literal["image", "video"]
    data: Any
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Prompt:
    """What the model reads: token ids, plus the multimodal items their placeholders stand for."""

    token_ids: Sequence[int]
    multimodal: tuple[MultimodalItem, ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt and how to continue it.

    ``options`` holds per-request plugin options, keyed by plugin name, already validated.
    ``trace_headers`` (W3C ``traceparent``) joins the engine's own spans to the gateway's trace.
    """

    request_id: str
    prompt: Prompt
    sampling: SamplingOptions
    options: Mapping[str, Any] = field(default_factory=dict)
    trace_headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of one token; for a generated token, also its strongest alternatives."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TokenLogprob, ...] = ()


@dataclass
class GenerationDelta:
    """New output of one choice since the previous delta.

    ``finish_reason`` is set on the last delta of a choice: "stop" (EOS or a stop
    string), "length" (max_tokens or context), or "abort". ``usage`` is set once per
    engine request, on its last delta: plugin accounting keyed by plugin name, each a
    flat mapping of numbers (e.g. ``{"adaptive": {"large_model_tokens": 12}}``).
    """

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    queue_time_s: float | None = None
    cached_tokens: int | None = None  # first delta: prompt tokens served from the prefix cache
    prompt_logprobs: list[TokenLogprob | None] | None = None  # first delta, when asked: None for the first token
    expanded_prompt_tokens: int | None = None  # first delta: tokens the engine's processor added (image placeholders)
    usage: Mapping[str, Mapping[str, float]] | None = None


MetricKind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """A Prometheus series a plugin declares; ``service/metrics.py`` creates it.

    Every series also gets the label ``model``. Counters are named without ``_total``
    (prometheus_client appends it).
    """

    name: str
    kind: MetricKind
    documentation: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


@dataclass(frozen=True)
class MetricUpdate:
    """One change to a declared metric: a counter grows by ``value``, a gauge is set to it,
    a histogram observes it. ``labels`` are the values of ``MetricSpec.labels``, in order."""

    name: str
    value: float
    labels: tuple[str, ...] = ()


StatsSink = Callable[[Sequence[MetricUpdate]], None]


@runtime_checkable
class Engine(Protocol):
    """Anything that turns prompts into tokens; the gateway's only view of a model.

    A request is aborted by closing its ``generate`` stream (``aclose``), which is what
    happens when a client goes away or a deadline passes.
    """

    def info(self) -> ModelInfo: ...

    async def tokenize(self, text: str) -> list[int]: ...

    async def detokenize(self, token_ids: list[int]) -> str: ...

    async def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                          tools: list[dict] | None = None) -> Prompt:
        """The prompt of a conversation; ``tools`` are OpenAI function definitions the model may call."""
        ...

    def tool_calling(self, tools: list[dict], choice: ToolChoice, parallel: bool) -> ToolCalling:
        """How this model calls the tools (constraint and parsers); InvalidRequestError if it cannot."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]: ...

    async def check_health(self) -> None: ...

    async def shutdown(self) -> None: ...
