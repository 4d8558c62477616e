"""Bearer-token authentication for every route but the public ones (health, readiness, metrics).

A middleware rather than a route dependency, so that routes added later
(docs, admin, plugins) are closed by default.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_body

API_KEY_SCOPE_FIELD = "leanserve_api_key"


def key_matches(presented: str, keys: tuple[str, ...]) -> bool:
    """Compare against every key in constant time, so timing reveals neither key nor index."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented.encode(), key.encode())
    return matched


def bearer_token(scope: Scope) -> str | None:
    header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class ApiKeyAuth:
    """Refuse requests without one of ``keys`` (401); with no keys configured, everything is open."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], public_paths: tuple[str, ...]) -> None:
        self.app = app
        self.keys = keys
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None or not key_matches(token, self.keys):
            await _refuse(send)
            return
        scope.setdefault("state", {})[API_KEY_SCOPE_FIELD] = token
        await self.app(scope, receive, send)


async def _refuse(send: Send) -> None:
    body = json.dumps(error_body(
        "Missing or incorrect API key: send 'Authorization: Bearer <key>'.", "invalid_request_error",
        code="invalid_api_key",
    )).encode()
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b"Bearer"),
    ]})
    await send({"type": "http.response.body", "body": body})
