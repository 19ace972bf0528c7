"""Rendering the studio's pages: one Jinja2 environment, the error block, the route class.

Every studio route answers HTML. A ``TunesmithError`` that a route does not place beside its
cause itself becomes a page with the same what/where/got/fix text as the CLI prints
(``TunesmithError.render()``); any other exception becomes a page saying the server failed
and where its log is — never a stack trace or a blank page.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from tunesmith.errors import TunesmithError

log = logging.getLogger("tunesmith.studio")
NAV = (("runs", "Runs", "/studio/runs"), ("new", "New run", "/studio/new"),
       ("data", "Datasets", "/studio/data"), ("eval", "Evaluate", "/studio/eval"),
       ("play", "Playground", "/studio/play"), ("models", "Models", "/studio/models"),
       ("humaneval", "Human evaluation", "/studio/humaneval"))

env = Environment(loader=PackageLoader("tunesmith.studio", "templates"),
                  autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def _when(ts: float | int | None) -> str:
    if not ts:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _duration(seconds: float | int | None) -> str:
    if seconds is None or seconds < 0:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def script_json(value: Any) -> Markup:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` break-out)."""
    return Markup(json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e"))


env.filters.update(when=_when, duration=_duration, num=_num, shquote=shlex.quote,
                   script_json=script_json)


def error_parts(exc: TunesmithError) -> dict[str, Any]:
    """The fields of the CLI's ``Error:`` block, for the ``error`` macro."""
    got = exc.got if exc.got is None or isinstance(exc.got, str) else repr(exc.got)
    return {"what": exc.what, "where": exc.where, "got": got if got is None or len(got) < 400
            else got[:397] + "...", "fix": exc.fix,
            "problems": list(getattr(exc, "problems", []) or []), "text": exc.render()}


def page(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    """Render ``template`` with the layout's context (navigation, CSRF token)."""
    session = (request.scope.get("state") or {}).get("studio_session") or {}
    settings = request.app.state.settings
    html = env.get_template(template).render(
        request=request, nav=NAV, csrf=session.get("csrf", ""),
        signed_in=bool(settings.api_key), **ctx)
    return HTMLResponse(html, status_code=status)


def fragment(template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    """A partial (htmx swaps it into the page)."""
    return HTMLResponse(env.get_template(template).render(**ctx), status_code=status)


def go(request: Request, url: str) -> Response:
    """After an action: htmx follows ``HX-Redirect``; a plain form gets a 303."""
    if request.headers.get("hx-request"):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def error_page(request: Request, exc: TunesmithError, status: int = 400,
               title: str = "That did not work") -> HTMLResponse:
    return page(request, "error.html", status=status, title=title, error=error_parts(exc))


class StudioRoute(APIRoute):
    """Routes whose failures are pages, not JSON or tracebacks."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except TunesmithError as exc:
                if request.headers.get("hx-request"):
                    return fragment("error_block.html", status=200, error=error_parts(exc))
                return error_page(request, exc)
            except Exception:  # noqa: BLE001 - a bug: logged with its traceback, shown as a page
                log.exception("studio page failed: %s", request.url.path)
                exc = TunesmithError("the server failed to build this page (a bug in tunesmith)",
                                     where=request.url.path, fix="the server's log has the "
                                     "traceback; please report it with the steps that led here")
                if request.headers.get("hx-request"):
                    return fragment("error_block.html", error=error_parts(exc))
                return error_page(request, exc, status=500, title="Server error")
        return guarded


def compile_templates() -> None:
    """Compile every template once at start-up, not on the first request of each page."""
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)


def static_dir() -> Path:
    return Path(__file__).parent / "static"
