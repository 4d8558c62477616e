"""The OpenAI surface on a scripted engine: nothing accepted then ignored, malformed input never a 500,
every error with a code, and the shapes of the new endpoints (models/{id}, tokenize, echo, responses).

What the model answers under guided decoding or tool calling is tested against the real one
(tests/integration/test_openai_surface.py).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.unit.fake_engine import REPLY, FakeEngine
from tests.unit.test_gateway_mechanics import running_app

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def post(path: str, body: dict | str, engine: FakeEngine | None = None):
    async def scenario():
        async with running_app(engine or FakeEngine()) as (_, client):
            if isinstance(body, str):
                return await client.post(path, content=body, headers={"content-type": "application/json"})
            return await client.post(path, json=body)

    return asyncio.run(scenario())


def get(path: str):
    async def scenario():
        async with running_app(FakeEngine()) as (_, client):
            return await client.get(path)

    return asyncio.run(scenario())


def error_of(response) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"], error  # every error names a code
    return error


@pytest.mark.parametrize(("extra", "param"), [
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"guided_json": {"type": "object"}, "response_format": {"type": "json_object"}}, "guided_json"),
])
def test_fields_the_server_cannot_honour_are_refused_by_name(extra, param):
    error = error_of(post("/v1/chat/completions", {**CHAT, **extra}))
    assert error["param"] == param


def test_unknown_field_inside_a_message_is_refused():
    body = {**CHAT, "messages": [{"role": "user", "content": "hi", "cache_control": {"type": "ephemeral"}}]}
    error = error_of(post("/v1/chat/completions", body))
    assert error["code"] == "unsupported_parameter" and error["param"] == "messages.0.cache_control"


def test_metadata_fields_are_accepted_and_store_true_is_refused():
    ok = post("/v1/chat/completions", {**CHAT, "user": "u1", "metadata": {"a": "b"}, "store": False,
                                       "service_tier": "auto", "prompt_cache_key": "k", "safety_identifier": "s"})
    assert ok.status_code == 200, ok.text
    assert error_of(post("/v1/chat/completions", {**CHAT, "store": True}))["param"] == "store"


def test_a_written_back_assistant_message_is_accepted():
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": "hello", "refusal": None, "annotations": [], "audio": None,
                "function_call": None, "tool_calls": None},
               {"role": "user", "content": "again"}]
    assert post("/v1/chat/completions", {**CHAT, "messages": history}).status_code == 200


def test_lone_surrogate_is_a_400_naming_the_field():
    body = '{"model": "fake", "max_tokens": 2, "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    error = error_of(post("/v1/chat/completions", body))
    assert error["code"] == "invalid_encoding" and error["param"] == "messages[0].content"
    completion = '{"model": "fake", "prompt": "\\udfff", "max_tokens": 2}'
    assert error_of(post("/v1/completions", completion))["param"] == "prompt"


@pytest.mark.parametrize("depth", [100, 5000])
def test_deep_nesting_is_a_400_not_a_500(depth):
    body = '{"model": "fake", "messages": [{"role": "user", "content": ' + "[" * depth + "]" * depth + "}]}"
    error_of(post("/v1/chat/completions", body))
    schema = {"type": "object"}
    for _ in range(40):
        schema = {"type": "object", "properties": {"a": schema}}
    response = post("/v1/chat/completions", {**CHAT, "response_format": {
        "type": "json_schema", "json_schema": {"name": "deep", "schema": schema}}})
    assert error_of(response)["param"] == "response_format.json_schema.schema"


def test_errors_without_a_natural_code_still_carry_one():
    for response in (get("/v1/nowhere"), post("/v1/chat/completions", "{not json")):
        assert response.json()["error"]["code"], response.text


@pytest.mark.parametrize(("bias", "param"), [({"abc": 1}, "logit_bias.abc"), ({"12": 101}, "logit_bias.12"),
                                             ({"-3": 1}, "logit_bias.-3")])
def test_logit_bias_keys_and_values_are_checked(bias, param):
    assert error_of(post("/v1/completions", {"model": "fake", "prompt": "x", "logit_bias": bias}))["param"] == param


@pytest.mark.parametrize(("response_format", "param"), [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}, "response_format.json_schema.name"),
    ({"type": "xml"}, "response_format"),
])
def test_invalid_response_format_names_the_field(response_format, param):
    error = error_of(post("/v1/chat/completions", {**CHAT, "response_format": response_format}))
    assert error["param"].startswith(param), error


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.parametrize(("extra", "param"), [
    ({"tool_choice": "required"}, "tool_choice"),  # no tools
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tools": [TOOL, TOOL]}, "tools[1].function.name"),
    ({"tools": [TOOL]}, "tool_choice"),  # auto, on a model without a tool-call format
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}],
      "tool_choice": "required"}, "tools[0].function.parameters"),
    ({"tools": [TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
])
def test_tool_requests_refused_with_the_field_named(extra, param):
    assert error_of(post("/v1/chat/completions", {**CHAT, **extra}))["param"] == param


def test_history_with_tool_calls_and_bad_arguments():
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}
    history = [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    assert post("/v1/chat/completions", {**CHAT, "messages": history, "tools": [TOOL],
                                         "tool_choice": "none"}).status_code == 200
    broken = {**call, "function": {"name": "get_weather", "arguments": "{city"}}
    history[1] = {"role": "assistant", "content": None, "tool_calls": [broken]}
    error = error_of(post("/v1/chat/completions", {**CHAT, "messages": history}))
    assert error["param"] == "messages[1].tool_calls[0].function.arguments"


def test_models_retrieve():
    assert get("/v1/models/fake").json()["id"] == "fake"
    missing = get("/v1/models/other")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_tokenize_and_detokenize():
    counted = post("/tokenize", {"model": "fake", "prompt": "abc"}).json()
    assert counted["tokens"] == [97, 98, 99] and counted["count"] == 3 and counted["max_model_len"] == 4096
    chat = post("/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] == len("<user>hi")
    assert post("/detokenize", {"tokens": [104, 105]}).json() == {"prompt": "hi"}
    assert error_of(post("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}))
    assert error_of(post("/detokenize", {"tokens": ["x"]}))["param"] == "tokens.0"


def test_echo_returns_the_prompt_before_the_completion():
    body = {"model": "fake", "prompt": "hello ", "max_tokens": 3, "echo": True}
    assert post("/v1/completions", body).json()["choices"][0]["text"] == "hello " + REPLY[:3]
    tokens = {**body, "prompt": [104, 105]}
    assert post("/v1/completions", tokens).json()["choices"][0]["text"] == "hi" + REPLY[:3]


def test_responses_non_streamed_and_streamed():
    body = {"model": "fake", "input": "hi", "max_output_tokens": 4, "instructions": "be brief"}
    response = post("/v1/responses", body).json()
    assert response["object"] == "response" and response["status"] == "incomplete"  # cut by max_output_tokens
    assert response["output"][0]["content"][0]["text"] == REPLY[:4]
    assert response["usage"]["output_tokens"] == 4
    streamed = post("/v1/responses", {**body, "stream": True})
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
    kinds = [event["type"] for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == REPLY[:4]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


@pytest.mark.parametrize(("extra", "param"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"), ({"store": True}, "store"),
    ({"reasoning": {"effort": "low"}}, "reasoning"), ({"truncation": "auto"}, "truncation"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 5}}}}, "text.format.schema"),
])
def test_responses_refusals_name_the_responses_field(extra, param):
    error = error_of(post("/v1/responses", {"model": "fake", "input": "hi", **extra}))
    assert error["param"] == param, error


def test_responses_output_items_can_be_sent_back_as_input():
    first = post("/v1/responses", {"model": "fake", "input": "hi", "max_output_tokens": 2}).json()
    again = post("/v1/responses", {"model": "fake", "max_output_tokens": 2,
                                   "input": [{"role": "user", "content": "hi"}, *first["output"],
                                             {"role": "user", "content": "more"}]})
    assert again.status_code == 200, again.text


def test_unknown_field_inside_a_content_part_is_refused():
    part = {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}
    error = error_of(post("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [part]}]}))
    assert error["code"] == "unsupported_parameter" and error["param"] == "messages.0.content.0.cache_control"
