"""OpenAI's error envelope, and the handlers that put every error into it."""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(Exception):
    """An error returned to the client in OpenAI's envelope."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(status_code: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    error_type = _TYPES_BY_STATUS.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    body = error_body(error.status_code, error.message, param=error.param, code=error.code)
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


def _validation_param(location: tuple[Any, ...]) -> str | None:
    parts = [str(part) for part in location if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def _validation_message(error: dict[str, Any]) -> str:
    param = _validation_param(tuple(error.get("loc", ()))) or "request body"
    if error.get("type") == "json_invalid":
        detail = error.get("ctx", {}).get("error", error.get("msg"))
        return f"the request body is not valid JSON: {detail} (at character {param}); send a JSON object"
    return f"invalid value for '{param}': {error.get('msg', 'invalid')}"


async def _handle_api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, APIError)
    return error_response(error)


async def _handle_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0] if error.errors() else {"msg": "invalid request"}
    malformed = first.get("type") == "json_invalid"
    # For malformed JSON the location is a character offset, not a field, so no param is named.
    param = None if malformed else _validation_param(tuple(first.get("loc", ())))
    code = "invalid_json" if malformed else "invalid_value"
    return error_response(APIError(400, _validation_message(first), param=param, code=code))


async def _handle_http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = "not_found" if error.status_code == 404 else None
    message = str(error.detail) if error.detail else "error"
    if error.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    elif error.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(APIError(error.status_code, message, code=code, headers=dict(error.headers or {})))


async def _handle_redis_error(request: Request, error: Exception) -> JSONResponse:
    logger.error("Request %s %s failed: Redis unavailable: %s", request.method, request.url.path, error)
    unavailable = APIError(
        503,
        "the session store (Redis) is unavailable; retry shortly",
        code="store_unavailable",
        headers={"Retry-After": "5"},
    )
    return error_response(unavailable)


async def _handle_unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.exception("Request %s %s failed", request.method, request.url.path)
    return error_response(APIError(500, "internal server error; see the gateway log", code="internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _handle_api_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_error)
    app.add_exception_handler(redis.exceptions.RedisError, _handle_redis_error)
    app.add_exception_handler(Exception, _handle_unexpected)
