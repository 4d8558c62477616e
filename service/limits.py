"""Operator-set bounds on what one request may ask (``Settings`` -> ``RequestLimits``).

Kept apart from the pydantic models because they are configuration, not
protocol: a deployment may allow n=64 or forbid logprobs without forking the API.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import bad_request
from service.images import ImageLimits
from service.protocol import ChatCompletionRequest, CompletionRequest
from service.settings import Settings
from service.videos import VideoLimits


@dataclass(frozen=True)
class RequestLimits:
    """No defaults of its own: ``Settings`` holds them, so a bound is changed in one place."""

    max_n: int
    max_prompts: int
    max_stop_sequences: int
    max_logprobs: int
    max_prompt_tokens: int | None
    max_tokens_limit: int | None
    images: ImageLimits
    videos: VideoLimits

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(
            max_n=settings.max_n, max_prompts=settings.max_prompts,
            max_stop_sequences=settings.max_stop_sequences, max_logprobs=settings.max_logprobs,
            max_prompt_tokens=settings.max_prompt_tokens, max_tokens_limit=settings.max_tokens_limit,
            images=ImageLimits.from_settings(settings), videos=VideoLimits.from_settings(settings),
        )


def _at_most(value: int, limit: int, param: str) -> None:
    if value > limit:
        raise bad_request(f"{param} must be at most {limit} on this server (got {value})", param=param,
                          code="invalid_value")


def check_request_limits(body: ChatCompletionRequest | CompletionRequest, limits: RequestLimits) -> None:
    """Raise a 400 naming the first field beyond its bound."""
    _at_most(body.n, limits.max_n, "n")
    _at_most(len(body.stop_sequences()), limits.max_stop_sequences, "stop")
    if isinstance(body, ChatCompletionRequest):
        if body.top_logprobs is not None:
            _at_most(body.top_logprobs, limits.max_logprobs, "top_logprobs")
        asked = {"max_completion_tokens": body.max_completion_tokens, "max_tokens": body.max_tokens}
    else:
        if body.logprobs is not None:
            _at_most(body.logprobs, limits.max_logprobs, "logprobs")
        _at_most(len(body.prompts()), limits.max_prompts, "prompt")
        asked = {"max_tokens": body.max_tokens}
    if limits.max_tokens_limit is not None:
        for param, value in asked.items():
            if value is not None:
                _at_most(value, limits.max_tokens_limit, param)


def check_prompt_tokens(count: int, limits: RequestLimits, param: str) -> None:
    if limits.max_prompt_tokens is not None and count > limits.max_prompt_tokens:
        raise bad_request(f"the prompt has {count} tokens; this server accepts at most {limits.max_prompt_tokens}",
                          param=param, code="context_length_exceeded")
