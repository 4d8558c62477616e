"""Admission control: a bounded number of running plus queued requests.

Like TGI's bounded concurrency, a request beyond ``max_running + max_queued`` is
refused at once (HTTP 429 with Retry-After) instead of growing an unbounded
queue whose tail latency no client would wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import Gauge


class AdmissionRejected(Exception):
    """The server is at capacity; the client should retry later."""


class AdmissionController:
    """Counts requests in flight; hands out running slots in arrival order."""

    def __init__(self, max_running: int, max_queued: int, running: Gauge, waiting: Gauge) -> None:
        self._max_total = max_running + max_queued
        self._slots = asyncio.Semaphore(max_running)
        self._in_flight = 0
        self._running_gauge = running
        self._waiting_gauge = waiting

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @asynccontextmanager
    async def slot(self, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Hold a running slot for the body of the ``async with``; raises when full.

        ``timeout_s`` bounds only the wait for a slot (TimeoutError), not the body.
        """
        if self._in_flight >= self._max_total:
            raise AdmissionRejected(f"server is at capacity ({self._max_total} requests in flight)")
        self._in_flight += 1
        try:
            self._waiting_gauge.inc()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._slots.acquire()
            finally:
                self._waiting_gauge.dec()
            self._running_gauge.inc()
            try:
                yield
            finally:
                self._running_gauge.dec()
                self._slots.release()
        finally:
            self._in_flight -= 1
