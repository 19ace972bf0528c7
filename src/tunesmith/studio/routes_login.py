"""Signing in with the API key (once per browser), signing out, and unknown studio URLs."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tunesmith.errors import UsageError
from tunesmith.studio.auth import COOKIE, cookie_header
from tunesmith.studio.render import StudioRoute, error_page, page

router = APIRouter(prefix="/studio", route_class=StudioRoute, include_in_schema=False)
fallback = APIRouter(prefix="/studio", route_class=StudioRoute, include_in_schema=False)


def _next(target: str | None) -> str:
    """Only a studio path (never another site) is a place to go back to."""
    if target and target.startswith("/studio") and not target.startswith("//"):
        return target
    return "/studio/runs"


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return page(request, "login.html", title="Sign in", next=_next(next), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    key, target = str(form.get("key") or ""), _next(str(form.get("next") or ""))
    api_key = request.app.state.settings.api_key
    if api_key and not hmac.compare_digest(key.encode(), api_key.encode()):
        exc = UsageError("that is not this server's API key", where="API key",
                         fix="use the key given to `tunesmith studio --api-key` (or "
                         "TUNESMITH_API_KEY)")
        return page(request, "login.html", status=401, title="Sign in", next=target,
                    error=exc)
    _, cookie = request.app.state.studio_sessions.issue(authed=True)
    resp = RedirectResponse(target, status_code=303)
    resp.raw_headers.append((b"set-cookie", cookie_header(cookie)))
    return resp


@router.post("/logout")
async def logout(request: Request) -> Response:
    resp = RedirectResponse("/studio/login", status_code=303)
    resp.raw_headers.append((b"set-cookie", f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; "
                             "SameSite=Strict".encode()))
    return resp


@fallback.get("/{rest:path}")
async def not_found(request: Request, rest: str) -> HTMLResponse:
    exc = UsageError("there is no studio page at this address", where=f"/studio/{rest}",
                     fix="use the navigation bar above")
    return error_page(request, exc, status=404, title="Not found")
