"""The bench's client and load loop against a scripted server (httpx.MockTransport, no sockets)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from benchmarks.bench.client import Endpoint
from benchmarks.bench.datasets import BenchRequest
from benchmarks.bench.runner import LoadLevel, run_level
from benchmarks.bench.stats import summarise

ENDPOINT = Endpoint("http://127.0.0.1:9", "m", api_key="k")


def sse(*events: dict | str) -> list[bytes]:
    return [(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n").encode() for e in events]


def completion_stream(tokens: int, prompt_tokens: int = 5, delay_s: float = 0.0):
    async def body():
        for i in range(tokens):
            await asyncio.sleep(delay_s)
            yield sse({"choices": [{"index": 0, "text": f"t{i}", "finish_reason": None}]})[0]
        yield sse({"choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens}})[0]
        yield sse("[DONE]")[0]
    return body()


def run(handler, requests, level, **kwargs):
    kwargs.setdefault("max_duration_s", 30)
    return asyncio.run(run_level(ENDPOINT, requests, level, seed=0, request_timeout_s=10,
                                 transport=httpx.MockTransport(handler), **kwargs))


def test_streamed_usage_timings_and_concurrency_cap() -> None:
    in_flight, peak, bodies = 0, 0, []

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        bodies.append(json.loads(request.content))
        assert request.headers["authorization"] == "Bearer k"
        in_flight += 1
        peak = max(peak, in_flight)

        async def body():
            nonlocal in_flight
            async for chunk in completion_stream(4, delay_s=0.01):
                if chunk.startswith(b"data: [DONE]"):
                    in_flight -= 1  # the client stops reading at [DONE]
                yield chunk
        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    result = run(handler, [BenchRequest(f"p{i}", 4) for i in range(6)], LoadLevel(concurrency=2))
    assert peak == 2 and result.not_sent == 0
    assert all(r.ok and r.output_tokens == 4 and r.prompt_tokens == 5 for r in result.results)
    assert all(len(r.itl_s) == 3 and 0 < r.ttft_s <= r.e2el_s for r in result.results)
    assert bodies[0]["stream_options"] == {"include_usage": True} and bodies[0]["prompt"] == "p0"
    s = summarise(result.results, result.duration_s, {})
    assert s["completed"] == 6 and s["output_tokens"] == 24 and s["prompt_tokens"] == 30


def test_failures_are_typed() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        if prompt == "busy":
            return httpx.Response(429, json={"error": {"message": "x", "type": "t", "code": "rate_limit_exceeded"}})
        if prompt == "boom":
            return httpx.Response(200, content=b"".join(sse({"choices": [{"text": "a"}]},
                                                            {"error": {"code": "engine_dead", "message": "gone"}})))
        if prompt == "nousage":
            return httpx.Response(200, content=b"".join(sse({"choices": [{"text": "a"}]}, "[DONE]")))
        if prompt == "cut":
            return httpx.Response(200, content=b"".join(sse({"choices": [{"text": "a"}]})))
        raise httpx.ConnectError("refused")

    prompts = ["busy", "boom", "nousage", "cut", "down"]
    result = run(handler, [BenchRequest(p, 4) for p in prompts], LoadLevel(concurrency=1))
    assert [r.error_type for r in result.results] == [
        "http_429:rate_limit_exceeded", "stream_error:engine_dead", "no_usage", "stream_incomplete",
        "transport:ConnectError"]
    assert result.results[0].status == 429 and not any(r.ok for r in result.results)


def test_duration_bound_cancels_and_counts_the_rest() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=completion_stream(100, delay_s=0.05))

    result = run(handler, [BenchRequest("p", 100) for _ in range(5)], LoadLevel(concurrency=2), max_duration_s=0.4)
    assert result.duration_s < 2
    assert [r.error_type for r in result.results] == ["cancelled_at_deadline"] * 2
    assert result.not_sent == 3
    s = summarise(result.results, result.duration_s, {}, result.not_sent)
    assert s["requests"] == 5 and s["failed"] == 5 and s["errors"] == {"cancelled_at_deadline": 2, "not_sent": 3}


def test_request_rate_spaces_the_sends() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=completion_stream(1))

    result = run(handler, [BenchRequest("p", 1) for _ in range(8)], LoadLevel(request_rate=20.0))
    starts = sorted(r.start_s for r in result.results)
    assert all(r.ok for r in result.results) and starts[-1] > 0.1
    assert starts == pytest.approx(sorted(starts))


def test_chat_role_chunk_is_not_the_first_token() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        return httpx.Response(200, content=b"".join(sse(
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"index": 0, "delta": {"content": "Hi"}}]},
            {"choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "length"}]},
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}, "[DONE]")))

    endpoint = Endpoint("http://127.0.0.1:9", "m", api="chat")
    result = asyncio.run(run_level(endpoint, [BenchRequest("p", 2)], LoadLevel(concurrency=1), seed=0,
                                   max_duration_s=5, request_timeout_s=5, transport=httpx.MockTransport(handler)))
    (r,) = result.results
    assert r.ok and len(r.chunk_times_s) == 2 and r.output_tokens == 2


def test_a_one_token_answer_without_text_still_has_a_first_token_time() -> None:
    """Its one token may decode to no text yet (part of a multi-byte character): the finishing chunk times it."""
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"".join(sse(
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}, "[DONE]")))

    endpoint = Endpoint("http://127.0.0.1:9", "m", api="chat")
    result = asyncio.run(run_level(endpoint, [BenchRequest("p", 1)], LoadLevel(concurrency=1), seed=0,
                                   max_duration_s=5, request_timeout_s=5, transport=httpx.MockTransport(handler)))
    (r,) = result.results
    assert r.ok and len(r.chunk_times_s) == 1 and r.ttft_s is not None and r.output_tokens == 1


def test_extra_body_rides_on_every_request_with_the_images() -> None:
    """``--extra-body`` (a plugin's per-request options) is merged into each chat body, images kept in order."""
    from benchmarks.bench.client import build_payload

    endpoint = Endpoint("http://127.0.0.1:9", "m", api="chat", extra_body={"visual_pruning": {"keep": 0.1}})
    payload = build_payload(endpoint, BenchRequest("Describe it.", 4, images=("data:image/png;base64,AA",)))
    assert payload["visual_pruning"] == {"keep": 0.1}
    assert payload["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
    video = build_payload(endpoint, BenchRequest("What moves?", 4, videos=("data:video/mp4;base64,AA",)))
    assert video["messages"][0]["content"][1] == {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AA"}}
