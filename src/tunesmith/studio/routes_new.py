"""New run: the form (from the config schema), checked on every change, launched as a job.

The form's state is kept on the server (``<data_dir>/studio/draft.json``, written on every
check), so a refresh, a closed tab or a restart gives the same form back, and two tabs see
the same draft. Launching queues the validated config as a job (``launch.submit_config``)
and goes to its run page. "Check fit and time" runs ``tunesmith plan`` on the validated config
as a background studio task (``studio/tasks.py``) and shows its verdict and breakdown beside
the form once it ends.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from tunesmith.errors import ConfigError, UsageError
from tunesmith.io import atomic_write_text
from tunesmith.models.registry import EMBEDDED
from tunesmith.studio import form, launch, tasks
from tunesmith.studio.datasets import dataset_paths
from tunesmith.studio.drafts import clear_draft, read_draft, write_draft
from tunesmith.studio.render import StudioRoute, fragment, go, page
from tunesmith.studio.runs import find_run, list_runs

router = APIRouter(prefix="/studio", route_class=StudioRoute, include_in_schema=False)
SKIP_CONFIG_DIRS = ("accelerate", "data")  # launcher and `data prepare` configs


def shipped_configs(configs_dirs: list[Path]) -> list[str]:
    out = []
    for root in configs_dirs:
        for path in sorted(root.rglob("*.yaml")):
            if path.relative_to(root).parts[0] not in SKIP_CONFIG_DIRS:
                out.append(_shown(path))
    return out


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _data_dir(request: Request) -> Path:
    return Path(request.app.state.settings.data_dir)


def load_start(request: Request, start: str | None) -> tuple[str | None, dict[str, Any]]:
    """(path shown in the command, raw config) of a starting point; ConfigError if unknown."""
    if not start:
        return None, {}
    state = request.app.state
    if start.startswith("run:"):
        info = find_run(state.db, Path(state.settings.data_dir), state.studio.runs_dirs,
                        start[4:])
        if info is None or info.dir is None or not (info.dir / "config.yaml").is_file():
            raise UsageError("that run has no config.yaml to start from", where=start,
                             fix="pick another run or a shipped config")
        path = info.dir / "config.yaml"
    else:
        if start not in shipped_configs(state.studio.configs_dirs):
            raise UsageError("not one of the shipped configs", where="start", got=start,
                             fix="pick a config from the list")
        path = Path(start)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError("config must be a mapping of sections", where=str(path))
    return _shown(path), raw


def _choices(request: Request) -> dict[str, Any]:
    state = request.app.state
    data_dir = Path(state.settings.data_dir)
    runs = [r for r in list_runs(state.db, data_dir, state.studio.runs_dirs)
            if r.dir is not None and (r.dir / "config.yaml").is_file()]
    served = list(getattr(state.pool, "handles", {}) or {})
    return {"configs": shipped_configs(state.studio.configs_dirs), "runs": runs[:50],
            "datasets": [str(p) for p in dataset_paths(data_dir)],
            "models": sorted(set(EMBEDDED) | set(served))}


def _render(request: Request, start: str | None, values: dict[str, str],
            launched_error: Any = None, full: bool = True) -> HTMLResponse:
    shown, raw = load_start(request, start)
    result = form.evaluate(shown, raw, values)
    base = form.start_values(raw)
    current = {**base, **{k: v for k, v in values.items() if k in form.FIELDS}}
    task = (result.raw or raw).get("task", "sft") if isinstance(result.raw or raw, dict) else "sft"
    ctx = dict(sections=form.SECTIONS, values=current, base=base, result=result,
               start=start or "", shown=shown, task=task, open_sections=form.OPEN_SECTIONS,
               task_section=form.TASK_SECTIONS.get(task), launch_error=launched_error,
               choices=_choices(request))
    if full:
        return page(request, "new.html", title="New run", active="new", **ctx)
    return fragment("new_check.html", fields=list(form.FIELDS), **ctx)


def _save_draft(request: Request, start: str | None, values: dict[str, str]) -> None:
    _, raw = load_start(request, start)
    base = form.start_values(raw)
    changed = {k: v for k, v in values.items() if k in base and v.strip() != base[k]}
    write_draft(_data_dir(request), start, changed)


@router.get("/new")
async def new_run(request: Request, start: str | None = None) -> HTMLResponse:
    if start is None:  # the draft (as it was left, in any tab, before any restart)
        start, values = await run_in_threadpool(read_draft, _data_dir(request))
    else:
        values = await run_in_threadpool(_job_label, request, start)
        await run_in_threadpool(_save_draft, request, start, values)
    return await run_in_threadpool(_render, request, start, values)


def _job_label(request: Request, start: str) -> dict[str, str]:
    """Starting from a job's run: its config names the run by the job id and writes under the
    server's jobs folder; the form starts with the run's own name and ``runs`` instead (as
    overrides, so the command shown still says exactly what it does)."""
    if not start.startswith("run:ftjob-"):
        return {}
    state = request.app.state
    info = find_run(state.db, Path(state.settings.data_dir), state.studio.runs_dirs, start[4:])
    if info is None:
        return {}
    return {"name": form.yaml_text(info.name), "output.dir": "runs"}


async def _form_values(request: Request) -> tuple[str | None, dict[str, str]]:
    data = await request.form()
    start = str(data.get("_start") or "") or None
    values = {k: str(v) for k, v in data.items() if k in form.FIELDS}
    return start, values


@router.post("/new/check")
async def check(request: Request) -> HTMLResponse:
    start, values = await _form_values(request)
    await run_in_threadpool(_save_draft, request, start, values)
    return await run_in_threadpool(_render, request, start, values, None, False)


@router.post("/new/launch")
async def launch_run(request: Request) -> Response:
    start, values = await _form_values(request)
    await run_in_threadpool(_save_draft, request, start, values)
    shown, raw = await run_in_threadpool(load_start, request, start)
    result = await run_in_threadpool(form.evaluate, shown, raw, values)
    if not result.ok or result.raw is None:
        return await run_in_threadpool(_render, request, start, values, None, False)
    state = request.app.state
    job_id, _ = await run_in_threadpool(launch.submit_config, state.db,
                                        Path(state.settings.data_dir), result.raw)
    await run_in_threadpool(clear_draft, _data_dir(request))
    return go(request, f"/studio/runs/{job_id}")


PLAN_PARTS = ("baseline", "weights", "other", "gradients", "optimizer", "activations", "logits",
              "peak", "available")


def start_plan(data_dir: Path, resolved_yaml: str, steps: int = 4) -> str:
    """``tunesmith plan`` of the form's resolved config, as a studio task; returns its id."""
    folder = data_dir / "studio" / "plan-configs"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}.yaml"
    atomic_write_text(config, resolved_yaml)
    return tasks.start_task(data_dir, "plan", ["plan", str(config), "--steps", str(steps),
                                               "-o", tasks.OUT])


def plan_view(data_dir: Path, task_id: str) -> dict[str, Any]:
    """What the plan box shows for a plan task: its state, and once done the plan."""
    task = tasks.read_task(data_dir, task_id)
    if task is None or task.info.get("kind") != "plan":
        raise UsageError("no such plan check", where=task_id, fix="press Check fit and time")
    result = None
    if task.state == "succeeded" or task.exit_code == 1:  # 1: ran, and it does not fit
        try:
            result = json.loads((task.dir / "out" / "plan.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = None
    return {"task": task, "plan": result, "parts": PLAN_PARTS, "gib": 1 << 30,
            "log": task.log_tail(8) if task.state == "running" else ""}


@router.post("/new/plan")
async def check_plan(request: Request) -> HTMLResponse:
    start, values = await _form_values(request)
    await run_in_threadpool(_save_draft, request, start, values)
    shown, raw = await run_in_threadpool(load_start, request, start)
    result = await run_in_threadpool(form.evaluate, shown, raw, values)
    if not result.ok or result.yaml is None:
        return fragment("new_plan.html", problem="fix the problems in the form first: the plan "
                        "runs a few real steps of the validated config")
    task_id = await run_in_threadpool(start_plan, _data_dir(request), result.yaml)
    return fragment("new_plan.html", **await run_in_threadpool(plan_view, _data_dir(request),
                                                               task_id))


@router.get("/new/plan/{task_id}")
async def plan_state(request: Request, task_id: str) -> HTMLResponse:
    """Polled by the plan box while the calibration runs; then the verdict and breakdown."""
    return fragment("new_plan.html", **await run_in_threadpool(plan_view, _data_dir(request),
                                                               task_id))
