"""The request guard: the API key and the body-size limit, checked before any route runs.

``ops/monitoring.py``'s middleware calls these around every request (and records what they
refused); ``/health`` stays reachable without the key so that load balancers can probe it.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from tunesmith.serve.api.errors import error_body

OPEN_PATHS = ("/health",)  # reachable without the API key


def authorized(api_key: str | None, scope: Scope) -> bool:
    """True when no key is set, the path is open, or ``Authorization: Bearer KEY`` matches
    (compared in constant time)."""
    if not api_key or scope["path"] in OPEN_PATHS:
        return True
    headers = dict(scope.get("headers") or [])
    auth = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = auth.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                               api_key.encode())


async def refuse_unauthorized(send: Send) -> None:
    await json_error(send, 401, error_body(
        401, "Incorrect or missing API key. Send it as `Authorization: Bearer KEY`.",
        code="invalid_api_key"), [(b"www-authenticate", b"Bearer")])


async def json_error(send: Send, status: int, body: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(raw)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": raw})


async def bounded_receive(scope: Scope, receive: Receive, send: Send, rec: dict[str, Any],
                          limit: int) -> Receive | None:
    """``receive`` unchanged when the declared length fits (a chunked body is read up to
    ``limit`` and replayed); None after sending a 413."""
    headers = dict(scope.get("headers") or [])
    declared = headers.get(b"content-length")
    too_big = error_body(413, f"Request body too large: the limit is {limit} bytes.",
                         code="request_too_large")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            size = limit + 1
        if size > limit:
            rec["error"] = "request_too_large"
            await json_error(send, 413, too_big)
            return None
        return receive
    if b"chunked" not in headers.get(b"transfer-encoding", b""):
        return receive
    # no declared length: read up to the limit, then replay what was read
    chunks, total, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return receive
        chunks.append(message.get("body", b""))
        total += len(chunks[-1])
        more = message.get("more_body", False)
        if total > limit:
            rec["error"] = "request_too_large"
            await json_error(send, 413, too_big)
            return None
    body, sent = b"".join(chunks), False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay
