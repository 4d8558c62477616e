"""Builds the FastAPI application around an engine that loads in the background.

The HTTP server listens from the first second, so orchestrators can tell a
process that is loading a model (``/health`` 200, ``/ready`` 503) from one that
is dead (``/health`` 503).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from engine.protocol import Engine
from service import metrics
from service.admission import AdmissionController
from service.errors import APIError, install_error_handlers
from service.generation import GenerationContext
from service.middleware import BodySizeLimit, RequestCounter
from service.routes import build_router
from service.serving_chat import ChatCompletionServing
from service.serving_completion import CompletionServing
from service.settings import Settings

logger = logging.getLogger(__name__)

EngineFactory = Callable[[], Awaitable[Engine]]
_HEALTH_POLL_S = 2.0


@dataclass
class ServerState:
    """What the routes need, filled in once the engine has loaded."""

    model_name: str
    admission: AdmissionController
    engine: Engine | None = None
    dead_reason: str | None = None
    chat: ChatCompletionServing | None = None
    completion: CompletionServing | None = None
    background: list[asyncio.Task] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.dead_reason is None

    def require_ready(self) -> tuple[ChatCompletionServing, CompletionServing]:
        if self.dead_reason is not None:
            raise APIError(503, f"engine unavailable: {self.dead_reason}", "service_unavailable_error",
                           code="engine_dead")
        if self.chat is None or self.completion is None:
            raise APIError(503, "the model is still loading", "service_unavailable_error",
                           code="model_loading", headers={"Retry-After": "5"})
        return self.chat, self.completion

    def attach(self, engine: Engine) -> None:
        context = GenerationContext(engine, self.admission, self.model_name)
        self.chat = ChatCompletionServing(context)
        self.completion = CompletionServing(context)
        self.engine = engine
        metrics.set_engine_ready(self.model_name, True)

    def mark_dead(self, reason: str) -> None:
        if self.dead_reason is None:
            logger.error("engine unavailable: %s", reason)
        self.dead_reason = reason
        metrics.set_engine_ready(self.model_name, False)


async def _load_engine(state: ServerState, factory: EngineFactory) -> None:
    try:
        engine = await factory()
    except Exception as error:
        logger.exception("engine failed to load")
        state.mark_dead(f"failed to load: {error}")
        return
    state.attach(engine)
    logger.info("model %s is ready", state.model_name)
    await _watch_health(state, engine)


async def _watch_health(state: ServerState, engine: Engine) -> None:
    while True:
        await asyncio.sleep(_HEALTH_POLL_S)
        try:
            await engine.check_health()
        except Exception as error:
            state.mark_dead(str(error) or type(error).__name__)
            return


def create_app(settings: Settings, model_name: str, engine_factory: EngineFactory) -> FastAPI:
    """The gateway: routes, errors, middleware, and the engine's lifecycle."""
    state = ServerState(
        model_name=model_name,
        admission=AdmissionController(
            settings.max_running_requests, settings.max_queued_requests,
            metrics.running_gauge(model_name), metrics.waiting_gauge(model_name),
        ),
    )
    metrics.set_engine_ready(model_name, False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.background.append(asyncio.create_task(_load_engine(state, engine_factory)))
        yield
        for task in state.background:
            task.cancel()
        await asyncio.gather(*state.background, return_exceptions=True)
        if state.engine is not None:
            await state.engine.shutdown()

    app = FastAPI(title="leanserve", version="0.1.0", lifespan=lifespan)
    app.state.server = state
    install_error_handlers(app)
    app.include_router(build_router(state, settings.api_keys, settings.retry_after_s))
    app.add_middleware(RequestCounter, model_name=model_name)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
