"""Prometheus metrics move by exactly what was served; a dropped stream frees its slot."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.conftest import sample, scrape


def _wait_for(predicate, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_counters_move_by_the_tokens_served(server, client):
    model = server.model
    before = scrape(server)
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Count to five."}], max_tokens=12, temperature=0,
    )
    completion = client.completions.create(model=model, prompt=["a b c", "x y"], max_tokens=5, temperature=0.8, seed=3, n=2)
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    prompt_tokens = chat.usage.prompt_tokens + completion.usage.prompt_tokens
    generated = chat.usage.completion_tokens + completion.usage.completion_tokens
    assert moved("leanserve_prompt_tokens_total", model=model) == prompt_tokens
    assert moved("leanserve_generation_tokens_total", model=model) == generated
    # One chat request, two completion prompts (each its own engine request).
    assert moved("leanserve_time_to_first_token_seconds_count", model=model) == 3
    assert moved("leanserve_e2e_request_latency_seconds_count", model=model) == 3
    assert moved("leanserve_request_queue_time_seconds_count", model=model) == 3
    assert moved("leanserve_requests_total", model=model, endpoint="/v1/chat/completions", status_code="200") == 1
    assert moved("leanserve_requests_total", model=model, endpoint="/v1/completions", status_code="200") == 1
    reasons = [chat.choices[0].finish_reason] + [c.finish_reason for c in completion.choices]
    for reason in set(reasons):
        assert moved("leanserve_finished_choices_total", model=model, finish_reason=reason) == reasons.count(reason)
    # Inter-token latency is observed once per token after each choice's first.
    assert moved("leanserve_inter_token_latency_seconds_count", model=model) == generated - 5
    assert sample(after, "leanserve_engine_ready", model=model) == 1


def test_error_statuses_are_counted(server):
    before = scrape(server)
    httpx.post(f"{server.base_url}/v1/completions", json={"model": "nope", "prompt": "x"}, headers=server.headers)
    after = scrape(server)
    labels = dict(model=server.model, endpoint="/v1/completions", status_code="400")
    assert sample(after, "leanserve_requests_total", **labels) - sample(before, "leanserve_requests_total", **labels) == 1


def test_client_disconnect_mid_stream_aborts_the_engine_request(server):
    model = server.model
    before = scrape(server)
    body = {"model": model, "prompt": "Write an essay:", "max_tokens": 1500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, headers=server.headers, timeout=60) as r:
        lines = r.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in received)
        assert sample(scrape(server), "leanserve_requests_running", model=model) == 1
    # The connection is closed: the gateway's slot and vLLM's own request must both go.
    assert _wait_for(lambda: sample(scrape(server), "leanserve_requests_running", model=model) == 0)
    assert _wait_for(lambda: sum(
        value for (name, _), value in scrape(server).items() if name == "vllm:num_requests_running"
    ) == 0)
    after = scrape(server)
    aborted = sample(after, "leanserve_finished_choices_total", model=model, finish_reason="abort")
    assert aborted - sample(before, "leanserve_finished_choices_total", model=model, finish_reason="abort") == 1
    generated = (sample(after, "leanserve_generation_tokens_total", model=model)
                 - sample(before, "leanserve_generation_tokens_total", model=model))
    assert 0 < generated < 1500


def test_disconnect_of_a_non_streaming_request_aborts_it(server):
    model = server.model
    body = {"model": model, "prompt": "Write an essay:", "max_tokens": 1500, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/completions", json=body, headers=server.headers, timeout=2.0)
    assert _wait_for(lambda: sample(scrape(server), "leanserve_requests_running", model=model) == 0)
    assert _wait_for(lambda: sum(
        value for (name, _), value in scrape(server).items() if name == "vllm:num_requests_running"
    ) == 0)

