"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}``.

Every failure leaves the gateway through ``api_error``, the one table from
exception to status, type and code, used by the handlers installed here and by
event streams. So clients (the official ``openai`` package included) always get
the schema and status they expect, wherever the error was raised, and no stack
trace leaks out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.protocol import EngineDeadError, InvalidRequestError
from service.admission import AdmissionRejected
from service.rate_limit import RateLimited

logger = logging.getLogger(__name__)


# The code of an error raised without one: every error body names a code, so clients can branch on it.
_DEFAULT_CODES = {
    400: "invalid_request", 401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed",
    408: "request_timeout", 413: "request_too_large", 415: "unsupported_media_type", 429: "rate_limit_exceeded",
    500: "internal_error", 503: "service_unavailable",
}


class APIError(Exception):
    """An error with its HTTP status, raised anywhere in the gateway."""

    def __init__(
        self,
        status_code: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code or _DEFAULT_CODES.get(status_code, "error")
        self.headers = headers


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(error.message, error.type, error.param, error.code),
        status_code=error.status_code,
        headers=error.headers,
    )


_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


def _validation_param(error: dict, body: Any) -> str | None:
    """The field's path in the body as sent. Pydantic's location also names union members (a
    discriminator's tag, a type such as ``str``), which are not fields: walking the body leaves them out.
    A required field left out is named although the body lacks it."""
    location = list(error.get("loc", ()))
    if location[:1] == ["body"]:
        location = location[1:]
    path, value = [], body
    for position, part in enumerate(location):
        if (isinstance(value, dict) and part in value) or (
                isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)):
            value = value[part]
        elif not (isinstance(value, dict) and error.get("type") == "missing" and position == len(location) - 1):
            continue  # a union member's name
        path.append(str(part))
    return ".".join(path) or None


def _validation_error(error: RequestValidationError) -> APIError:
    """400, not FastAPI's 422, as OpenAI answers; the message names the first bad field."""
    # The deepest error: of a union's members, the one that matched furthest says what is wrong.
    first = max(error.errors(), key=lambda e: len(e.get("loc", ())), default={})
    if first.get("type") == "json_invalid":
        return bad_request(f"malformed JSON body: {first.get('msg', '')}", code="invalid_json")
    param = _validation_param(first, error.body)
    message = first.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    code = "unsupported_parameter" if first.get("type") == "extra_forbidden" else "invalid_value"
    return bad_request(message, param=param, code=code)


def _too_many_requests(message: str, retry_after_s: int | None) -> APIError:
    headers = None if retry_after_s is None else {"Retry-After": str(retry_after_s)}
    return APIError(429, message, "rate_limit_error", code="rate_limit_exceeded", headers=headers)


# Exception type -> its APIError, given the server's Retry-After for refusals at capacity.
# Looked up along the exception's MRO, so subclasses map as their nearest listed base.
_TABLE: dict[type[BaseException], Callable[[Any, int | None], APIError]] = {
    APIError: lambda error, _: error,
    RequestValidationError: lambda error, _: _validation_error(error),
    StarletteHTTPException: lambda error, _: APIError(
        error.status_code, str(error.detail), _STATUS_TYPES.get(error.status_code, "invalid_request_error"),
        headers=getattr(error, "headers", None),
    ),
    InvalidRequestError: lambda error, _: bad_request(str(error), param=error.param, code=error.code),
    EngineDeadError: lambda error, _: APIError(
        503, f"engine failed: {error}", "service_unavailable_error", code="engine_dead",
    ),
    RateLimited: lambda error, _: _too_many_requests(str(error), error.retry_after_s),
    AdmissionRejected: lambda error, retry_after_s: _too_many_requests(str(error), retry_after_s),
    # 408, not 504: a deadline is the request's own (or the operator's) contract, not a server fault.
    TimeoutError: lambda error, _: APIError(
        408, "the request did not finish within its deadline", "timeout_error", code="request_timeout",
    ),
}


def api_error(exc: BaseException, retry_after_s: int | None = None) -> APIError | None:
    """What the client is told about ``exc``, or None for a failure the gateway does not expect (a 500).

    ``retry_after_s`` is the server's ``--retry-after-s``, the Retry-After of a
    refusal at capacity (``AdmissionRejected``); None where no header can reach
    the client any more (inside an event stream).
    """
    for kind in type(exc).__mro__:
        convert = _TABLE.get(kind)
        if convert is not None:
            return convert(exc, retry_after_s)
    return None


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Answer every exception type of the table through it, and anything else with a bare 500."""

    async def on_known_error(_: Request, error: Exception) -> JSONResponse:
        return error_response(api_error(error, retry_after_s))

    async def on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, "internal server error", "internal_server_error"))

    for kind in _TABLE:
        app.add_exception_handler(kind, on_known_error)
    app.add_exception_handler(Exception, on_unexpected_error)
