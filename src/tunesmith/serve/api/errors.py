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


MAX_MESSAGE = 4000  # characters of an error message (they quote the client's values)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None,
               type: str | None = None) -> dict[str, Any]:
    """OpenAI's error object. The message is cut to ``MAX_MESSAGE`` characters and made
    encodable (a client's unpaired surrogate quoted in it would fail the UTF-8 response)."""
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE - 3] + "..."
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
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


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in _UNION_TAGS)


def _branch(loc: tuple[Any, ...] | list[Any]) -> tuple[Any, ...]:
    """The location up to the first union member pydantic tried: errors sharing it are the
    alternatives of one field (``stop`` as a string, ``stop`` as a list)."""
    out = []
    for part in loc:
        if _is_tag(part):
            break
        out.append(part)
    return tuple(out)


def _pick(errors: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The error to report for the first bad field, and its message.

    A union field fails once per member: a list of five stop strings is "not a valid string"
    and "at most 4 items". The member whose type matched says what is wrong, so a type
    mismatch is reported only when every member mismatched (then naming all the types)."""
    first = errors[0]
    siblings = [e for e in errors if _branch(e.get("loc", ())) == _branch(first.get("loc", ()))]
    specific = [e for e in siblings if not str(e.get("type", "")).endswith("_type")]
    chosen = specific[0] if specific else first
    msg = str(chosen.get("msg", "invalid value")).removeprefix("Value error, ")
    kinds = list(dict.fromkeys(str(e.get("msg", "")) for e in siblings))
    if not specific and len(kinds) > 1 and all(k.startswith("Input should be ") for k in kinds):
        msg = "Input should be " + " or ".join(k.removeprefix("Input should be ") for k in kinds)
    return chosen, msg


def shown(value: Any) -> str:
    """A client's value in a message: short, and only its type for objects and lists."""
    if isinstance(value, (dict, list)):
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI/pydantic validation errors → 400 (malformed JSON) or 422 naming the field."""
    errors = list(exc.errors())
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
    chosen, msg = _pick(errors)
    field = _field_path(chosen.get("loc", ()))
    if not field and tuple(chosen.get("loc", ())) == ("body",):
        return error_response(422, "The request body must be a JSON object (got "
                              f"{type(chosen.get('input')).__name__}). Send the parameters as "
                              '{"name": value, ...}.', code="invalid_request")
    if chosen.get("type") == "missing":
        msg = f"Missing required parameter: '{field}'."
        code = "missing_required_parameter"
    else:
        msg = f"Invalid value for '{field}': {msg} (got {shown(chosen.get('input'))})."
        code = "invalid_value"
    others = sorted({_field_path(e.get("loc", ())) for e in errors} - {field}
                    - {_field_path(_branch(chosen.get("loc", ())))})
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
                                             exc.type, getattr(exc, "headers", None)))

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

    @app.exception_handler(TunesmithError)
    async def _tunesmith(request: Request, exc: TunesmithError) -> JSONResponse:
        # e.g. a model on disk that cannot be loaded. Handled here, not with the bugs below:
        # Starlette re-raises what reaches the catch-all handler, and uvicorn then closes the
        # connection, failing the client's next request on it too.
        log.warning("request failed: %s", exc.render())
        return _note(request, error_response(500, exc.render(), code="model_load_failed",
                                             type="server_error"))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, f"The server had an error processing your request "
                              f"({type(exc).__name__}).", type="server_error")
