"""Speculative decoding is lossless: greedy answers are token-identical with and without it.

One extra real server per method (default model, float32) answers the same 20 prompts
(12 chat, 8 code completions) as the session server without speculation, one at a time
so both see the same batch. The method must also have actually speculated: its draft
and accepted-token counters on /metrics are non-zero.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import httpx
import pytest

from benchmarks.bench.chat_prompts import CHAT_PROMPTS
from benchmarks.local_server import free_port, start_server, stop_server

from .conftest import MAX_MODEL_LEN, Server, serve_command

CODE_PROMPTS = (
    'def is_palindrome(text: str) -> bool:\n    """Return True if text reads the same backwards."""\n',
    'def fizzbuzz(n: int) -> list[str]:\n    """FizzBuzz from 1 to n."""\n',
    "import json\n\n\ndef load_config(path):\n    \"\"\"Read a JSON config file and return a dict.\"\"\"\n",
    'def count_words(sentence: str) -> dict[str, int]:\n    """Count how often each word occurs."""\n',
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    'def celsius_to_fahrenheit(c: float) -> float:\n    """Convert degrees Celsius to Fahrenheit."""\n',
    "# Print the numbers from 1 to 10, then their squares\nfor i in range(1, 11):\n",
    'def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n    """Merge two sorted lists."""\n',
)
MAX_TOKENS = 40
# draft:default drafts with the target itself: no speed-up, but the draft-model path runs in CI
# without another download (Qwen2.5-Coder-0.5B drafting for the 1.5B is in benchmarks/).
METHODS = ("ngram", "suffix", "mtp", "draft:default")


def _answers(base_url: str, model: str, headers: dict[str, str]) -> list[list[str]]:
    """Greedy answers as token strings (logprobs carry the tokens), one request at a time."""
    answers = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=300) as http:
        for prompt in CHAT_PROMPTS[:12]:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                    "max_tokens": MAX_TOKENS, "logprobs": True}
            response = http.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            answers.append([entry["token"] for entry in response.json()["choices"][0]["logprobs"]["content"]])
        for prompt in CODE_PROMPTS:
            body = {"model": model, "prompt": prompt, "temperature": 0, "max_tokens": MAX_TOKENS, "logprobs": 0}
            response = http.post("/v1/completions", json=body)
            response.raise_for_status()
            answers.append(response.json()["choices"][0]["logprobs"]["tokens"])
    return answers


@pytest.fixture(scope="module")
def reference_answers(server: Server) -> list[list[str]]:
    return _answers(server.base_url, server.model, server.headers)


@pytest.fixture(scope="module", params=METHODS)
def speculative_server(request) -> tuple[str, str, Path]:
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="leanserve-spec-")) / "server.log"
    command = serve_command(port, "--speculative", request.param, "--max-model-len", str(MAX_MODEL_LEN),
                            "--kv-cache-gib", "1")
    base_url = f"http://127.0.0.1:{port}"
    process = start_server(command, log_path, f"{base_url}/ready", timeout_s=600)
    try:
        yield request.param, base_url, log_path
    finally:
        stop_server(process)


def _counter(metrics_text: str, name: str) -> float:
    match = re.search(rf"^{name}_total{{[^}}]*}} ([0-9.e+]+)$", metrics_text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_greedy_output_is_token_identical_with_speculation(
    server: Server, reference_answers: list[list[str]], speculative_server: tuple[str, str, Path],
) -> None:
    method, base_url, _ = speculative_server
    answers = _answers(base_url, server.model, {})
    assert len(answers) == len(reference_answers) == 20
    for index, (got, want) in enumerate(zip(answers, reference_answers, strict=True)):
        first_difference = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        assert got == want, f"{method}: prompt {index} differs from token {first_difference}"
    metrics = httpx.get(f"{base_url}/metrics", timeout=30).text
    assert _counter(metrics, "leanserve_spec_decode_draft_tokens") > 0, f"{method} never drafted"
    assert _counter(metrics, "leanserve_spec_decode_accepted_tokens") > 0, f"{method} never had a draft accepted"
    assert re.search(rf'leanserve_spec_decode_mean_accepted_length{{method="{method.split(":")[0]}"', metrics)
