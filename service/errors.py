"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}``.

Every failure leaves the gateway through ``APIError`` or one of the handlers
installed here, so clients (the official ``openai`` package included) always
get the schema and status they expect, and no stack trace leaks out.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


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
        self.code = code
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


def _validation_param(error: dict) -> str | None:
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    return ".".join(location) or None


async def _on_api_error(_: Request, error: APIError) -> JSONResponse:
    return error_response(error)


async def _on_validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {}
    if first.get("type") == "json_invalid":
        return error_response(bad_request(f"malformed JSON body: {first.get('msg', '')}", code="invalid_json"))
    param = _validation_param(first)
    message = first.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    return error_response(bad_request(message, param=param, code="invalid_value"))


async def _on_http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    return error_response(APIError(
        error.status_code, str(error.detail), _STATUS_TYPES.get(error.status_code, "invalid_request_error"),
        headers=getattr(error, "headers", None),
    ))


async def _on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, "internal server error", "internal_server_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected_error)
