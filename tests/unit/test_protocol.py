"""OpenAI request models -> engine sampling options, without a model."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from engine.protocol import TokenLogprob
from service.errors import APIError
from service.generation import resolve_max_tokens
from service.limits import RequestLimits, check_request_limits
from service.protocol import ChatCompletionRequest, CompletionRequest
from service.serving_chat import chat_logprobs
from service.serving_completion import completion_logprobs
from service.settings import Settings

DEFAULT_LIMITS = RequestLimits.from_settings(Settings())


def limits_with(**bounds) -> RequestLimits:
    return dataclasses.replace(DEFAULT_LIMITS, **bounds)


def test_chat_defaults_follow_openai():
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    assert request.requested_max_tokens() is None
    assert request.requested_logprobs() is None
    options = request.sampling_options(max_tokens=5)
    assert (options.temperature, options.top_p, options.n, options.stop) == (1.0, 1.0, 1, ())
    assert (options.max_tokens, options.logprobs, options.seed, options.ignore_eos) == (5, None, None, False)


def test_max_completion_tokens_wins_over_deprecated_max_tokens():
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                    max_tokens=10, max_completion_tokens=3)
    assert request.requested_max_tokens() == 3


def test_chat_logprobs_field_mapping():
    assert ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], logprobs=True).requested_logprobs() == 0
    assert ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], logprobs=True,
                                 top_logprobs=4).requested_logprobs() == 4


def test_content_parts_are_joined():
    request = ChatCompletionRequest(model="m", messages=[
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert request.messages[0].text() == "ab"


@pytest.mark.parametrize("prompt,expected", [
    ("hi", ["hi"]),
    (["a", "b"], ["a", "b"]),
    ([1, 2, 3], [[1, 2, 3]]),
    ([[1], [2, 3]], [[1], [2, 3]]),
])
def test_completion_prompt_shapes(prompt, expected):
    assert CompletionRequest(model="m", prompt=prompt).prompts() == expected


@pytest.mark.parametrize("field,value", [
    ("temperature", 2.01), ("top_p", 0.0), ("n", 0), ("stop", [""]), ("presence_penalty", 2.5),
    ("logprobs", -1), ("max_tokens", 0), ("prompt", []), ("timeout_s", 0),
])
def test_completion_rejects_out_of_range(field, value):
    with pytest.raises(ValidationError) as raised:
        CompletionRequest(**{"model": "m", "prompt": "x", field: value})
    assert raised.value.errors()[0]["loc"][0] == field


def test_resolve_max_tokens():
    assert resolve_max_tokens(None, 10, 100, "max_tokens", DEFAULT_LIMITS) == 90
    assert resolve_max_tokens(90, 10, 100, "max_tokens", DEFAULT_LIMITS) == 90
    with pytest.raises(APIError) as too_long:
        resolve_max_tokens(91, 10, 100, "max_tokens", DEFAULT_LIMITS)
    assert (too_long.value.status_code, too_long.value.param, too_long.value.code) == (
        400, "max_tokens", "context_length_exceeded")
    with pytest.raises(APIError):
        resolve_max_tokens(None, 100, 100, "max_completion_tokens", DEFAULT_LIMITS)


def test_logprob_formats():
    he, i, llo = TokenLogprob(10, "He", -0.5), TokenLogprob(11, "I", -1.0), TokenLogprob(12, "llo", -0.1)
    entries = [TokenLogprob(10, "He", -0.5, (he, i)), TokenLogprob(12, "llo", -0.1, (llo,))]
    legacy = completion_logprobs(entries, 3)
    assert legacy == {"tokens": ["He", "llo"], "token_logprobs": [-0.5, -0.1],
                      "top_logprobs": [{"He": -0.5, "I": -1.0}, {"llo": -0.1}], "text_offset": [3, 5]}
    chat = chat_logprobs(entries)["content"]
    assert chat[0]["bytes"] == [72, 101] and chat[0]["top_logprobs"][1] == {"token": "I", "logprob": -1.0, "bytes": [73]}


@pytest.mark.parametrize("field,value,param", [
    ("n", 3, "n"), ("stop", ["a", "b", "c"], "stop"), ("logprobs", 3, "logprobs"),
    ("prompt", ["a", "b", "c"], "prompt"), ("max_tokens", 101, "max_tokens"),
])
def test_operator_limits_name_the_field(field, value, param):
    limits = limits_with(max_n=2, max_prompts=2, max_stop_sequences=2, max_logprobs=2, max_tokens_limit=100)
    check_request_limits(CompletionRequest(model="m", prompt="x", n=2, max_tokens=100), limits)
    with pytest.raises(APIError) as raised:
        check_request_limits(CompletionRequest(**{"model": "m", "prompt": "x", field: value}), limits)
    assert (raised.value.status_code, raised.value.param) == (400, param)


def test_chat_limits_and_prompt_token_bound():
    limits = limits_with(max_logprobs=2, max_tokens_limit=10, max_prompt_tokens=50)
    with pytest.raises(APIError) as raised:
        check_request_limits(ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}],
                                                   logprobs=True, top_logprobs=3), limits)
    assert raised.value.param == "top_logprobs"
    assert resolve_max_tokens(None, 10, 1000, "max_completion_tokens", limits) == 10
    with pytest.raises(APIError) as too_long:
        resolve_max_tokens(5, 51, 1000, "max_completion_tokens", limits)
    assert too_long.value.param == "messages"
