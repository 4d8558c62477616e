"""The uvicorn server with leanserve's shutdown rules.

SIGTERM (or Ctrl-C): ``/ready`` turns 503 and new requests get 503 at once,
in-flight requests may finish for up to ``drain_timeout_s``, then the process
exits 0 — the Kubernetes termination contract. A second signal exits at once.
A dead engine makes the process exit 1, so the orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from fastapi import FastAPI

from service.state import ServerState

logger = logging.getLogger(__name__)

EXIT_ENGINE_DEAD = 1


class LeanServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._state = state
        self._drain_timeout_s = drain_timeout_s
        self._drain_task: asyncio.Task | None = None
        self.exit_code = 0
        state.on_fatal = self._fatal

    def handle_exit(self, sig: int, frame) -> None:  # noqa: ANN001 - signal handler signature
        if self._drain_task is not None or self.should_exit:
            super().handle_exit(sig, frame)  # second signal: stop now
            return
        logger.info("signal %d: draining before exit", sig)
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        await self._state.drain(self._drain_timeout_s)
        self.should_exit = True

    def _fatal(self) -> None:
        self.exit_code = EXIT_ENGINE_DEAD
        self.should_exit = True


def run_server(app: FastAPI, host: str, port: int, log_level: str, drain_timeout_s: float) -> int:
    """Serve until drained or fatal; returns the process exit code."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            log_config=None, timeout_graceful_shutdown=max(1, int(drain_timeout_s)))
    server = LeanServer(config, app.state.server, drain_timeout_s)
    server.run()
    return server.exit_code
