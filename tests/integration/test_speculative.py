"""Speculative decoding is lossless: greedy answers are token-identical with and without it.

One extra real server per method (default model, float32) answers the same 20 prompts
(12 chat, 8 code completions) as a float32 server without speculation, one at a time
so both see the same batch. float32 explicitly: on a CPU with native bf16, ``auto`` picks
bf16, whose logits are so coarse (steps of 1/16 nats) that exact ties are common and
either token of a tie is the target's greedy choice. The method must also have actually speculated: its draft
and accepted-token counters on /metrics are non-zero.

Verifying k drafts is one forward over k + 1 positions, whose float32 sums round
differently from k + 1 one-token steps; where the target's two best tokens are within
rounding of each other (a near-tie), either is the target's greedy choice. So answers
must agree token for token, except that they may part at a near-tie — the reference's
top two within ``TIE_NATS`` and the other answer taking the runner-up — after which the
texts differ legitimately. A verifier that accepts a wrong draft parts at a clear margin
and fails.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import httpx
import pytest

from benchmarks.bench.chat_prompts import CHAT_PROMPTS
from benchmarks.local_server import free_port, start_server, stop_server
from tests.prometheus import RATE_RATIO_SLACK, evaluate_panels

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
MAX_TOKENS = 32
ANSWERS = 10  # six chat prompts and four code prompts: each method's server answers them one at a time
TIE_NATS = 0.02  # float32 rounding moves a logit by ~1e-5..1e-3 here; real preferences are far wider
# draft:default drafts with the target itself: no speed-up, but the draft-model path runs in CI
# without another download (Qwen2.5-Coder-0.5B drafting for the 1.5B is in benchmarks/).
METHODS = ("ngram", "suffix", "mtp", "draft:default")


Answer = list[tuple[str, list[tuple[str, float]]]]  # per position: the token, and the top two with logprobs


def _answers(base_url: str, model: str, headers: dict[str, str]) -> list[Answer]:
    """Greedy answers with each position's top two (logprobs carry the tokens), one request at a time."""
    answers = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=300) as http:
        for prompt in CHAT_PROMPTS[:6]:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                    "max_tokens": MAX_TOKENS, "logprobs": True, "top_logprobs": 2}
            response = http.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            answers.append([
                (entry["token"], [(top["token"], top["logprob"]) for top in entry["top_logprobs"]])
                for entry in response.json()["choices"][0]["logprobs"]["content"]
            ])
        for prompt in CODE_PROMPTS[:4]:
            body = {"model": model, "prompt": prompt, "temperature": 0, "max_tokens": MAX_TOKENS, "logprobs": 2}
            response = http.post("/v1/completions", json=body)
            response.raise_for_status()
            logprobs = response.json()["choices"][0]["logprobs"]
            answers.append([(token, list(top.items())) for token, top in zip(logprobs["tokens"], logprobs["top_logprobs"],
                                                                               strict=True)])
    return answers


def _tokens(answer: Answer) -> list[str]:
    return [token for token, _ in answer]


def _parting(got: Answer, want: Answer) -> str | None:
    """None if ``got`` matches ``want``, or parts from it only at a near-tie; else what went wrong."""
    for position, ((token, _), (wanted, top)) in enumerate(zip(got, want)):
        if token == wanted:
            continue
        margin = top[0][1] - top[1][1] if len(top) > 1 else float("inf")
        if len(top) > 1 and token == top[1][0] and margin <= TIE_NATS:
            return None  # a near-tie: from here the continuations differ legitimately
        return f"token {position}: {token!r} instead of {wanted!r} (reference top two {top}, margin {margin:.4f})"
    if len(got) != len(want):
        return f"lengths differ: {len(got)} vs {len(want)}"
    return None


def _start(flags: tuple[str, ...], prefix: str) -> tuple[str, object]:
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix=prefix)) / "server.log"
    command = serve_command(port, "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-gib", "1",
                            *flags)
    base_url = f"http://127.0.0.1:{port}"
    return base_url, start_server(command, log_path, f"{base_url}/ready", timeout_s=600)


@pytest.fixture(scope="module")
def reference_answers(server: Server) -> list[Answer]:
    """Answers of a float32 server without speculation (stopped before the others start)."""
    base_url, process = _start((), "leanserve-spec-ref-")
    try:
        return _answers(base_url, server.model, {})
    finally:
        stop_server(process)


@pytest.fixture(scope="module", params=METHODS)
def speculative_server(request, reference_answers) -> tuple[str, str]:
    base_url, process = _start(("--speculative", request.param), "leanserve-spec-")
    try:
        yield request.param, base_url
    finally:
        stop_server(process)


def _undrafted_steps(metrics_text: str) -> float:
    match = re.search(r'^leanserve_spec_decode_request_steps_total{[^}]*drafted="false"[^}]*} ([0-9.e+]+)$',
                      metrics_text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _counter(metrics_text: str, name: str) -> float:
    match = re.search(rf"^{name}_total{{[^}}]*}} ([0-9.e+]+)$", metrics_text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_greedy_output_is_token_identical_with_speculation(
    server: Server, reference_answers: list[Answer], speculative_server: tuple[str, str],
) -> None:
    method, base_url = speculative_server
    answers = _answers(base_url, server.model, {})
    assert len(answers) == len(reference_answers) == ANSWERS
    partings = {index: _parting(got, want) for index, (got, want) in enumerate(zip(answers, reference_answers,
                                                                                   strict=True))}
    wrong = {index: problem for index, problem in partings.items() if problem}
    assert not wrong, f"{method}: {wrong}"
    identical = sum(_tokens(got) == _tokens(want) for got, want in zip(answers, reference_answers, strict=True))
    assert identical >= ANSWERS - 2, f"{method}: only {identical} of {ANSWERS} answers identical (near-ties are rare)"
    metrics = httpx.get(f"{base_url}/metrics", timeout=30).text
    assert _counter(metrics, "leanserve_spec_decode_draft_tokens") > 0, f"{method} never drafted"
    assert _counter(metrics, "leanserve_spec_decode_accepted_tokens") > 0, f"{method} never had a draft accepted"
    assert re.search(rf'leanserve_spec_decode_mean_accepted_length{{method="{method.split(":")[0]}"', metrics)


def test_a_request_can_opt_out_and_gets_the_same_answer_without_drafts(
    server: Server, reference_answers: list[Answer], speculative_server: tuple[str, str],
) -> None:
    """``extra_body={"speculative": {"enabled": false}}``: the scheduler drops that request's drafts
    (so the server's draft counter stays put) and the answer is still the target's greedy one."""
    method, base_url = speculative_server
    body = {"model": server.model, "prompt": CODE_PROMPTS[0], "temperature": 0, "max_tokens": MAX_TOKENS,
            "logprobs": 2}
    metrics = httpx.get(f"{base_url}/metrics", timeout=30).text
    before, undrafted_before = _counter(metrics, "leanserve_spec_decode_draft_tokens"), _undrafted_steps(metrics)
    response = httpx.post(f"{base_url}/v1/completions", json={**body, "speculative": {"enabled": False}}, timeout=300)
    response.raise_for_status()
    metrics = httpx.get(f"{base_url}/metrics", timeout=30).text
    after = _counter(metrics, "leanserve_spec_decode_draft_tokens")
    assert after == before, f"{method}: {after - before} draft tokens verified for a request that opted out"
    # every step of it ran without drafts (one step per token; the last one's report may still be on its way)
    steps = _undrafted_steps(metrics) - undrafted_before
    assert steps >= response.json()["usage"]["completion_tokens"] - 2, (method, steps)
    assert response.json()["usage"]["speculative"] == {"draft_tokens": 0, "accepted_tokens": 0, "steps_with_drafts": 0}
    logprobs = response.json()["choices"][0]["logprobs"]
    got = [(token, list(top.items())) for token, top in zip(logprobs["tokens"], logprobs["top_logprobs"], strict=True)]
    assert _parting(got, reference_answers[6]) is None  # CODE_PROMPTS[0] is the 7th reference answer
    bad = httpx.post(f"{base_url}/v1/completions", json={**body, "speculative": {"enabled": "no"}}, timeout=30)
    assert bad.status_code == 400 and "speculative" in bad.json()["error"]["param"]


def test_the_dashboard_panel_shows_accepted_drafts(server: Server, speculative_server: tuple[str, str], tmp_path):
    method, base_url = speculative_server
    title = "Speculative decoding: accepted drafts"
    prompts = iter(CODE_PROMPTS)
    accepted: list[int] = []  # usage["speculative"]["accepted_tokens"] of each answer

    def one_code_completion() -> None:
        body = {"model": server.model, "prompt": next(prompts), "temperature": 0, "max_tokens": MAX_TOKENS}
        response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=300)
        response.raise_for_status()
        usage = response.json()["usage"]
        saved = usage["speculative"]  # every accepted draft token is a target step the answer did not need
        assert 0 <= saved["accepted_tokens"] <= saved["draft_tokens"], usage
        assert saved["steps_with_drafts"] <= usage["completion_tokens"], usage
        accepted.append(saved["accepted_tokens"])

    length_title = "Speculative decoding: accepted length"
    histogram_title = "Speculative decoding: accepted-length histogram"
    drafted_title = "Speculative decoding: share of request steps that verified drafts"
    found = evaluate_panels(base_url, tmp_path, [title, length_title, histogram_title, drafted_title],
                            one_code_completion)
    [(labels, mean_length)], [(_, acceptance)] = found[title]
    assert labels["method"] == method.split(":")[0]
    assert 1 < mean_length and 0 < acceptance <= RATE_RATIO_SLACK, (mean_length, acceptance)
    [by_position] = found[length_title]
    shares = {int(labels["position"]): share for labels, share in by_position}
    assert 0 in shares and shares[0] > 0, sorted(shares.items())
    assert all(0 <= share <= RATE_RATIO_SLACK for share in shares.values()), sorted(shares.items())
    assert sum(accepted) > 0, accepted
    [[(labels, drafted_share)]] = found[drafted_title]
    assert labels["method"] == method.split(":")[0] and 0 < drafted_share <= 1, (labels, drafted_share)
    [histogram] = found[histogram_title]
    assert all(0 <= share <= RATE_RATIO_SLACK for _, share in histogram), histogram
    assert any(int(labels["accepted"]) > 0 for labels, _ in histogram), histogram
    # every step with drafts has exactly one accepted length: the histogram's counts add up to the drafts
    # (read from the counters: a rate over a series born mid-window is only approximate)
    metrics = httpx.get(f"{base_url}/metrics", timeout=30).text
    counts = re.findall(r"^leanserve_spec_decode_drafts_by_accepted_length_total{[^}]*} ([0-9.e+]+)$", metrics,
                        re.MULTILINE)
    drafts = _counter(metrics, "leanserve_spec_decode_drafts")
    assert sum(map(float, counts)) == drafts > 0, counts
    # and a draft position is reached at most once per draft: each position's share is at most 1, exactly
    by_position = re.findall(r"^leanserve_spec_decode_accepted_tokens_by_position_total{[^}]*} ([0-9.e+]+)$",
                             metrics, re.MULTILINE)
    assert by_position and all(0 <= float(count) <= drafts for count in by_position), (by_position, drafts)
