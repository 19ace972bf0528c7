"""Playground: chat with served models, two side by side on the same prompt and settings.

The page is a client of ``/v1/chat/completions`` (streamed, ``stream: true``): the browser
calls the OpenAI-compatible route itself, so what it sees is what any client of the server
gets. A run directory (a CLI run or a job) is served by name first (``tunesmith serve
NAME=RUN``, done here in-process). The conversation is saved on the server after every
answer (``<data_dir>/studio/playground.json``), so a refresh shows it again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.io import atomic_write_text
from tunesmith.studio.catalog import servable_runs, served_models
from tunesmith.studio.render import StudioRoute, error_parts, fragment, go, page
from tunesmith.studio.runs import find_run

router = APIRouter(prefix="/studio", route_class=StudioRoute, include_in_schema=False)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
MAX_SAVED = 200_000  # bytes of transcript kept


def _saved_path(request: Request) -> Path:
    return Path(request.app.state.settings.data_dir) / "studio" / "playground.json"


@router.get("/play")
async def play_page(request: Request) -> HTMLResponse:
    models = await run_in_threadpool(served_models, request)
    runs = await run_in_threadpool(servable_runs, request)
    try:
        saved = json.loads(_saved_path(request).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    return page(request, "play.html", title="Playground", active="play", models=models,
                runs=runs, saved=saved, error=None)


@router.post("/play/serve")
async def serve_run(request: Request) -> Response:
    """Serve a run directory under a name (what ``tunesmith serve NAME=RUN`` does)."""
    form = await request.form()
    key, name = str(form.get("run") or ""), str(form.get("name") or "").strip()
    state = request.app.state
    info = await run_in_threadpool(find_run, state.db, Path(state.settings.data_dir),
                                   state.studio.runs_dirs, key)
    try:
        if info is None or info.dir is None or not (info.dir / "final").is_dir():
            raise UsageError("that run has no final/ model to serve", where=key,
                             fix="pick a run that completed (or succeeded)")
        name = name or info.name
        if not _NAME.match(name):
            raise UsageError("not a usable model name", where="name", got=name,
                             fix="letters, digits, '.', '_', ':' and '-' (at most 100)")
        if state.pool.get(name) is None:
            await run_in_threadpool(state.pool.add, name, str(info.dir))
    except TunesmithError as exc:
        return fragment("error_block.html", error=error_parts(exc))
    return go(request, f"/studio/play?served={name}")


@router.post("/play/save")
async def save(request: Request) -> Response:
    body = await request.body()
    if len(body) > MAX_SAVED:
        body = body[-MAX_SAVED:]
    try:
        json.loads(body)
    except ValueError:
        return Response(status_code=400)
    await run_in_threadpool(atomic_write_text, _saved_path(request), body.decode("utf-8"))
    return Response(status_code=204)
