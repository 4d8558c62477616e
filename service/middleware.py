"""Pure ASGI middleware: cheap per request, and able to act before the body is read."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.errors import error_body
from service.tracing import Tracing

TRACE_SCOPE_FIELD = "leanserve.trace"  # scope["state"] key of the request's RequestTrace


class BodySizeLimit:
    """Refuse bodies over ``max_bytes`` with 413, by Content-Length or while streaming in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False
        refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not started and not refused:
                    # Answer now; the app then sees a disconnect and its own response is dropped.
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(error_body(
            f"request body exceeds the limit of {self.max_bytes} bytes", "invalid_request_error",
            code="request_too_large",
        )).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


_COUNTED_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models"})


class _V1Observer:
    """Base of middleware that watches each /v1 request and learns its status code when it ends
    (500 if the app raised before answering); other paths and scopes pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        on_end = self.started(scope, path)
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            on_end(status)

    def started(self, scope: Scope, path: str) -> Callable[[int], None]:
        """Called as a /v1 request starts; returns what to call with its status code at the end."""
        raise NotImplementedError


class RequestCounter(_V1Observer):
    """Count responses of the /v1 routes by endpoint and status code (unknown paths as "other")."""

    def __init__(self, app: ASGIApp, model_name: str) -> None:
        super().__init__(app)
        self.model_name = model_name

    def started(self, scope: Scope, path: str) -> Callable[[int], None]:
        endpoint = path if path in _COUNTED_ENDPOINTS else "other"
        return lambda status: metrics.record_http_request(self.model_name, endpoint, status)


class TracingMiddleware(_V1Observer):
    """One OpenTelemetry span per /v1 request (service/tracing.py), ended with its status code."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        super().__init__(app)
        self.tracing = tracing

    def started(self, scope: Scope, path: str) -> Callable[[int], None]:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        trace = self.tracing.start_request(scope["method"], path, headers)
        scope.setdefault("state", {})[TRACE_SCOPE_FIELD] = trace
        return trace.finish
