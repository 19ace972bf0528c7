"""Models: what this server serves under which name, and the two ways a trained model moves
on — ``tunesmith export`` (merged, int8 or GGUF) and ``tunesmith promote`` (serve it under a
name only if its evaluation is not worse) — each run as its CLI command, with its result."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.studio import tasks
from tunesmith.studio.catalog import servable_runs, served_models
from tunesmith.studio.datasets import dataset_paths, resolve_dataset
from tunesmith.studio.render import StudioRoute, error_parts, fragment, go, page

router = APIRouter(prefix="/studio", route_class=StudioRoute, include_in_schema=False)
FORMATS = {"hf": ("none", "int8", "f16", "bf16"),
           "gguf": ("f16", "f32", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")}
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def _data_dir(request: Request) -> Path:
    return Path(request.app.state.settings.data_dir)


@router.get("/models")
async def models_page(request: Request) -> HTMLResponse:
    data_dir = _data_dir(request)
    return page(request, "models.html", title="Models", active="models",
                models=await run_in_threadpool(served_models, request),
                runs=await run_in_threadpool(servable_runs, request), formats=FORMATS,
                datasets=[str(p) for p in dataset_paths(data_dir)],
                done=await run_in_threadpool(tasks.list_tasks, data_dir,
                                             ("export", "promote")))


def export_argv(data_dir: Path, form: Any) -> list[str]:
    model = _run_dir_value(form.get("model"))
    fmt = str(form.get("format") or "hf")
    if fmt not in FORMATS:
        raise UsageError("unknown format", where="format", got=fmt, fix="hf or gguf")
    quant = str(form.get("quantize") or FORMATS[fmt][0])
    if quant not in FORMATS[fmt]:
        raise UsageError(f"{fmt} exports cannot be quantized that way", where="quantize",
                         got=quant, fix=f"use one of {', '.join(FORMATS[fmt])}")
    out = str(form.get("output") or "").strip() or str(
        data_dir / "exports" / f"{_SLUG.sub('-', Path(model).name)}-{fmt}-{quant}")
    argv = ["export", model, "-o", out, "--format", fmt, "--quantize", quant, "--overwrite"]
    if form.get("merge") == "true":
        argv.append("--merge")
    return argv


def _run_dir_value(value: Any) -> str:
    text = str(value or "").strip()
    if not text:
        raise UsageError("no model chosen", where="model", fix="pick a run with a final/ model")
    return text


@router.post("/models/export")
async def start_export(request: Request) -> Response:
    form = await request.form()
    try:
        argv = export_argv(_data_dir(request), form)
    except TunesmithError as exc:
        return fragment("error_block.html", error=error_parts(exc))
    task_id = await run_in_threadpool(tasks.start_task, _data_dir(request), "export", argv)
    return go(request, f"/studio/tasks/{task_id}")


@router.post("/models/promote")
async def start_promote(request: Request) -> Response:
    form = await request.form()
    data_dir = _data_dir(request)
    try:
        candidate = _run_dir_value(form.get("candidate"))
        over = str(form.get("over") or "").strip()
        if not over:
            raise UsageError("no served model to replace", where="over",
                             fix="pick the served name the candidate should take over")
        eval_file = str(resolve_dataset(data_dir, str(form.get("eval") or "").strip()
                                        or "(none)"))
        argv = ["promote", candidate, "--over", over, "--eval", eval_file, "--data-dir",
                str(data_dir)]
        limit = str(form.get("limit") or "").strip()
        if limit:
            if not limit.isdigit():
                raise UsageError("first N rows must be a whole number", where="limit",
                                 got=limit, fix="e.g. 100, or leave it empty for all")
            argv += ["--limit", limit]
    except TunesmithError as exc:
        return fragment("error_block.html", error=error_parts(exc))
    task_id = await run_in_threadpool(tasks.start_task, data_dir, "promote", argv)
    return go(request, f"/studio/tasks/{task_id}")
