"""The server's state: what the routes need, filled in once the engine has loaded.

Its own module so that the app (which builds it) and the routes and server
(which read it) all import it from here, and not from each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.protocol import Engine
from service import metrics
from service.admission import AdmissionController
from service.errors import APIError
from service.generation import GenerationContext
from service.limits import RequestLimits
from service.serving_chat import ChatCompletionServing
from service.serving_completion import CompletionServing
from service.serving_responses import ResponsesServing

logger = logging.getLogger(__name__)

_DEAD_EXIT_GRACE_S = 3.0


@dataclass
class ServerState:
    """What the routes need, filled in once the engine has loaded.

    Life cycle: loading -> ready -> (draining | dead). ``on_fatal`` is how a dead
    engine asks the process to exit non-zero, so an orchestrator restarts it.
    """

    model_name: str
    admission: AdmissionController
    limits: RequestLimits
    engine: Engine | None = None
    dead_reason: str | None = None
    draining: bool = False
    chat: ChatCompletionServing | None = None
    completion: CompletionServing | None = None
    responses: ResponsesServing | None = None
    background: list[asyncio.Task] = field(default_factory=list)
    on_fatal: Callable[[], None] | None = None

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.dead_reason is None and not self.draining

    @property
    def status(self) -> str:
        if self.dead_reason is not None:
            return "dead"
        if self.draining:
            return "draining"
        return "ready" if self.engine is not None else "loading"

    def require_ready(self) -> None:
        if self.dead_reason is not None:
            raise APIError(503, f"engine unavailable: {self.dead_reason}", "service_unavailable_error",
                           code="engine_dead")
        if self.draining:
            raise APIError(503, "the server is shutting down", "service_unavailable_error",
                           code="shutting_down")
        if self.chat is None or self.completion is None:
            raise APIError(503, "the model is still loading", "service_unavailable_error",
                           code="model_loading", headers={"Retry-After": "5"})

    def attach(self, engine: Engine) -> None:
        context = GenerationContext(engine, self.admission, self.model_name, self.limits, on_engine_dead=self.mark_dead)
        self.chat = ChatCompletionServing(context)
        self.completion = CompletionServing(context)
        self.responses = ResponsesServing(context, self.chat)
        self.engine = engine
        metrics.set_engine_ready(self.model_name, True)

    def mark_dead(self, reason: str) -> None:
        """Idempotent: a generation and the health poll may both see the same death."""
        if self.dead_reason is not None:
            return
        logger.error("engine unavailable: %s", reason)
        self.dead_reason = reason
        metrics.set_engine_ready(self.model_name, False)
        self.background.append(asyncio.create_task(self._exit_after_grace()))

    async def _exit_after_grace(self) -> None:
        # Long enough for in-flight requests to get their error and for /health to be seen 503.
        await asyncio.sleep(_DEAD_EXIT_GRACE_S)
        if self.on_fatal is not None:
            self.on_fatal()

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work at once; wait until in-flight requests finish or ``timeout_s`` passes."""
        self.draining = True
        metrics.set_engine_ready(self.model_name, False)
        deadline = asyncio.get_running_loop().time() + timeout_s
        logger.info("draining: %d requests in flight, up to %.0f s", self.admission.in_flight, timeout_s)
        while self.admission.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        logger.info("drained: %d requests left in flight", self.admission.in_flight)
