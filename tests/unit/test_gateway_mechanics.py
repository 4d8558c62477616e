"""Gateway mechanics on a scripted engine: limits, budgets, deadlines, drain, engine death, ids.

Real FastAPI app, real middleware and routes, over httpx's ASGI transport; only
the engine is scripted (tests/unit/fake_engine.py).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

import httpx

from service.app import create_app
from service.settings import Settings
from tests.unit.fake_engine import FakeEngine

KEY, OTHER_KEY = "k1", "k2"


@asynccontextmanager
async def running_app(engine: FakeEngine, **settings):
    settings.setdefault("api_keys", (KEY, OTHER_KEY))
    app = create_app(Settings(**settings), "fake", lambda: _ready(engine))
    async with app.router.lifespan_context(app):
        state = app.state.server
        for _ in range(100):
            if state.ready:
                break
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers={"Authorization": f"Bearer {KEY}"}) as client:
            yield app, client


async def _ready(engine: FakeEngine) -> FakeEngine:
    return engine


def completion(max_tokens: int = 3, **extra) -> dict:
    return {"model": "fake", "prompt": "hello", "max_tokens": max_tokens, **extra}


def run(coro):
    return asyncio.run(coro)


def test_requests_per_minute_per_key():
    async def scenario():
        async with running_app(FakeEngine(), key_requests_per_minute=2) as (_, client):
            statuses = [(await client.post("/v1/completions", json=completion())).status_code for _ in range(2)]
            refused = await client.post("/v1/completions", json=completion())
            other = await client.post("/v1/completions", json=completion(),
                                      headers={"Authorization": f"Bearer {OTHER_KEY}"})
            return statuses, refused, other

    statuses, refused, other = run(scenario())
    assert statuses == [200, 200]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert other.status_code == 200  # budgets are per key


def test_tokens_per_minute_per_key():
    async def scenario():
        async with running_app(FakeEngine(), key_tokens_per_minute=20) as (_, client):
            first = await client.post("/v1/completions", json=completion(max_tokens=16))  # 5 + 16 tokens
            second = await client.post("/v1/completions", json=completion())
            return first, second

    first, second = run(scenario())
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] == 21
    assert second.status_code == 429 and "token" in second.json()["error"]["message"]


def test_deadline_ends_request_and_frees_engine():
    engine = FakeEngine(step_s=0.02)

    async def scenario():
        async with running_app(engine, request_timeout_s=5) as (app, client):
            plain = await client.post("/v1/completions", json=completion(max_tokens=500, timeout_s=0.2))
            async with client.stream("POST", "/v1/completions",
                                     json=completion(max_tokens=500, timeout_s=0.2, stream=True)) as streamed:
                events = [line async for line in streamed.aiter_lines() if line.startswith("data: ")]
            return plain, streamed, events, app.state.server.admission.in_flight

    plain, streamed, events, in_flight = run(scenario())
    assert plain.status_code == 408 and plain.json()["error"]["code"] == "request_timeout"
    assert streamed.status_code == 200
    assert json.loads(events[-2][6:])["error"]["code"] == "request_timeout"
    assert events[-1] == "data: [DONE]"
    assert 2 <= len(events) < 500
    assert len(engine.aborted) == 2 and in_flight == 0


def test_operator_limits_are_400():
    async def scenario():
        async with running_app(FakeEngine(), max_n=2, max_tokens_limit=8, max_prompt_tokens=4) as (_, client):
            return [await client.post("/v1/completions", json=body) for body in (
                completion(n=3, temperature=1), completion(max_tokens=9), completion(),  # "hello" is 5 tokens
            )]

    responses = run(scenario())
    assert [r.status_code for r in responses] == [400, 400, 400]
    assert [r.json()["error"]["param"] for r in responses] == ["n", "max_tokens", "prompt"]


def test_every_route_but_public_ones_needs_a_key():
    async def scenario():
        async with running_app(FakeEngine()) as (_, client):
            anonymous = {"Authorization": ""}
            closed = [await client.get(path, headers=anonymous) for path in ("/docs", "/openapi.json", "/v1/models")]
            opened = [await client.get(path, headers=anonymous) for path in ("/health", "/ready", "/metrics")]
            return closed, opened

    closed, opened = run(scenario())
    assert [r.status_code for r in closed] == [401, 401, 401]
    assert all(r.json()["error"]["code"] == "invalid_api_key" for r in closed)
    assert [r.status_code for r in opened] == [200, 200, 200]


def test_request_id_is_returned_and_can_be_given():
    async def scenario():
        async with running_app(FakeEngine()) as (_, client):
            given = await client.get("/health", headers={"X-Request-Id": "abc-123"})
            generated = await client.get("/health")
            hostile = await client.get("/health", headers={"X-Request-Id": "x" * 500})
            return given, generated, hostile

    given, generated, hostile = run(scenario())
    assert given.headers["x-request-id"] == "abc-123"
    assert len(generated.headers["x-request-id"]) == 32
    assert hostile.headers["x-request-id"] != "x" * 500


def test_drain_refuses_new_work_and_lets_in_flight_finish():
    engine = FakeEngine(step_s=0.01)

    async def scenario():
        async with running_app(engine) as (app, client):
            state = app.state.server
            in_flight = asyncio.create_task(client.post("/v1/completions", json=completion(max_tokens=40)))
            await asyncio.sleep(0.05)
            drain = asyncio.create_task(state.drain(timeout_s=5))
            await asyncio.sleep(0.01)
            ready = await client.get("/ready")
            refused = await client.post("/v1/completions", json=completion())
            await drain
            return await in_flight, ready, refused, state.admission.in_flight

    finished, ready, refused, left = run(scenario())
    assert ready.status_code == 503 and ready.json() == {"status": "draining"}
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    assert finished.status_code == 200 and finished.json()["choices"][0]["text"] == ("abcdefghijklmnopqrstuvwxyz" + "abcdefghijklmn")
    assert left == 0


def test_engine_death_fails_requests_clearly_and_asks_to_exit(monkeypatch):
    # The health poll never runs here: the request that sees the engine die must mark it dead itself.
    monkeypatch.setattr("service.app._HEALTH_POLL_S", 60.0)
    monkeypatch.setattr("service.state._DEAD_EXIT_GRACE_S", 0.05)
    engine = FakeEngine(step_s=0.01, die_at_step=5)  # httpx's ASGI transport buffers whole responses

    async def scenario():
        async with running_app(engine) as (app, client):
            state = app.state.server
            exited = asyncio.Event()
            state.on_fatal = exited.set
            async with client.stream("POST", "/v1/completions", json=completion(max_tokens=200, stream=True)) as r:
                lines = r.aiter_lines()
                first = await anext(lines)
                rest = [line async for line in lines if line.startswith("data: ")]
            plain = await client.post("/v1/completions", json=completion())
            health = await client.get("/health")
            await asyncio.wait_for(exited.wait(), timeout=2)
            return first, rest, plain, health

    first, rest, plain, health = run(scenario())
    assert first.startswith("data: {")
    assert json.loads(rest[-2][6:])["error"]["code"] == "engine_dead"
    assert rest[-1] == "data: [DONE]"
    assert plain.status_code == 503 and plain.json()["error"]["code"] == "engine_dead"
    assert health.status_code == 503


def test_prompts_reach_the_logs_only_when_asked(caplog):
    async def scenario(log_prompts: bool):
        async with running_app(FakeEngine(), log_prompts=log_prompts) as (_, client):
            await client.post("/v1/completions", json=completion(prompt="secret words"))

    with caplog.at_level("INFO"):
        run(scenario(False))
    assert not any("secret words" in str(getattr(r, "prompt", "")) + r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("INFO"):
        run(scenario(True))
    assert any(getattr(r, "prompt", None) == "secret words" for r in caplog.records)
