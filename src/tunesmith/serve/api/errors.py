"""OpenAI's error object for every failure: ``{"error": {"message", "type", "param", "code"}}``.

Clients written for OpenAI (the ``openai`` package among them) read this shape to raise the
right exception class, so every 4xx/5xx the server sends — our own, FastAPI's validation
errors, unknown routes, unexpected exceptions — goes through :func:`error_response`.
Malformed JSON is a 400; a well-formed body with a missing or wrong-typed field is a 422
naming the field (``param`` holds its dotted path, e.g. ``messages.0.content``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import TunesmithError

log = logging.getLogger("tunesmith.serve")

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
          403: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 409: "invalid_request_error",
          413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error"}


class APIError(Exception):
    """An error the client caused (or a server failure) with its HTTP status and OpenAI fields."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500
                                       else "invalid_request_error")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None,
               type: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message,
                      "type": type or _TYPES.get(status, "server_error" if status >= 500
                                                 else "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None,
                   code: str | None = None, type: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code, type), status_code=status,
                        headers=headers)


def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model `{name}` does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal", "TextPart"}


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "prompt", "list[str]", 0)`` → ``prompt.0``: the names a client sent."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    # pydantic names the union member it tried (`str`, `list[str]`, `function-after[...]`)
    parts = [p for p in parts if "[" not in p and p not in _UNION_TAGS]
    return ".".join(parts)


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI/pydantic validation errors → 400 (malformed JSON) or 422 naming the field."""
    errors = exc.errors()
    if not errors:
        return error_response(422, "invalid request body", code="invalid_value")
    first = errors[0]
    raw_body = tuple(first.get("loc", ())) == ("body",) and isinstance(first.get("input"),
                                                                        (bytes, str))
    if first.get("type") == "json_invalid" or raw_body:
        ctx = first.get("ctx") or {}
        return error_response(400, "We could not parse the JSON body of your request "
                              f"({ctx.get('error', 'invalid JSON')}). Send valid JSON with "
                              "Content-Type: application/json.", code="invalid_json")
    field = _field_path(first.get("loc", ()))
    if first.get("type") == "missing":
        msg = f"Missing required parameter: '{field}'."
        code = "missing_required_parameter"
    else:
        got = first.get("input")
        shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
        msg = f"Invalid value for '{field}': {first.get('msg', 'invalid value')} (got {shown[:80]})."
        code = "invalid_value"
    if len(errors) > 1:
        others = sorted({_field_path(e.get("loc", ())) for e in errors[1:]} - {field})
        if others:
            msg += f" Also invalid: {', '.join(others)}."
    return error_response(422, msg, param=field or None, code=code)


def _note(request: Request, response: JSONResponse) -> JSONResponse:
    """Put the error code on the request record (monitoring.py) and return the response."""
    err = json.loads(bytes(response.body))["error"]
    request.scope.setdefault("state", {}).setdefault("record", {})["error"] = (
        err.get("code") or err.get("type"))
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the OpenAI shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _note(request, error_response(exc.status, exc.message, exc.param, exc.code,
                                             exc.type))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _note(request, validation_response(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "Unknown request URL. Please check the URL and method."
        return _note(request, error_response(
            exc.status_code, detail, code="unknown_url" if exc.status_code in (404, 405)
            else None, headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, TunesmithError):  # e.g. a model on disk that cannot be loaded
            log.warning("request failed: %s", exc.render())
            return error_response(500, exc.render(), code="model_load_failed",
                                  type="server_error")
        log.exception("unexpected error")
        return error_response(500, f"The server had an error processing your request "
                              f"({type(exc).__name__}).", type="server_error")
