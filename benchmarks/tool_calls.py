"""Tool calling and structured outputs through the server, per model: how often the answer is usable.

    python -m benchmarks.tool_calls --model Qwen2.5-Coder-0.5B-Instruct

For each of a fixed set of user requests that call for one of four functions, and a few that call
for none, through the real HTTP API with the ``openai`` client (greedy):

- ``auto``: the model decides (only models with a call format of their own, Hermes-style here):
  did it call the right function, with arguments that validate against its schema; did it answer
  in text when no function fits;
- ``required``: guided decoding into the call schema: right function, arguments valid (always, by
  construction: the figure checks the server's promise);
- ``json_schema``: an answer in a schema, valid every time;
- the same requests with free text and "answer in JSON" in the prompt, as the baseline that
  structured outputs replace (how often a model's own JSON parses and validates).

Writes ``benchmarks/results/tool_calls/<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import openai

from benchmarks.local_server import free_port, start_server, stop_server

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "convert_currency", "description": "Convert an amount of money",
     "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "from_currency": {"type": "string"},
                    "to_currency": {"type": "string"}}, "required": ["amount", "from_currency", "to_currency"]}}},
    {"type": "function", "function": {"name": "send_email", "description": "Send an email",
     "parameters": {"type": "object", "properties": {"to": {"type": "string"}, "subject": {"type": "string"},
                    "body": {"type": "string"}}, "required": ["to", "subject", "body"]}}},
    {"type": "function", "function": {"name": "search_flights", "description": "Find flights between two cities",
     "parameters": {"type": "object", "properties": {"origin": {"type": "string"}, "destination": {"type": "string"},
                    "date": {"type": "string"}}, "required": ["origin", "destination"]}}},
]
CASES = [
    ("What's the weather in Paris right now?", "get_weather"),
    ("Is it cold in Helsinki today? Tell me in fahrenheit.", "get_weather"),
    ("Do I need an umbrella in London?", "get_weather"),
    ("How much is 250 US dollars in euros?", "convert_currency"),
    ("Convert 1000 yen to pounds.", "convert_currency"),
    ("What are 80 Swiss francs in Canadian dollars?", "convert_currency"),
    ("Email bob@example.com that the meeting moved to 3pm.", "send_email"),
    ("Send a thank-you note to anna@corp.io with subject 'Thanks'.", "send_email"),
    ("Write to hr@firm.com asking for my payslip.", "send_email"),
    ("Find me a flight from Berlin to Madrid on 2026-12-20.", "search_flights"),
    ("Any flights from Oslo to Rome next Friday?", "search_flights"),
    ("I want to fly from Boston to Chicago.", "search_flights"),
    ("What is 2 + 2?", None),
    ("Tell me a joke about penguins.", None),
    ("Who wrote Pride and Prejudice?", None),
]
RECORD = {"type": "object", "properties": {"topic": {"type": "string", "maxLength": 60},
          "needs_tool": {"type": "boolean"}, "priority": {"type": "integer", "minimum": 1, "maximum": 5}},
          "required": ["topic", "needs_tool", "priority"], "additionalProperties": False}


def _schema(name: str) -> dict:
    return next(tool["function"]["parameters"] for tool in TOOLS if tool["function"]["name"] == name)


def _valid_call(call, expected: str | None) -> bool:
    if expected is None or call.function.name != expected:
        return False
    try:
        jsonschema.validate(json.loads(call.function.arguments), _schema(expected))
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _valid_json(text: str | None) -> bool:
    try:
        jsonschema.validate(json.loads(text or ""), RECORD)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def run(client: openai.OpenAI, model: str, auto: bool) -> dict:
    results: dict[str, list[bool]] = {"auto_right_call": [], "auto_text_when_no_tool": [], "required_valid": [],
                                      "json_schema_valid": [], "prompted_json_valid": []}
    for prompt, expected in CASES:
        messages = [{"role": "user", "content": prompt}]
        if auto:
            answer = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0,
                                                    max_tokens=120).choices[0].message
            if expected is None:
                results["auto_text_when_no_tool"].append(not answer.tool_calls)
            else:
                results["auto_right_call"].append(bool(answer.tool_calls) and _valid_call(answer.tool_calls[0],
                                                                                          expected))
        if expected is not None:
            forced = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0,
                                                    tool_choice="required", max_tokens=120).choices[0].message
            results["required_valid"].append(bool(forced.tool_calls) and _valid_call(forced.tool_calls[0], expected))
        ask = [{"role": "user", "content": f"Classify this request: {prompt}\nAnswer with a JSON object with keys "
                                          "topic (string), needs_tool (boolean) and priority (integer 1-5)."}]
        guided = client.chat.completions.create(model=model, messages=ask, temperature=0, max_tokens=120,
                                                response_format={"type": "json_schema", "json_schema": {
                                                    "name": "record", "schema": RECORD, "strict": True}})
        results["json_schema_valid"].append(_valid_json(guided.choices[0].message.content))
        free = client.chat.completions.create(model=model, messages=ask, temperature=0, max_tokens=120)
        text = (free.choices[0].message.content or "").strip().removeprefix("```json").removesuffix("```")
        results["prompted_json_valid"].append(_valid_json(text))
    return {name: {"rate": sum(values) / len(values), "n": len(values)} for name, values in results.items() if values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen2.5-Coder-0.5B-Instruct")
    parser.add_argument("--no-auto", action="store_true", help="the model has no tool-call format of its own")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tool_calls"))
    args = parser.parse_args(argv)
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="leanserve-tools-bench-")) / "server.log"
    command = [sys.executable, "-m", "service.cli", "serve", "--model", args.model, "--port", str(port),
               "--max-model-len", "4096", "--kv-cache-gib", "2", "--enforce-eager"]  # quality, not speed
    process = start_server(command, log, f"http://127.0.0.1:{port}/ready", timeout_s=900)
    started = time.time()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        model = client.models.list().data[0].id
        rates = run(client, model, auto=not args.no_auto)
    finally:
        stop_server(process)
    result = {"model": model, "command": " ".join(["python -m benchmarks.tool_calls", *(argv or sys.argv[1:])]),
              "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
              "minutes": (time.time() - started) / 60, "rates": rates}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{model}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(rates, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
