"""HTTP routes: thin functions that validate, pick a serving class and map errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.admission import AdmissionRejected
from service.auth import require_api_key
from service.errors import APIError, error_response
from service.generation import validate_model
from service.protocol import ChatCompletionRequest, CompletionRequest

if TYPE_CHECKING:
    from service.app import ServerState

T = TypeVar("T")

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


def build_router(state: ServerState, api_keys: tuple[str, ...], retry_after_s: int) -> APIRouter:
    router = APIRouter()
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key(api_keys))])

    async def serve(request: Request, work: Awaitable[Response]) -> Response:
        try:
            return await cancel_on_disconnect(request, work)
        except AdmissionRejected as error:
            return error_response(APIError(
                429, str(error), "rate_limit_error", code="rate_limit_exceeded",
                headers={"Retry-After": str(retry_after_s)},
            ))
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED_REQUEST)

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        arrival_s = time.monotonic()
        chat, _ = state.require_ready()
        validate_model(body.model, state.model_name)
        return await serve(request, chat.create(body, arrival_s))

    @v1.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        arrival_s = time.monotonic()
        _, completion = state.require_ready()
        validate_model(body.model, state.model_name)
        return await serve(request, completion.create(body, arrival_s))

    @v1.get("/models")
    async def list_models() -> dict:
        model = {"id": state.model_name, "object": "model", "created": 0, "owned_by": "leanserve"}
        if state.engine is not None:
            model["max_model_len"] = state.engine.info().max_model_len
        return {"object": "list", "data": [model]}

    @router.get("/health")
    async def health() -> Response:
        if state.dead_reason is not None:
            return JSONResponse({"status": "dead", "reason": state.dead_reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    @router.get("/ready")
    async def ready() -> Response:
        if state.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "dead" if state.dead_reason else "loading"}, status_code=503)

    @router.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    router.include_router(v1)
    return router
