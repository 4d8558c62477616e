"""Entropy-adaptive switching on a real server whose small and large model are the same weights.

With one model on both sides every hand-over must be invisible: greedy text is identical
whatever the threshold (no token lost, repeated or reordered at a switch, none leaked from
the outgoing model), streamed or not, and equals the model alone at both extremes
(threshold 0: the large engine writes everything; switching off: the small one). float32,
so that a prefill of the catch-up and a decode step round alike. Quality with two different
models is measured in benchmarks/, not here.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.local_server import free_port, start_server, stop_server
from tests.otlp_receiver import OtlpReceiver
from tests.prometheus import evaluate_panels

from .conftest import MAX_MODEL_LEN, Server, sample, scrape, serve_command

PROMPT = "Write a short poem about the sea."
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def adaptive_server(server: Server, otlp: OtlpReceiver) -> Server:
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="leanserve-adaptive-")) / "server.log"
    command = serve_command(port, "--adaptive-small", "default", "--dtype", "float32", "--max-model-len",
                            str(MAX_MODEL_LEN), "--kv-cache-gib", "1", "--otlp-traces-endpoint", otlp.endpoint)
    base_url = f"http://127.0.0.1:{port}"
    process = start_server(command, log_path, f"{base_url}/ready", timeout_s=600)
    try:
        yield Server(base_url, server.model, server.model_dir, process, log_path)
    finally:
        stop_server(process)


def _chat(server: Server, adaptive: dict | None, stream: bool = False) -> tuple[str, dict]:
    body = {"model": server.model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS,
            "temperature": 0}
    if adaptive is not None:
        body["adaptive"] = adaptive
    if not stream:
        reply = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=300)
        reply.raise_for_status()
        return reply.json()["choices"][0]["message"]["content"], reply.json()["usage"]
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    text, usage = "", {}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=300) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line.removeprefix("data: "))
                usage = chunk.get("usage") or usage
                text += "".join(choice["delta"].get("content") or "" for choice in chunk["choices"])
    return text, usage


def test_extremes_are_one_model_each(adaptive_server):
    small_text, small = _chat(adaptive_server, {"enabled": False})
    large_text, large = _chat(adaptive_server, {"threshold": 0})
    assert small["adaptive"] == {"small_tokens": small["completion_tokens"], "large_tokens": 0, "switches": 0,
                                 "catchup_tokens": 0}
    assert large["adaptive"] == {"small_tokens": 0, "large_tokens": large["completion_tokens"], "switches": 0,
                                 "catchup_tokens": 0}
    assert small_text == large_text  # the same weights


@pytest.mark.parametrize("threshold", [1.5, 2.5, 3.5])
def test_hand_overs_are_seamless(adaptive_server, threshold):
    reference, _ = _chat(adaptive_server, {"enabled": False})
    text, usage = _chat(adaptive_server, {"threshold": threshold})
    streamed, streamed_usage = _chat(adaptive_server, {"threshold": threshold}, stream=True)
    figures = usage["adaptive"]
    assert text == reference and streamed == reference
    # Who wrote what is deterministic; the catch-up is not: a hand-over's prefix-cache hits depend on whether
    # the outgoing request's blocks were already cached when it arrived (timing, load).
    deterministic = ("small_tokens", "large_tokens", "switches")
    assert {key: streamed_usage["adaptive"][key] for key in deterministic} == {key: figures[key] for key in deterministic}
    assert figures["small_tokens"] + figures["large_tokens"] == usage["completion_tokens"]
    assert figures["switches"] > 0, figures
    # Prefix caching keeps the catch-up far below re-reading the whole context at every hand-over.
    context = usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 < figures["catchup_tokens"] < 0.5 * figures["switches"] * context, figures


def test_each_of_n_choices_switches_on_its_own(adaptive_server):
    body = {"model": adaptive_server.model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 24,
            "temperature": 0.9, "seed": 11, "n": 2, "adaptive": {"threshold": 2.5}}
    reply = httpx.post(f"{adaptive_server.base_url}/v1/chat/completions", json=body, timeout=300).json()
    assert [choice["index"] for choice in reply["choices"]] == [0, 1]
    assert all(choice["message"]["content"] for choice in reply["choices"])
    figures = reply["usage"]["adaptive"]
    assert figures["small_tokens"] + figures["large_tokens"] == reply["usage"]["completion_tokens"]


def test_metrics_count_each_writer(adaptive_server):
    before = scrape(adaptive_server)
    _, usage = _chat(adaptive_server, {"threshold": 2.5})
    after = scrape(adaptive_server)
    model = adaptive_server.model
    for writer in ("small", "large"):
        moved = (sample(after, "leanserve_adaptive_tokens_total", model=model, writer=writer)
                 - sample(before, "leanserve_adaptive_tokens_total", model=model, writer=writer))
        assert moved == usage["adaptive"][f"{writer}_tokens"]
    assert (sample(after, "leanserve_adaptive_switches_total", model=model)
            - sample(before, "leanserve_adaptive_switches_total", model=model)) == usage["adaptive"]["switches"]
    assert 0 < sample(after, "leanserve_adaptive_large_token_fraction", model=model) < 1


def _vllm_generation_tokens(server: Server) -> float:
    return sum(value for (name, _), value in scrape(server).items() if name == "vllm:generation_tokens_total")


def test_vllm_series_describe_the_served_large_model(adaptive_server):
    # vLLM's own logger would let the engine created last (the small one) take every vllm:* series over.
    before = _vllm_generation_tokens(adaptive_server)
    _, small = _chat(adaptive_server, {"enabled": False})
    assert small["completion_tokens"] > 0
    assert _vllm_generation_tokens(adaptive_server) == before
    _, large = _chat(adaptive_server, {"threshold": 0})
    deadline = time.monotonic() + 10  # vLLM records a step's stats just after its output
    while _vllm_generation_tokens(adaptive_server) - before < large["completion_tokens"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _vllm_generation_tokens(adaptive_server) - before == large["completion_tokens"]


@pytest.mark.parametrize("adaptive", [{"policy": "quantile", "threshold": 2.5},
                                      {"policy": "token", "threshold": 2.5, "window": 2, "min_dwell": 3}])
def test_a_request_may_pick_the_policy(adaptive_server, adaptive):
    text, usage = _chat(adaptive_server, adaptive)
    reference, _ = _chat(adaptive_server, {"enabled": False})
    assert text == reference and usage["adaptive"]["switches"] > 0


@pytest.mark.parametrize(("body", "param"), [
    ({"adaptive": {"policy": "median"}}, "adaptive.policy"),
    ({"adaptive": {"threshold": -1}}, "adaptive.threshold"),
    ({"adaptive": {"threshold": 1, "window": 0}}, "adaptive.window"),
    ({"adaptive": {"min_dwell": 2000}}, "adaptive.min_dwell"),
    ({"adaptive": {"threshold": 1, "lookahead": 3}}, "adaptive.lookahead"),  # unknown fields are refused too
    ({"n": 2, "temperature": 0}, "n"),  # as vLLM: greedy choices would all be the same
])
def test_refusals_name_the_field(adaptive_server, body, param):
    request = {"model": adaptive_server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
               **body}
    reply = httpx.post(f"{adaptive_server.base_url}/v1/chat/completions", json=request, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_the_session_server_refuses_the_field_it_was_not_started_with(server):
    request = {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
               "adaptive": {"threshold": 1}}
    reply = httpx.post(f"{server.base_url}/v1/chat/completions", json=request, headers=server.headers, timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "plugin_disabled"


def test_the_tap_reports_the_exact_entropy_of_every_token(tmp_path):
    """The tap's entropy against the full distribution vLLM returns (logprobs=-1), token by token."""
    import subprocess
    import sys

    out = tmp_path / "entropy.json"
    subprocess.run([sys.executable, "-m", "benchmarks.adaptive_entropy", "--prompts", "3", "--max-tokens", "12",
                    "--out", str(out)], check=True, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    assert report["tokens"] >= 3 and report["missing"] == 0, report
    assert report["max_abs_error_nats"] < 1e-4, report


@pytest.mark.parametrize("cut", [15, 40, 70])
def test_stop_strings_hold_across_hand_overs(adaptive_server, cut):
    reference, _ = _chat(adaptive_server, {"enabled": False})
    stop = reference[cut:cut + 4]
    body = {"model": adaptive_server.model, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS, "temperature": 0, "stop": [stop], "adaptive": {"threshold": 2.5}}
    reply = httpx.post(f"{adaptive_server.base_url}/v1/chat/completions", json=body, timeout=300).json()
    assert reply["choices"][0]["message"]["content"] == reference[: reference.index(stop)]
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_a_trace_carries_the_plugins_figures_and_each_engine_part(adaptive_server, otlp):
    trace_id = secrets.token_hex(16)
    body = {"model": adaptive_server.model, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS, "temperature": 0, "adaptive": {"threshold": 2.5}}
    reply = httpx.post(f"{adaptive_server.base_url}/v1/chat/completions", json=body, timeout=300,
                       headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    figures = reply.json()["usage"]["adaptive"]
    assert figures["switches"] > 0, figures
    spans = otlp.wait_for(trace_id, {"POST /v1/chat/completions", "decode", "llm_request"})
    [root] = [span for span in spans if span.name == "POST /v1/chat/completions"]
    for figure, value in figures.items():
        assert root.attributes[f"leanserve.adaptive.{figure}"] == value
    # Every hand-over starts a new engine request: vLLM traces each finished one under our span.
    parts = [span for span in spans if span.name == "llm_request"]
    assert 1 <= len(parts) <= figures["switches"] + 1
    assert all(part.parent_span_id == root.span_id for part in parts)


def test_the_dashboard_panels_show_the_switching(adaptive_server, tmp_path):
    writers_title = "Adaptive switching: tokens by writer"
    share_title = "Adaptive switching: large-model share, hand-overs and catch-up"
    found = evaluate_panels(adaptive_server.base_url, tmp_path, [writers_title, share_title],
                            lambda: _chat(adaptive_server, {"threshold": 2.5}))
    [by_writer] = found[writers_title]
    assert {labels["writer"] for labels, value in by_writer if value > 0} == {"small", "large"}
    share, switches_per_token, catchup_per_switch = (result[0][1] for result in found[share_title])
    assert 0 < share < 1 and 0 < switches_per_token < 1 and catchup_per_switch > 0
