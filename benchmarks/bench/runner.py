"""Drive one target at one load level: closed loop (concurrency) or open loop (Poisson rate).

Both are bounded: a run sends at most ``len(requests)`` requests and lasts at most
``max_duration_s``; requests still in flight then are cancelled and counted
(``cancelled_at_deadline``), requests never sent are counted as ``not_sent``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import numpy as np

from benchmarks.bench.client import Endpoint, RequestResult, send
from benchmarks.bench.datasets import BenchRequest


@dataclass(frozen=True)
class LoadLevel:
    """``concurrency`` caps requests in flight; ``request_rate`` (req/s, Poisson) opens the loop."""

    concurrency: int | None = None
    request_rate: float | None = None

    @property
    def label(self) -> str:
        if self.request_rate is not None:
            cap = f", c≤{self.concurrency}" if self.concurrency else ""
            return f"rate={self.request_rate:g}/s{cap}"
        return f"c={self.concurrency}"

    @property
    def x(self) -> float:
        """The value plotted on the load axis."""
        return float(self.request_rate if self.request_rate is not None else self.concurrency)


@dataclass
class RunResult:
    results: list[RequestResult]
    not_sent: int
    duration_s: float


def arrival_offsets(num: int, rate: float, seed: int) -> list[float]:
    """Send times (s from start) of a Poisson process at ``rate``; the first request goes at 0."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=num)
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()


async def run_level(endpoint: Endpoint, requests: Sequence[BenchRequest], level: LoadLevel, *, seed: int,
                    max_duration_s: float, request_timeout_s: float, progress=None,
                    transport: httpx.AsyncBaseTransport | None = None) -> RunResult:
    """Send ``requests`` in order at ``level``; return every outcome within the time bound.

    ``transport`` replaces the network (tests pass an ``httpx.MockTransport``).
    """
    limit = level.concurrency or len(requests)
    semaphore = asyncio.Semaphore(limit)
    offsets = arrival_offsets(len(requests), level.request_rate, seed) if level.request_rate else None
    limits = httpx.Limits(max_connections=limit + 4, max_keepalive_connections=limit + 4)
    timeout = httpx.Timeout(request_timeout_s, connect=min(30.0, request_timeout_s))
    start = time.perf_counter()
    deadline = start + max_duration_s
    tasks: list[asyncio.Task] = []
    not_sent = 0

    async with httpx.AsyncClient(limits=limits, timeout=timeout, transport=transport) as client:
        async def one(index: int, request: BenchRequest) -> RequestResult:
            try:
                return await send(client, endpoint, request, index, start)
            finally:
                semaphore.release()
                if progress is not None:
                    progress.update(1)

        for index, request in enumerate(requests):
            if offsets is not None:
                wait = start + offsets[index] - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(min(wait, max(0.0, deadline - time.perf_counter())))
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                not_sent = len(requests) - index
                break
            try:
                await asyncio.wait_for(semaphore.acquire(), timeout=remaining)
            except TimeoutError:
                not_sent = len(requests) - index
                break
            tasks.append(asyncio.create_task(one(index, request)))
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        duration = time.perf_counter() - start  # before closing the client, as vLLM's bench measures
    return RunResult([task.result() for task in tasks], not_sent, duration)
