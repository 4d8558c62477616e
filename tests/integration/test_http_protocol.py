"""Raw HTTP: SSE framing, OpenAI error schema and statuses, auth, body limit, admission."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.integration.conftest import MAX_BODY_BYTES, MAX_MODEL_LEN, MAX_QUEUED, MAX_RUNNING, SECOND_API_KEY


def _post(server, path: str, body, headers=None, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, headers=server.headers if headers is None else headers, timeout=120, **kwargs)


def _assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_sse_framing(server):
    body = {"model": server.model, "prompt": "Once upon a time", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, headers=server.headers, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == ""  # every event ends with a blank line
    events = events[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(p["object"] == "text_completion" and p["model"] == server.model for p in payloads)
    assert len({p["id"] for p in payloads}) == 1
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("field,value", [
    ("temperature", 2.5), ("temperature", -1), ("top_p", 0), ("top_p", 1.5), ("n", 0), ("n", 1000),
    ("max_tokens", 0), ("presence_penalty", 3), ("frequency_penalty", -3), ("logprobs", 100),
    ("stop", ["a", "b", "c", "d", "e"]), ("prompt", []), ("max_tokens", "many"),
])
def test_out_of_range_parameters_are_400(server, field, value):
    body = {"model": server.model, "prompt": "hi", "max_tokens": 4, field: value}
    _assert_error(_post(server, "/v1/completions", body), 400, param=field)


def test_chat_parameter_errors_are_400(server):
    base = {"model": server.model, "messages": [{"role": "user", "content": "hi"}]}
    _assert_error(_post(server, "/v1/chat/completions", {**base, "top_logprobs": 50, "logprobs": True}), 400, "top_logprobs")
    _assert_error(_post(server, "/v1/chat/completions", {**base, "messages": []}), 400, "messages")
    _assert_error(_post(server, "/v1/chat/completions", {"model": server.model}), 400, "messages")
    _assert_error(_post(server, "/v1/chat/completions", {**base, "messages": [{"role": "wizard", "content": "x"}]}), 400)


def test_unknown_model_is_400(server):
    error = _assert_error(_post(server, "/v1/completions", {"model": "gpt-9", "prompt": "hi"}), 400, "model")
    assert error["code"] == "model_not_found"


def test_prompt_beyond_context_is_400(server, tokenizer):
    prompt = "word " * (MAX_MODEL_LEN + 10)
    error = _assert_error(_post(server, "/v1/completions", {"model": server.model, "prompt": prompt, "max_tokens": 4}), 400)
    assert error["code"] == "context_length_exceeded"
    fits = "word " * 100
    error = _assert_error(
        _post(server, "/v1/completions", {"model": server.model, "prompt": fits, "max_tokens": MAX_MODEL_LEN}), 400,
        "max_tokens",
    )
    assert str(MAX_MODEL_LEN) in error["message"]
    chat = {"model": server.model, "messages": [{"role": "user", "content": prompt}]}
    assert _assert_error(_post(server, "/v1/chat/completions", chat), 400)["code"] == "context_length_exceeded"


def test_malformed_json_is_400(server):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", content=b'{"model": ',
                          headers={**server.headers, "content-type": "application/json"})
    assert _assert_error(response, 400)["code"] == "invalid_json"


def test_auth(server):
    body = {"model": server.model, "prompt": "hi", "max_tokens": 1}
    assert _assert_error(_post(server, "/v1/completions", body, headers={}), 401)["code"] == "invalid_api_key"
    _assert_error(_post(server, "/v1/completions", body, headers={"Authorization": "Bearer wrong"}), 401)
    _assert_error(_post(server, "/v1/completions", body, headers={"Authorization": "Basic test-key-1"}), 401)
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
    assert _post(server, "/v1/completions", body, headers={"Authorization": f"Bearer {SECOND_API_KEY}"}).status_code == 200
    for open_path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{server.base_url}{open_path}").status_code == 200


def test_body_over_limit_is_413(server):
    body = {"model": server.model, "prompt": "x" * (MAX_BODY_BYTES + 1), "max_tokens": 1}
    assert _assert_error(_post(server, "/v1/completions", body), 413)["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        yield b'{"model": "m", "prompt": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    response = httpx.post(f"{server.base_url}/v1/completions", content=chunks(),
                          headers={**server.headers, "content-type": "application/json"})
    _assert_error(response, 413)


def test_health_and_ready(server):
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.base_url}/ready").json() == {"status": "ready"}


def test_admission_queue_full_is_429_and_others_complete(server):
    total = MAX_RUNNING + MAX_QUEUED + 6
    body = {"model": server.model, "prompt": "Tell me a story:", "max_tokens": 48, "temperature": 0, "ignore_eos": True}

    async def one(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/v1/completions", json=body)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=300,
                                     limits=httpx.Limits(max_connections=total)) as client:
            return await asyncio.gather(*(one(client) for _ in range(total)))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    refused = [r for r in responses if r.status_code == 429]
    served = [r for r in responses if r.status_code == 200]
    assert len(served) + len(refused) == total, statuses
    assert len(refused) >= total - (MAX_RUNNING + MAX_QUEUED)
    assert len(served) >= MAX_RUNNING
    for r in refused:
        assert int(r.headers["retry-after"]) >= 0
        assert _assert_error(r, 429)["code"] == "rate_limit_exceeded"
    for r in served:
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] in ("length", "stop") and choice["text"]


def test_engine_side_validation_is_400_not_500(server):
    body = {"model": server.model, "prompt": "hi", "max_tokens": 2, "n": 2, "temperature": 0}
    error = _assert_error(_post(server, "/v1/completions", body), 400)
    assert "greedy" in error["message"]
