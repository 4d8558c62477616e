"""OTLP traces from the real server (``--otlp-traces-endpoint``) to a receiver in the test suite.

The session server exports to ``otlp`` (conftest.py). A request that carries a W3C
``traceparent`` must come back as one trace: leanserve's SERVER span under the caller's,
its phases under it, and vLLM's own ``llm_request`` span joined as a child.
"""

from __future__ import annotations

import json
import secrets

import httpx
import pytest

from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

PHASES = ("gateway", "admission", "queue", "prefill", "decode")
MAX_TOKENS = 8


def stream_completion(server: Server, headers: dict[str, str]) -> dict:
    body = {"model": server.model, "prompt": "The history of the lighthouse", "max_tokens": MAX_TOKENS,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    usage = {}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=120,
                      headers={**server.headers, **headers}) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line.removeprefix("data: ")).get("usage") or usage
    return usage


def test_a_streamed_request_is_one_trace_with_vllms_span_joined(server, otlp):
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    usage = stream_completion(server, {"traceparent": f"00-{trace_id}-{caller_span}-01"})
    assert usage["completion_tokens"] == MAX_TOKENS

    spans = otlp.wait_for(trace_id, {"POST /v1/completions", "llm_request", *PHASES})
    [root] = [span for span in spans if span.name == "POST /v1/completions"]
    assert root.parent_span_id == caller_span and root.service == "leanserve"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["gen_ai.usage.output_tokens"] == MAX_TOKENS
    assert root.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]

    phases = {span.name: span for span in spans if span.name in PHASES}
    assert all(span.parent_span_id == root.span_id for span in phases.values())
    assert root.start_ns <= phases["gateway"].start_ns and phases["decode"].end_ns <= root.end_ns
    assert phases["decode"].duration_s > 0  # 7 decode steps after the first token

    [engine] = [span for span in spans if span.name == "llm_request"]
    assert engine.parent_span_id == root.span_id
    assert engine.attributes["gen_ai.usage.completion_tokens"] == MAX_TOKENS
    # vLLM's request arrives after the gateway parsed and admitted it: its TTFT is within ours.
    ours = (phases["prefill"].end_ns - root.start_ns) / 1e9
    assert 0 < engine.attributes["gen_ai.latency.time_to_first_token"] <= ours + 0.01


def test_a_request_without_traceparent_starts_its_own_trace(server, otlp):
    request_id = secrets.token_hex(8)
    usage = stream_completion(server, {"X-Request-Id": request_id})
    assert usage["completion_tokens"] == MAX_TOKENS
    roots = [span for span in otlp.spans() if span.name == "POST /v1/completions" and not span.parent_span_id]
    assert roots, "no root span for a request without a caller's trace"
