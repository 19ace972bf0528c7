"""Runs: the list (jobs and CLI runs), a run's page, its live curves (SSE), cancel, resume.

The page draws what the server has; the event stream ``/studio/runs/{key}/events`` then
sends every ``metrics.jsonl`` row appended since (checked every 0.25 s, so a new point is on
screen well within a second) and the status whenever it changes. The stream's event ids are
row counts: a browser that reconnects (``Last-Event-ID``) gets exactly the rows it missed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from sqlalchemy import select

from tunesmith.errors import UsageError
from tunesmith.serve import paths
from tunesmith.serve.jobs.models import EventRow
from tunesmith.studio import launch
from tunesmith.studio.render import StudioRoute, error_page, fragment, go, page
from tunesmith.studio.runs import (
    CURVES,
    RunInfo,
    curve_points,
    find_run,
    list_runs,
    metrics_rows,
    read_config,
    read_json,
)

router = APIRouter(prefix="/studio", route_class=StudioRoute, include_in_schema=False)
POLL_S = 0.25
PING_S = 15.0


def _ctx(request: Request) -> tuple[Any, Path, list[Path]]:
    app = request.app
    return app.state.db, Path(app.state.settings.data_dir), app.state.studio.runs_dirs


def _run_or_404(request: Request, key: str) -> RunInfo | HTMLResponse:
    db, data_dir, runs_dirs = _ctx(request)
    info = find_run(db, data_dir, runs_dirs, key)
    if info is None:
        return error_page(request, UsageError(
            "no such run", where=key, fix="pick a run from the Runs page"), status=404,
            title="Run not found")
    return info


@router.get("/runs")
async def runs_list(request: Request) -> HTMLResponse:
    db, data_dir, runs_dirs = _ctx(request)
    runs = await run_in_threadpool(list_runs, db, data_dir, runs_dirs)
    return page(request, "runs.html", title="Runs", active="runs", runs=runs,
                runs_dirs=runs_dirs, data_dir=data_dir)


@router.get("/runs/table")
async def runs_table(request: Request) -> HTMLResponse:
    """The list alone, polled by the Runs page every 2 s (status, step, ETA move by)."""
    db, data_dir, runs_dirs = _ctx(request)
    runs = await run_in_threadpool(list_runs, db, data_dir, runs_dirs)
    return fragment("runs_table.html", runs=runs)


@router.get("/runs/{key}")
async def run_page(request: Request, key: str) -> HTMLResponse:
    info = await run_in_threadpool(_run_or_404, request, key)
    if isinstance(info, HTMLResponse):
        return info
    db, data_dir, _ = _ctx(request)
    rows = await run_in_threadpool(metrics_rows, info.dir) if info.dir else []
    details = await run_in_threadpool(_details, db, data_dir, info)
    cfg_data = (read_config(info.dir) if info.dir else {}).get("data") or {}
    has_validation = bool(cfg_data.get("validation") or cfg_data.get("val_split")
                          or cfg_data.get("mixture"))
    return page(request, "run.html", title=info.name, active="runs", run=info,
                curves=CURVES, points=curve_points(rows), count=len(rows),
                has_validation=has_validation, memory_hint=_out_of_memory(info.reason),
                **details)


def _out_of_memory(reason: str | None) -> bool:
    """Whether a failure reads as the machine running out of memory (said in words)."""
    text = (reason or "").lower()
    return any(k in text for k in ("out of memory", "sigkill", "cannot allocate",
                                   "memoryerror", "oom"))


def _details(db: Any, data_dir: Path, info: RunInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"manifest": None, "config_text": None, "log": None, "events": []}
    if info.dir is not None:
        manifest = read_json(info.dir / "manifest.json")
        out["manifest"] = json.dumps(manifest, indent=1) if manifest else None
        try:
            out["config_text"] = (info.dir / "config.yaml").read_text(encoding="utf-8")
        except OSError:
            out["config_text"] = None
    if info.job is not None:
        out["config_text"] = out["config_text"] or (info.job.spec or {}).get(
            "studio", {}).get("yaml")
        log_path = paths.job_run_dir(data_dir, info.job.id).with_suffix(".log")
        try:
            out["log"] = "\n".join(log_path.read_text(encoding="utf-8", errors="replace")
                                   .splitlines()[-200:])
        except OSError:
            out["log"] = None
        with db.session() as s:
            out["events"] = [{"at": e.created_at, "level": e.level, "message": e.message}
                             for e in s.scalars(select(EventRow).where(
                                 EventRow.job_id == info.job.id, EventRow.type != "metrics")
                                 .order_by(EventRow.seq.desc()).limit(50))]
    return out


def _status_of(info: RunInfo) -> dict[str, Any]:
    return {"status": info.status, "step": info.step, "total": info.total,
            "eta_s": info.eta_s, "reason": info.reason, "best": info.best}


@router.get("/runs/{key}/events")
async def run_events(request: Request, key: str) -> Response:
    info = await run_in_threadpool(_run_or_404, request, key)
    if isinstance(info, HTMLResponse):
        return info
    db, data_dir, runs_dirs = _ctx(request)
    last = request.headers.get("last-event-id") or request.query_params.get("since") or "0"
    sent = int(last) if last.isdigit() else 0

    async def stream() -> AsyncIterator[str]:
        nonlocal sent
        status: dict[str, Any] | None = None
        idle = 0.0
        yield "retry: 1000\n\n"
        while not await request.is_disconnected():
            current = await run_in_threadpool(find_run, db, data_dir, runs_dirs, key)
            if current is None:
                break
            rows = await run_in_threadpool(metrics_rows, current.dir) if current.dir else []
            if sent > len(rows):  # the file was rewritten (a resume dropped later steps)
                sent = 0
                yield "event: reset\ndata: {}\n\n"
            if len(rows) > sent:
                yield (f"id: {len(rows)}\nevent: metrics\n"
                       f"data: {json.dumps(curve_points(rows[sent:]))}\n\n")
                sent, idle = len(rows), 0.0
            now_status = _status_of(current)
            if now_status != status:
                status, idle = now_status, 0.0
                yield f"event: status\ndata: {json.dumps(now_status)}\n\n"
            await asyncio.sleep(POLL_S)
            idle += POLL_S
            if idle >= PING_S:
                idle = 0.0
                yield ": ping\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


@router.post("/runs/{key}/cancel")
async def cancel(request: Request, key: str) -> Response:
    db, _, _ = _ctx(request)
    await run_in_threadpool(launch.cancel_job, db, key)
    return go(request, f"/studio/runs/{key}")


@router.post("/runs/{key}/resume")
async def resume(request: Request, key: str) -> Response:
    db, _, _ = _ctx(request)
    await run_in_threadpool(launch.resume_job, db, key)
    return go(request, f"/studio/runs/{key}")
