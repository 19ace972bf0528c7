"""Evaluate: run ``tunesmith eval`` on one or more models or runs and a test file, then show
its metrics, the significance of each difference and its HTML report inside the studio.
The task pages (``/studio/tasks/{id}``) also serve the Models screen's exports and
promotions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, Response

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.studio import tasks
from tunesmith.studio.catalog import servable_runs, served_sources
from tunesmith.studio.datasets import dataset_paths, resolve_dataset
from tunesmith.studio.render import StudioRoute, error_page, error_parts, fragment, go, page

router = APIRouter(prefix="/studio", route_class=StudioRoute, include_in_schema=False)
EVAL_TASKS = ("auto", "generation", "lm", "classification", "zero-shot")


def _data_dir(request: Request) -> Path:
    return Path(request.app.state.settings.data_dir)


@router.get("/eval")
async def eval_page(request: Request) -> HTMLResponse:
    data_dir = _data_dir(request)
    runs = await run_in_threadpool(servable_runs, request)
    models = await run_in_threadpool(served_sources, request)
    return page(request, "eval.html", title="Evaluate", active="eval", runs=runs,
                models=models, datasets=[str(p) for p in dataset_paths(data_dir)],
                evals=await run_in_threadpool(tasks.list_tasks, data_dir, ("eval",)),
                eval_tasks=EVAL_TASKS)


def eval_argv(data_dir: Path, form: Any) -> list[str]:
    """The ``tunesmith eval`` command line for the form; UsageError names a bad input."""
    models = [str(m) for m in form.getlist("model") if str(m).strip()]
    models += [m.strip() for m in str(form.get("extra_models") or "").split(",") if m.strip()]
    if not models:
        raise UsageError("no model to evaluate", where="models",
                         fix="tick at least one run, or type a model name or directory")
    data = str(resolve_dataset(data_dir, str(form.get("data") or "").strip() or "(none)"))
    task = str(form.get("task") or "auto")
    if task not in EVAL_TASKS:
        raise UsageError("unknown task", where="task", got=task, fix=", ".join(EVAL_TASKS))
    argv = ["eval", *models, "--data", data, "--task", task, "-o", tasks.OUT]
    for key, flag in (("limit", "--limit"), ("max_new_tokens", "--max-new-tokens")):
        value = str(form.get(key) or "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise UsageError(f"{key.replace('_', ' ')} must be a positive whole number",
                                 where=key, got=value, fix="e.g. 50")
            argv += [flag, value]
    return argv


@router.post("/eval/start")
async def start_eval(request: Request) -> Response:
    form = await request.form()
    data_dir = _data_dir(request)
    try:
        argv = eval_argv(data_dir, form)
    except TunesmithError as exc:
        return fragment("error_block.html", error=error_parts(exc))
    task_id = await run_in_threadpool(tasks.start_task, data_dir, "eval", argv)
    return go(request, f"/studio/tasks/{task_id}")


@router.get("/tasks/{task_id}")
async def task_page(request: Request, task_id: str) -> HTMLResponse:
    task = await run_in_threadpool(tasks.read_task, _data_dir(request), task_id)
    if task is None:
        return error_page(request, UsageError("no such task", where=task_id,
                                              fix="pick one from Evaluate or Models"),
                          status=404, title="Not found")
    summary = _summary(task.dir / "out") if task.state == "succeeded" else None
    return page(request, "task.html", title=task.info.get("kind", "task"),
                active="eval" if task.info.get("kind") == "eval" else "models", task=task,
                summary=summary, log=task.log_tail())


@router.get("/tasks/{task_id}/state")
async def task_state(request: Request, task_id: str) -> Response:
    """Polled by the task page while it runs; a changed state reloads the page."""
    task = await run_in_threadpool(tasks.read_task, _data_dir(request), task_id)
    if task is None or task.state != "running":
        return Response(status_code=200, headers={"HX-Refresh": "true"})
    return HTMLResponse(f"<pre class='log'>{_escape(task.log_tail(30))}</pre>")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _summary(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@router.get("/tasks/{task_id}/files/{name:path}")
async def task_file(request: Request, task_id: str, name: str) -> Response:
    """A file of the task's output (the eval report and its images), nothing outside it."""
    task = await run_in_threadpool(tasks.read_task, _data_dir(request), task_id)
    root = (task.dir / "out").resolve() if task else None
    target = (root / name).resolve() if root else None
    if root is None or target is None or not target.is_relative_to(root) or \
            not target.is_file():
        return error_page(request, UsageError("no such file in this task's output",
                                              where=name), status=404, title="Not found")
    return FileResponse(target)
