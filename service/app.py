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

from fastapi import FastAPI

from engine.protocol import Engine
from service import metrics
from service.admission import AdmissionController
from service.auth import ApiKeyAuth
from service.errors import install_error_handlers
from service.limits import RequestLimits
from service.middleware import BodySizeLimit, RequestCounter, TracingMiddleware
from service.rate_limit import KeyRateLimiter
from service.request_log import RequestIdMiddleware
from service.routes import build_router
from service.settings import Settings
from service.state import ServerState
from service.tracing import Tracing

logger = logging.getLogger(__name__)

EngineFactory = Callable[[], Awaitable[Engine]]
_HEALTH_POLL_S = 1.0


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
        limits=RequestLimits.from_settings(settings),
    )
    limiter = KeyRateLimiter(settings.key_requests_per_minute, settings.key_tokens_per_minute)
    metrics.set_engine_ready(model_name, False)
    tracing = Tracing(settings.otlp_traces_endpoint, model_name) if settings.otlp_traces_endpoint else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.background.append(asyncio.create_task(_load_engine(state, engine_factory)))
        yield
        for task in state.background:
            task.cancel()
        await asyncio.gather(*state.background, return_exceptions=True)
        if state.engine is not None:
            await state.engine.shutdown()
        if tracing is not None:
            tracing.shutdown()

    app = FastAPI(title="leanserve", version="0.1.0", lifespan=lifespan)
    app.state.server = state
    app.openapi = _openapi_for_this_server(app, model_name, state.limits)
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(build_router(state, limiter, settings.request_timeout_s, settings.log_prompts))
    # Added innermost first; a request passes request id -> tracing -> counting -> auth -> body limit -> routes.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyAuth, keys=settings.api_keys, public_paths=settings.public_paths)
    app.add_middleware(RequestCounter, model_name=model_name)
    if tracing is not None:  # outside the counter and auth: refused requests are traced too
        app.add_middleware(TracingMiddleware, tracing=tracing)
    app.add_middleware(RequestIdMiddleware)
    return app
