"""Bearer-token authentication for the API routes."""

from __future__ import annotations

import hmac

from fastapi import Request

from service.errors import APIError


def key_matches(presented: str, keys: tuple[str, ...]) -> bool:
    """Compare against every key in constant time, so timing reveals neither key nor index."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented.encode(), key.encode())
    return matched


def require_api_key(keys: tuple[str, ...]):
    """A FastAPI dependency refusing requests without one of ``keys`` (none configured: open)."""

    async def check(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not key_matches(token.strip(), keys):
            raise APIError(
                401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'.",
                "invalid_request_error", code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
