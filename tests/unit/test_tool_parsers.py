"""Finding tool calls in text, delta by delta: the forced-call parsers and the Hermes format (vLLM's parser)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from engine.tools import NamedCallParser, RequiredCallsParser, ToolChoice, forced_call_schema
from engine.vllm_tool_calls import HermesCallParser, messages_for_template

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}},
]


def feed_in_pieces(parser, text: str, size: int):
    """Every delta the parser gives for ``text`` fed ``size`` characters at a time, then its finish."""
    results = [parser.feed(text[i:i + size]) for i in range(0, len(text), size)]
    return [*results, parser.finish()]


def assemble(results) -> tuple[str, list[dict]]:
    content, calls = "", []
    for result in results:
        content += result.content
        for delta in result.calls:
            if delta.id is not None:
                assert delta.index == len(calls)
                calls.append({"name": delta.name, "arguments": ""})
            calls[delta.index]["arguments"] += delta.arguments
    return content, calls


def test_forced_schemas_accept_calls_and_refuse_others():
    named = forced_call_schema(TOOLS, ToolChoice("function", "add"), parallel=True)
    jsonschema.validate({"a": 1, "b": 2}, named)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"a": "one"}, named)
    required = forced_call_schema(TOOLS, ToolChoice("required"), parallel=False)
    jsonschema.validate([{"name": "get_weather", "parameters": {"city": "Oslo"}}], required)
    for wrong in ([], [{"name": "nope", "parameters": {}}], [{"name": "add", "parameters": {}}] * 2):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, required)


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_named_call_streams_its_arguments(size):
    text = '{"a": 1, "b": 22}'
    content, calls = assemble(feed_in_pieces(NamedCallParser("add"), text, size))
    assert content == "" and calls == [{"name": "add", "arguments": text}]


def test_required_calls_parse_whole_and_a_cut_array_keeps_its_complete_calls():
    text = '[{"name": "get_weather", "parameters": {"city": "Oslo"}}, {"name": "add", "parameters": {"a": 1}}]'
    content, calls = assemble(feed_in_pieces(RequiredCallsParser(), text, 7))
    assert content == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", {"city": "Oslo"}),
                                                                        ("add", {"a": 1})]
    content, calls = assemble(feed_in_pieces(RequiredCallsParser(), text[:70], 7))
    assert content == "" and [c["name"] for c in calls] == ["get_weather"]
    content, calls = assemble(feed_in_pieces(RequiredCallsParser(), text[:30], 7))
    assert content == text[:30] and calls == []


class _Tokenizer:
    """What vLLM's Hermes parser reads from a tokenizer when it only extracts finished calls."""

    def get_vocab(self) -> dict[str, int]:
        return {"<tool_call>": 1, "</tool_call>": 2}


def hermes() -> HermesCallParser:
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    return HermesCallParser(Hermes2ProToolParser(_Tokenizer()), ["get_weather", "add"])


HERMES_TEXT = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
               '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_hermes_calls_found_whatever_the_delta_size(size):
    content, calls = assemble(feed_in_pieces(hermes(), HERMES_TEXT, size))
    assert content == "Let me check.\n"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", {"city": "Oslo"}),
                                                                        ("add", {"a": 1, "b": 2})]


def test_hermes_plain_answer_and_broken_call_stay_content():
    text = "The weather is <b>fine</b> < today."
    assert assemble(feed_in_pieces(hermes(), text, 2)) == (text, [])
    broken = "<tool_call>\n{not json}\n</tool_call>"
    assert assemble(feed_in_pieces(hermes(), broken, 4)) == (broken, [])


def test_hermes_unterminated_call_cut_by_length():
    whole = '<tool_call>\n{"name": "add", "arguments": {"a": 1}}'
    content, calls = assemble(feed_in_pieces(hermes(), whole, 3))
    assert content == "" and calls[0]["name"] == "add"
    cut = '<tool_call>\n{"name": "add", "argu'
    assert assemble(feed_in_pieces(hermes(), cut, 3)) == (cut, [])


def test_templates_without_tools_get_them_described():
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c", "type": "function", "function": {"name": "add", "arguments": {"a": 1}}}]},
               {"role": "tool", "tool_call_id": "c", "content": "1"}]
    messages, tools = messages_for_template("{{ messages }}", history, TOOLS)
    assert tools is None
    assert messages[0]["role"] == "system" and '"name": "get_weather"' in messages[0]["content"]
    assert json.loads(messages[2]["content"]) == [{"name": "add", "parameters": {"a": 1}}]
    assert all(set(m) == {"role", "content"} for m in messages)
    kept, tools = messages_for_template("{% for tool in tools %}{% endfor %}", history, TOOLS)
    assert kept is history and tools == TOOLS


@pytest.mark.parametrize("text", ['{"name": "add", "arguments": {"a": 1, "b": 2}}',
                                  '```json\n{\n  "name": "add",\n  "arguments": {"a": 1, "b": 2}\n}\n```'])
@pytest.mark.parametrize("size", [1, 4, 1000])
def test_hermes_bare_call_without_tags(text, size):
    """What Qwen2.5-Coder-0.5B answers with tools (measured): the call's JSON alone, bare or fenced."""
    content, calls = assemble(feed_in_pieces(hermes(), text, size))
    assert content == "" and [(c["name"], json.loads(c["arguments"])) for c in calls] == [("add", {"a": 1, "b": 2})]


@pytest.mark.parametrize("text", ['{"name": "unknown", "arguments": {}}', '{"a": 1}', "```python\nprint(1)\n```",
                                  '  {"name": "add", "arguments": {"a": 1}} and more'])
def test_hermes_json_that_is_not_a_declared_call_is_content(text):
    assert assemble(feed_in_pieces(hermes(), text, 3)) == (text, [])
