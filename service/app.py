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
from service.auth import ApiKeyAuth
from service.generation import GenerationContext
from service.limits import RequestLimits
from service.middleware import BodySizeLimit, RequestCounter
from service.rate_limit import KeyRateLimiter
from service.request_log import RequestIdMiddleware
from service.routes import build_router
from service.serving_chat import ChatCompletionServing
from service.serving_completion import CompletionServing
from service.settings import Settings

logger = logging.getLogger(__name__)

EngineFactory = Callable[[], Awaitable[Engine]]
_HEALTH_POLL_S = 1.0
_DEAD_EXIT_GRACE_S = 3.0


@dataclass
class ServerState:
    """What the routes need, filled in once the engine has loaded.

    Life cycle: loading -> ready -> (draining | dead). ``on_fatal`` is how a dead
    engine asks the process to exit non-zero, so an orchestrator restarts it.
    """

    model_name: str
    admission: AdmissionController
    limits: RequestLimits = RequestLimits()
    engine: Engine | None = None
    dead_reason: str | None = None
    draining: bool = False
    chat: ChatCompletionServing | None = None
    completion: CompletionServing | None = None
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
        context = GenerationContext(engine, self.admission, self.model_name, self.limits)
        self.chat = ChatCompletionServing(context)
        self.completion = CompletionServing(context)
        self.engine = engine
        metrics.set_engine_ready(self.model_name, True)

    def mark_dead(self, reason: str) -> None:
        if self.dead_reason is None:
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


def _openapi_for_this_server(app: FastAPI, model_name: str, limits: RequestLimits) -> Callable[[], dict]:
    """The spec says what *this* server accepts: its model name and its operator bounds.

    FastAPI also documents 422 for body validation; leanserve answers 400, as OpenAI does.
    """
    build = app.openapi
    bounds = {"n": limits.max_n, "top_logprobs": limits.max_logprobs, "logprobs": limits.max_logprobs}
    if limits.max_tokens_limit is not None:
        bounds |= {"max_tokens": limits.max_tokens_limit, "max_completion_tokens": limits.max_tokens_limit}

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            for name in ("ChatCompletionRequest", "CompletionRequest"):
                properties = components.get(name, {}).get("properties", {})
                if "model" in properties:
                    properties["model"]["enum"] = [model_name]
                for field, maximum in bounds.items():
                    for option in properties.get(field, {}).get("anyOf", [properties.get(field, {})]):
                        if option.get("type") == "integer":
                            option["maximum"] = maximum
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def create_app(settings: Settings, model_name: str, engine_factory: EngineFactory) -> FastAPI:
    """The gateway: routes, errors, middleware, and the engine's lifecycle."""
    state = ServerState(
        model_name=model_name,
        admission=AdmissionController(
            settings.max_running_requests, settings.max_queued_requests,
            metrics.running_gauge(model_name), metrics.waiting_gauge(model_name),
        ),
        limits=RequestLimits(
            max_n=settings.max_n, max_prompts=settings.max_prompts,
            max_stop_sequences=settings.max_stop_sequences, max_logprobs=settings.max_logprobs,
            max_prompt_tokens=settings.max_prompt_tokens, max_tokens_limit=settings.max_tokens_limit,
        ),
    )
    limiter = KeyRateLimiter(settings.key_requests_per_minute, settings.key_tokens_per_minute)
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
    app.openapi = _openapi_for_this_server(app, model_name, state.limits)
    install_error_handlers(app)
    app.include_router(build_router(state, limiter, settings.retry_after_s, settings.request_timeout_s,
                                    settings.log_prompts))
    # Added innermost first; a request passes request id -> counting -> auth -> body limit -> routes.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyAuth, keys=settings.api_keys, public_paths=settings.public_paths)
    app.add_middleware(RequestCounter, model_name=model_name)
    app.add_middleware(RequestIdMiddleware)
    return app
