"""HTTP routes: thin functions that validate and pick a serving class.

What they raise becomes a response in ``service.errors`` (``api_error``), the one
place that knows which exception is which status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.auth import API_KEY_SCOPE_FIELD
from service.errors import APIError
from service.generation import RequestScope, validate_model
from service.limits import check_request_limits
from service.middleware import TRACE_SCOPE_FIELD
from service.protocol import ChatCompletionRequest, CompletionRequest
from service.rate_limit import KeyRateLimiter
from service.response_models import (
    ChatCompletionResponse,
    CompletionResponse,
    DetokenizeResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    ResponseObject,
    Status,
    TokenizeResponse,
)
from service.responses_protocol import ResponsesRequest
from service.serving_tokenize import DetokenizeRequest, TokenizeRequest, detokenize, tokenize
from service.state import ServerState

T = TypeVar("T")
logger = logging.getLogger(__name__)

# nginx's code for "client closed request": logged and counted, never seen by the client.
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; cancel it (aborting its engine requests) if the client goes away first."""
    handler = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.create_task(wait_for_disconnect())
    try:
        await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not handler.done():
        handler.cancel()
        await asyncio.gather(handler, return_exceptions=True)
        raise ClientDisconnected()
    return handler.result()


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 408, 413, 429, 503)}
# OpenAPI < 3.2: an event-stream ``schema`` describes one event. Each ``data`` is a JSON chunk
# (or an error object), and the last one is the literal ``[DONE]``.
_EVENT_STREAM = {"text/event-stream": {"schema": {
    "type": "object",
    "properties": {"data": {"type": "string", "description": "a JSON chunk, or [DONE] at the end"}},
    "required": ["data"],
}}}


def _generation_responses(model: type) -> dict:
    return {200: {"model": model, "content": _EVENT_STREAM}, **_ERRORS}


Generation = ChatCompletionRequest | CompletionRequest | ResponsesRequest


def _prompt_text(body: Generation) -> object:
    if isinstance(body, ChatCompletionRequest):
        return [{"role": message.role, "content": message.text()} for message in body.messages]
    if isinstance(body, ResponsesRequest):
        return body.input if isinstance(body.input, str) else [item.model_dump() for item in body.input]
    return body.prompt


def build_router(
    state: ServerState,
    limiter: KeyRateLimiter,
    request_timeout_s: float | None,
    log_prompts: bool = False,
) -> APIRouter:
    router = APIRouter()
    v1 = APIRouter(prefix="/v1")

    def request_scope(body: Generation, request: Request) -> RequestScope:
        """Check what a generation request may ask, and charge its key; raises on refusal."""
        arrival_s = time.monotonic()
        if log_prompts:  # off by default: prompts are the users' data
            logger.info("prompt", extra={"prompt": _prompt_text(body)})
        state.require_ready()
        validate_model(body.model, state.model_name)
        if not isinstance(body, ResponsesRequest):  # its chat request is checked as it is built
            check_request_limits(body, state.limits)
        timeouts = [t for t in (request_timeout_s, body.timeout_s) if t is not None]
        deadline_s = arrival_s + min(timeouts) if timeouts else None
        api_key = request.scope.get("state", {}).get(API_KEY_SCOPE_FIELD)
        trace = request.scope.get("state", {}).get(TRACE_SCOPE_FIELD)
        if api_key is None or not limiter.enabled:
            return RequestScope(arrival_s, deadline_s, trace=trace)
        limiter.admit(api_key)
        return RequestScope(arrival_s, deadline_s, lambda tokens: limiter.charge_tokens(api_key, tokens), trace)

    async def serve(request: Request, body: Generation, create) -> Response:
        try:
            return await cancel_on_disconnect(request, create(body, request_scope(body, request)))
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED_REQUEST)

    @v1.post("/chat/completions", response_model=None, responses=_generation_responses(ChatCompletionResponse))
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await serve(request, body, lambda b, scope: state.chat.create(b, scope))

    @v1.post("/completions", response_model=None, responses=_generation_responses(CompletionResponse))
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await serve(request, body, lambda b, scope: state.completion.create(b, scope))

    @v1.post("/responses", response_model=None, responses=_generation_responses(ResponseObject))
    async def responses(body: ResponsesRequest, request: Request) -> Response:
        return await serve(request, body, lambda b, scope: state.responses.create(b, scope))

    def model_card() -> dict:
        model = {"id": state.model_name, "object": "model", "created": 0, "owned_by": "leanserve"}
        if state.engine is not None:
            model["max_model_len"] = state.engine.info().max_model_len
        return model

    @v1.get("/models", response_model=ModelList, responses={401: _ERRORS[401]})
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{model_id:path}", response_model=ModelCard, responses={401: _ERRORS[401], 404: _ERRORS[404]})
    async def retrieve_model(model_id: str) -> dict:
        if model_id != state.model_name:
            raise APIError(404, f"The model `{model_id}` does not exist; this server serves `{state.model_name}`.",
                           "not_found_error", param="model", code="model_not_found")
        return model_card()

    @router.post("/tokenize", response_model=TokenizeResponse, responses={400: _ERRORS[400], 503: _ERRORS[503]})
    async def tokenize_route(body: TokenizeRequest) -> dict:
        state.require_ready()
        if body.model is not None:
            validate_model(body.model, state.model_name)
        return await tokenize(body, state.engine, state.engine.info().max_model_len)

    @router.post("/detokenize", response_model=DetokenizeResponse, responses={400: _ERRORS[400], 503: _ERRORS[503]})
    async def detokenize_route(body: DetokenizeRequest) -> dict:
        state.require_ready()
        if body.model is not None:
            validate_model(body.model, state.model_name)
        return await detokenize(body, state.engine)

    @router.get("/health", response_model=Status, responses={503: {"model": Status}})
    async def health() -> Response:
        if state.dead_reason is not None:
            return JSONResponse({"status": "dead", "reason": state.dead_reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    @router.get("/ready", response_model=Status, responses={503: {"model": Status}})
    async def ready() -> Response:
        if state.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": state.status}, status_code=503)

    @router.get("/metrics", response_class=Response,
                responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    router.include_router(v1)
    return router
