"""The studio's session cookie, its CSRF token, and the gate in front of every route.

The OpenAI-compatible API authenticates with ``Authorization: Bearer KEY`` (serve's request
guard). A browser cannot attach that header to page loads, so the studio asks for the key
once (``/studio/login``) and keeps a signed session cookie (HttpOnly, SameSite=Strict). The
gate, an ASGI middleware outside serve's guard, turns a valid session into the bearer header
the guard expects, so the UI is a client of the same routes as any other client.

CSRF: every state-changing request made with the cookie (POST/PUT/PATCH/DELETE to the studio,
and to ``/v1`` when the cookie stands in for the key) must carry ``X-CSRF-Token`` equal to
the session's token (htmx sends it from ``<body hx-headers>``; the studio's fetch calls add
it), and an ``Origin`` header, when the browser sends one, must name this server. A page on
another site can neither read the token nor set the header without a CORS preflight this
server never grants. The session exists without an API key too: CSRF protection does not
depend on a key being set.

The signing secret lives in ``<data_dir>/studio/secret`` (0600) so sessions survive a server
restart; it is mixed with the API key, so changing the key ends every session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunesmith.io import atomic_write_text
from tunesmith.serve.api.guard import bounded_receive
from tunesmith.serve.ops.monitoring import GuardAndRecord

COOKIE = "tunesmith_studio"
CSRF_HEADER = b"x-csrf-token"
MAX_AGE = 30 * 24 * 3600
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
OPEN = ("/studio/static/", "/studio/login", "/studio/review/")  # reachable before signing in
# (/studio/review: reviewers and annotators sign in with their own key; humaneval's routes
# check it, and it opens nothing else)
UPLOAD = "/studio/data/upload"


def load_secret(data_dir: Path) -> bytes:
    """The studio's signing secret, created once per data directory."""
    path = Path(data_dir) / "studio" / "secret"
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, secrets.token_hex(32) + "\n")
        os.chmod(path, 0o600)
        return bytes.fromhex(path.read_text(encoding="ascii").strip())


class Sessions:
    """Signs and checks session cookies: ``base64(json).signature``."""

    def __init__(self, secret: bytes, api_key: str | None) -> None:
        key_part = hashlib.sha256((api_key or "").encode()).digest()
        self._key = hmac.new(secret, key_part, hashlib.sha256).digest()

    def _sign(self, body: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, body, hashlib.sha256).digest()
                                        ).decode().rstrip("=")

    def issue(self, authed: bool) -> tuple[dict[str, Any], str]:
        payload = {"csrf": secrets.token_urlsafe(24), "auth": authed, "iat": int(time.time())}
        body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
        return payload, f"{body}.{self._sign(body.encode())}"

    def read(self, cookie: str | None) -> dict[str, Any] | None:
        if not cookie or "." not in cookie:
            return None
        body, _, sig = cookie.rpartition(".")
        if not hmac.compare_digest(sig, self._sign(body.encode())):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(payload, dict) or payload.get("iat", 0) < time.time() - MAX_AGE:
            return None
        return payload


def cookie_header(value: str, secure: bool = False) -> bytes:
    flags = f"; Path=/; Max-Age={MAX_AGE}; HttpOnly; SameSite=Strict" + ("; Secure" if secure
                                                                           else "")
    return f"{COOKIE}={value}{flags}".encode("latin-1")


def _cookies(headers: dict[bytes, bytes]) -> dict[str, str]:
    out = {}
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


def _same_origin(headers: dict[bytes, bytes]) -> bool:
    origin = headers.get(b"origin")
    if not origin:  # same-origin GETs and non-browser clients send none
        return True
    host = headers.get(b"host", b"").decode("latin-1")
    return origin.decode("latin-1").split("://", 1)[-1] == host


class StudioGate:
    """ASGI middleware: sessions, sign-in redirects, CSRF checks, the bearer header.

    Studio pages skip serve's request recording (their page loads, polls and hour-long event
    streams are not API traffic, and would skew ``tunesmith monitor``); the gate has checked
    them itself and applies the same body-size limits (uploads: ``max_upload_bytes``)."""

    def __init__(self, app: ASGIApp, sessions: Sessions, api_key: str | None,
                 max_body_bytes: int = 1 << 20, max_upload_bytes: int = 512 << 20) -> None:
        self.app, self.sessions, self.api_key = app, sessions, api_key
        self.limits = (max_body_bytes, max_upload_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        headers = dict(scope.get("headers") or [])
        studio = path == "/studio" or path.startswith("/studio/")
        if not studio and (b"authorization" in headers or not self.api_key):
            await self.app(scope, receive, send)  # API clients: serve's guard decides
            return
        session = self.sessions.read(_cookies(headers).get(COOKIE))
        new_cookie = None
        if session is None and studio:
            session, new_cookie = self.sessions.issue(authed=not self.api_key)
        authed = session is not None and (session.get("auth") or not self.api_key)
        is_open = any(path.startswith(p) for p in OPEN)
        if not studio:  # /v1 etc. with the session cookie standing in for the key
            if not authed or not self._csrf_ok(method, headers, session):
                await self.app(scope, receive, send)  # the guard answers 401
                return
        elif not is_open and not authed:
            await _redirect_to_login(send, path, scope.get("query_string", b""), new_cookie)
            return
        elif path != "/studio/login" and not self._csrf_ok(method, headers, session,
                                                           fresh=new_cookie is not None):
            await _forbidden(send)
            return
        elif path == "/studio/login" and not _same_origin(headers):
            await _forbidden(send)
            return
        scope = dict(scope)
        scope.setdefault("state", {})
        scope["state"] = {**scope["state"], "studio_session": session}
        send = _with_cookie(send, new_cookie)
        if studio and isinstance(self.app, GuardAndRecord):  # checked here: skip the guard
            limit = self.limits[1] if path == UPLOAD else self.limits[0]
            bounded = await bounded_receive(scope, receive, send, {}, limit)
            if bounded is not None:
                await self.app.app(scope, bounded, send)
            return
        if self.api_key and authed:  # /v1 with the session cookie: the guard wants the key
            scope["headers"] = [*(h for h in scope.get("headers") or []
                                  if h[0] != b"authorization"),
                                (b"authorization", f"Bearer {self.api_key}".encode())]
        await self.app(scope, receive, send)

    @staticmethod
    def _csrf_ok(method: str, headers: dict[bytes, bytes], session: dict[str, Any] | None,
                 fresh: bool = False) -> bool:
        if method in SAFE_METHODS:
            return True
        if fresh or session is None or not _same_origin(headers):
            return False
        token = headers.get(CSRF_HEADER, b"").decode("latin-1")
        return bool(token) and hmac.compare_digest(token, str(session.get("csrf", "")))


def _with_cookie(send: Send, cookie: str | None) -> Send:
    if cookie is None:
        return send

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and not any(
                k == b"set-cookie" and v.startswith(COOKIE.encode() + b"=")
                for k, v in message.get("headers", [])):  # sign-in sets its own
            message = {**message, "headers": [*message.get("headers", []),
                                              (b"set-cookie", cookie_header(cookie))]}
        await send(message)
    return wrapped


async def _redirect_to_login(send: Send, path: str, query: bytes, cookie: str | None) -> None:
    target = path + (("?" + query.decode("latin-1")) if query else "")
    headers = [(b"location", f"/studio/login?next={quote(target, safe='')}".encode()),
               (b"content-length", b"0")]
    if cookie:
        headers.append((b"set-cookie", cookie_header(cookie)))
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _forbidden(send: Send) -> None:
    body = (b"<!doctype html><title>Refused</title><p>This request was refused: it did not "
            b"carry this page's CSRF token (or came from another site). Reload the studio page "
            b"and try again.</p>")
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
