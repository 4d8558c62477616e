"""Process life cycle on a real server: SIGTERM drains, a killed engine ends the process.

Each test starts its own server (these tests end it), with a short drain deadline.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.local_server import free_port, start_server
from tests.integration.conftest import serve_command

DRAIN_TIMEOUT_S = 20


def _start() -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="leanserve-life-")) / "server.log"
    command = serve_command(port, "--max-model-len", "1024", "--kv-cache-gib", "1",
                            "--drain-timeout-s", str(DRAIN_TIMEOUT_S))
    base_url = f"http://127.0.0.1:{port}"
    return start_server(command, log_path, f"{base_url}/ready"), base_url, log_path


def _model(base_url: str) -> str:
    return httpx.get(f"{base_url}/v1/models").json()["data"][0]["id"]


async def _stream(client: httpx.AsyncClient, body: dict, started: asyncio.Event | None = None) -> list[str]:
    events = []
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line)
                if started is not None:
                    started.set()
    return events


def test_sigterm_drains_in_flight_requests_then_exits_zero():
    process, base_url, log_path = _start()
    try:
        # Long enough to be still generating after the signal on a fast CPU, short enough to finish
        # within the drain deadline on a slow one (3 streams, ~15 tok/s each on 2 AVX2 cores).
        body = {"model": _model(base_url), "prompt": "Once upon a time", "max_tokens": 160, "ignore_eos": True}

        async def scenario():
            async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
                started = [asyncio.Event() for _ in range(3)]
                in_flight = [asyncio.create_task(_stream(client, body, event)) for event in started]
                await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 120)  # generating
                process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                ready = await client.get("/ready")
                refused = await client.post("/v1/completions", json=body)
                return await asyncio.gather(*in_flight), ready, refused

        streams, ready, refused = asyncio.run(scenario())
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        for events in streams:  # every in-flight request got its whole answer
            assert events[-1] == "data: [DONE]"
            assert '"finish_reason":"length"' in events[-2]
        assert process.wait(timeout=DRAIN_TIMEOUT_S + 60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_killed_engine_fails_requests_clearly_and_exits_nonzero():
    process, base_url, log_path = _start()
    try:
        body = {"model": _model(base_url), "prompt": "Once upon a time", "max_tokens": 800, "ignore_eos": True}
        engine_cores = [p for p in psutil.Process(process.pid).children(recursive=True) if "EngineCore" in p.name()
                        or any("EngineCore" in part for part in p.cmdline())]
        assert engine_cores, [p.name() for p in psutil.Process(process.pid).children(recursive=True)]

        async def scenario():
            async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
                streamed = asyncio.create_task(_stream(client, body))
                plain = asyncio.create_task(client.post("/v1/completions", json=body))
                await asyncio.sleep(1.5)
                killed_at = time.monotonic()
                for core in engine_cores:
                    core.kill()
                health = None
                while time.monotonic() - killed_at < 10:
                    try:
                        health = await client.get("/health")
                    except httpx.TransportError:
                        break
                    if health.status_code == 503:
                        break
                    await asyncio.sleep(0.2)
                return await streamed, await plain, health, time.monotonic() - killed_at

        events, plain, health, seconds = asyncio.run(scenario())
        assert health is not None and health.status_code == 503, "the dead engine was not reported"
        assert seconds < 10
        assert '"error"' in events[-2] and events[-1] == "data: [DONE]"
        assert plain.status_code == 503 and plain.json()["error"]["code"] == "engine_dead"
        assert process.wait(timeout=60) != 0
    finally:
        if process.poll() is None:
            process.kill()
