"""Structured outputs, tool calls, logit_bias, echo, the Responses API: what the official ``openai``
client gets from the real default model (SmolLM2-135M-Instruct, whose template has no tools, so its
tool calls are the forced kind any model can make)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

from tests.integration.conftest import MAX_RUNNING

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string", "maxLength": 40},
        "likes_cats": {"type": "boolean"},
    },
    "required": ["name", "age", "city", "likes_cats"],
    "additionalProperties": False,
}

PROMPTS = [
    "Describe a fictional person as JSON.", "Invent a pirate captain.", "Who lives next door to Sherlock Holmes?",
    "Make up a chef from Lyon.", "A retired astronaut.", "Describe my grandmother.", "A teenage chess champion.",
    "Give me a person who hates cats.", "A farmer in Kenya.", "Invent a jazz musician from New Orleans.",
    "A software engineer in Tokyo.", "An old lighthouse keeper.", "Describe Ada Lovelace.",
    "A child who loves dinosaurs.", "Someone born in 1950.", "A baker from Vienna who is 33.",
    "A fictional detective.", "An Olympic swimmer.", "A librarian in Cairo.", "Describe a poet, please.",
    "Quelle personne habite à Paris ?",
]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Oslo today?"}]


def test_json_schema_answers_always_validate(client, server):
    def answer(prompt: str) -> str:
        response = client.chat.completions.create(
            # room for any valid document: two 40-character strings of up to 3 byte tokens a character, plus keys
            model=server.model, messages=[{"role": "user", "content": prompt}], max_tokens=400, temperature=0.7,
            seed=len(prompt),
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                                    "strict": True}})
        return response.choices[0].message.content

    # Four at a time, as the server runs them (MAX_RUNNING): each is constrained on its own in the batch.
    with ThreadPoolExecutor(max_workers=MAX_RUNNING) as pool:
        for content in pool.map(answer, PROMPTS):
            jsonschema.validate(json.loads(content), PERSON)


def test_json_schema_streamed_equals_plain(client, server):
    kwargs = dict(model=server.model, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=150,
                  temperature=0, response_format={"type": "json_schema",
                                                  "json_schema": {"name": "person", "schema": PERSON}})
    plain = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                       client.chat.completions.create(**kwargs, stream=True) if chunk.choices)
    assert streamed == plain
    jsonschema.validate(json.loads(streamed), PERSON)


def test_json_object_and_vllm_forms(client, server):
    answer = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Give your name and age as a JSON object."}],
        max_tokens=200, temperature=0, response_format={"type": "json_object"}).choices[0]
    assert answer.finish_reason == "stop", answer  # a JSON object cut by max_tokens would not parse
    assert isinstance(json.loads(answer.message.content), dict)
    choice = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Is the sky blue?"}], max_tokens=5, temperature=0,
        extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}}).choices[0].message.content
    assert choice in ("yes", "no", "maybe")
    date = client.completions.create(model=server.model, prompt="The date today is", max_tokens=12, temperature=0,
                                     extra_body={"guided_regex": r"\d{4}-\d{2}-\d{2}"}).choices[0].text
    assert len(date) == 10 and date[4] == "-" and date[:4].isdigit()


# One call each: with parallel_tool_calls a 135M model repeats the call until max_tokens (the calls it completed
# still come back, with finish_reason "length").
@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_call_arguments_validate(client, server, tool_choice):
    response = client.chat.completions.create(
        model=server.model, messages=WEATHER_QUESTION, tools=[WEATHER], tool_choice=tool_choice, temperature=0,
        max_tokens=60, parallel_tool_calls=False)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_streamed_tool_call_reassembles_to_the_same_call(client, server, tool_choice):
    kwargs = dict(model=server.model, messages=WEATHER_QUESTION, tools=[WEATHER], tool_choice=tool_choice,
                  temperature=0, max_tokens=60, parallel_tool_calls=False)
    plain = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    name, arguments, ids, finishes = None, "", set(), []
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                assert delta.index == 0
                name = delta.function.name or name
                arguments += delta.function.arguments or ""
                ids |= {delta.id} - {None}
            finishes += [choice.finish_reason] if choice.finish_reason else []
    assert (name, arguments) == (plain.function.name, plain.function.arguments)
    assert len(ids) == 1 and finishes == ["tool_calls"]


def test_parallel_required_calls_all_validate(client, server):
    response = client.chat.completions.create(model=server.model, messages=WEATHER_QUESTION, tools=[WEATHER],
                                              tool_choice="required", temperature=0, max_tokens=80)
    calls = response.choices[0].message.tool_calls
    assert calls and len({call.id for call in calls}) == len(calls)
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_tool_result_in_history_is_answered(client, server):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}}
    history = [*WEATHER_QUESTION, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "12 degrees and raining"}]
    response = client.chat.completions.create(model=server.model, messages=history, tools=[WEATHER],
                                              tool_choice="none", temperature=0, max_tokens=30)
    assert response.choices[0].finish_reason in ("stop", "length") and response.choices[0].message.content


def test_logit_bias_forces_a_token(client, server, tokenizer):
    [token] = tokenizer.encode(" banana", add_special_tokens=False)[:1]
    response = client.completions.create(model=server.model, prompt="My favourite animal is the", max_tokens=4,
                                         temperature=0, logit_bias={str(token): 100}, logprobs=0)
    assert response.choices[0].text == tokenizer.decode([token]) * 4
    neutral = client.completions.create(model=server.model, prompt="My favourite animal is the", max_tokens=4,
                                        temperature=0)
    assert neutral.choices[0].text != response.choices[0].text


def test_vllm_sampling_extensions(client, server):
    kwargs = dict(model=server.model, prompt="Once upon a time", max_tokens=12, seed=3, temperature=1.0)
    greedy = client.completions.create(**{**kwargs, "temperature": 0}).choices[0].text
    assert client.completions.create(**kwargs, extra_body={"top_k": 1}).choices[0].text == greedy
    short = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Say hi."}],
                                           temperature=0, max_tokens=40, extra_body={"min_tokens": 30})
    assert short.usage.completion_tokens >= 30


def test_echo_with_logprobs(client, server):
    response = client.completions.create(model=server.model, prompt="The capital of France is", max_tokens=3,
                                         temperature=0, echo=True, logprobs=1)
    plain = client.completions.create(model=server.model, prompt="The capital of France is", max_tokens=3,
                                      temperature=0)
    choice = response.choices[0]
    assert choice.text == "The capital of France is" + plain.choices[0].text
    logprobs = choice.logprobs
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.token_logprobs[0] is None and all(lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert len(logprobs.tokens) == response.usage.prompt_tokens + response.usage.completion_tokens


def test_models_retrieve(client, server):
    assert client.models.retrieve(server.model).id == server.model


def test_responses_create_and_stream(client, server):
    kwargs = dict(model=server.model, input="What is the capital of France?", max_output_tokens=30, temperature=0)
    created = client.responses.create(**kwargs)
    assert created.status in ("completed", "incomplete") and "Paris" in created.output_text
    with client.responses.stream(**kwargs) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == created.output_text
    assert final.usage.output_tokens == created.usage.output_tokens


def test_responses_structured_and_tool_call(client, server):
    answer = client.responses.create(
        model=server.model, input="Describe a fictional person.", max_output_tokens=150, temperature=0,
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}})
    jsonschema.validate(json.loads(answer.output_text), PERSON)
    tool = {"type": "function", **WEATHER["function"]}
    called = client.responses.create(model=server.model, input="Weather in Oslo?", tools=[tool],
                                     tool_choice="required", parallel_tool_calls=False, temperature=0,
                                     max_output_tokens=60)
    [call] = [item for item in called.output if item.type == "function_call"]
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])
    follow_up = client.responses.create(
        model=server.model, temperature=0, max_output_tokens=20,
        input=[{"role": "user", "content": "Weather in Oslo?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 20 degrees"}])
    assert follow_up.output_text
