"""Human evaluation: campaigns (create one, reviewers and their keys, progress, results,
exports). The rating screen itself is routes_review.py; the form's checks are
campaign_form.py.

Everything here is behind the studio's sign-in (the server's API key); a reviewer key opens
none of it. A campaign whose answers are generated is created by a studio task running
``tunesmith humaneval create NAME --prompts FILE --model ...`` (each model loads once, in
its own process; the page shows its progress); one imported from a ``tunesmith eval``
directory is created at once.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import UploadFile

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.humaneval import campaigns, people
from tunesmith.humaneval.export import FORMATS, campaign_rows
from tunesmith.humaneval.models import Campaign
from tunesmith.models.registry import EMBEDDED
from tunesmith.studio import campaign_form as cf
from tunesmith.studio import tasks
from tunesmith.studio.catalog import servable_runs, served_sources
from tunesmith.studio.datasets import dataset_paths, store_upload
from tunesmith.studio.render import StudioRoute, fragment, go, page
from tunesmith.studio.routes_annotate import new_key, queue_rows, revoke_in

router = APIRouter(prefix="/studio/humaneval", route_class=StudioRoute,
                   include_in_schema=False)
TASK_KIND = "humaneval"  # studio tasks that create a campaign


def _db(request: Request) -> Any:
    return request.app.state.db


def _overview(request: Request) -> dict[str, Any]:
    db = _db(request)
    rows = []
    for name in people.all_names(db, Campaign):
        camp = campaigns.get_campaign(db, name)
        rows.append({"name": name, "models": camp.model_names(), "overlap": camp.overlap,
                     **campaigns.progress(db, camp)})
    return {"campaigns": rows, "queues": queue_rows(db)}


@router.get("")
async def overview(request: Request) -> HTMLResponse:
    ctx = await run_in_threadpool(_overview, request)
    creating = await run_in_threadpool(tasks.list_tasks, _data_dir(request), (TASK_KIND,))
    return page(request, "humaneval/overview.html", title="Human evaluation", active="humaneval",
                creating=creating[:10], **ctx)


def _data_dir(request: Request) -> Path:
    return Path(request.app.state.settings.data_dir)


def _choices(request: Request) -> dict[str, Any]:
    """What the form offers: runs with a model, served models, finished evaluations."""
    evals = [{"dir": str(t.dir / "out"), "command": t.command}
             for t in tasks.list_tasks(_data_dir(request), ("eval",))
             if t.state == "succeeded"]
    return {"runs": servable_runs(request), "served": served_sources(request),
            "embedded": sorted(EMBEDDED), "evals": evals,
            "datasets": [p.name for p in dataset_paths(_data_dir(request))]}


def _form_page(request: Request, plan: cf.Plan | None, picked: list[str], status: int = 200
               ) -> HTMLResponse:
    ctx = {"values": plan.values if plan else dict(cf.DEFAULTS),
           "problems": plan.problems if plan else {}, "picked": picked,
           **_choices(request)}
    if request.headers.get("hx-request"):
        return fragment("humaneval/create_form.html", status=status, **ctx)
    return page(request, "humaneval/create.html", status=status, title="New campaign",
                active="humaneval", **ctx)


@router.get("/create")
async def create_page(request: Request) -> HTMLResponse:
    return await run_in_threadpool(_form_page, request, None, [])


def _store(request: Request, upload: UploadFile) -> Path:
    return store_upload(_data_dir(request), upload.filename or "", upload.file)


@router.post("/create")
async def create(request: Request) -> Response:
    """Check every field; then import an eval directory at once, or start the generation as
    a task (``tunesmith humaneval create ...`` in its own process) and show its progress."""
    form = await request.form(max_files=1)
    values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    picked = [str(m) for m in form.getlist("model") if isinstance(m, str)]
    upload = form.get("prompt_upload")
    upload_error = None
    if isinstance(upload, UploadFile) and upload.filename:
        try:
            values["prompts"] = (await run_in_threadpool(_store, request, upload)).name
        except TunesmithError as exc:
            upload_error = exc
        finally:
            await upload.close()
    served = {m["source"] for m in await run_in_threadpool(served_sources, request)}
    plan = await run_in_threadpool(cf.check_form, _db(request), _data_dir(request), values,
                                   picked, served)
    if upload_error is not None:
        plan.problems["prompts"] = []
        plan.problem("prompts", upload_error)
    if plan.problems:
        return await run_in_threadpool(_form_page, request, plan, picked)
    name = plan.values["name"]
    if plan.eval_dir is not None:
        try:
            await run_in_threadpool(_import, request, plan)
        except TunesmithError as exc:  # lost a race for the name: beside the name
            plan.problem("name", exc)
            return await run_in_threadpool(_form_page, request, plan, picked)
        return go(request, f"/studio/humaneval/{name}")
    argv = plan.argv(_data_dir(request), request.app.state.settings.db_url)
    task_id = await run_in_threadpool(tasks.start_task, _data_dir(request), TASK_KIND, argv,
                                      {"campaign": name})
    return go(request, f"/studio/humaneval/tasks/{task_id}")


def _import(request: Request, plan: cf.Plan) -> None:
    db = _db(request)
    camp = campaigns.create_campaign(db, plan.values["name"], plan.numbers["answers"],
                                     overlap=plan.numbers["overlap"],
                                     seed=plan.numbers["seed"])
    for who in plan.reviewers:
        people.add_person(db, "campaign", camp.id, who, with_key=False)


def _task(request: Request, task_id: str) -> tasks.Task:
    task = tasks.read_task(_data_dir(request), task_id)
    if task is None or task.info.get("kind") != TASK_KIND:
        raise UsageError("no such campaign being created", where=task_id,
                         fix="pick one from Human evaluation")
    return task


@router.get("/tasks/{task_id}")
async def task_page(request: Request, task_id: str) -> HTMLResponse:
    """A campaign being created: progress of the answers, then a link to the campaign (or
    the command's own error block)."""
    task = await run_in_threadpool(_task, request, task_id)
    log = task.log_tail(200)
    return page(request, "humaneval/creating.html", title=f"Creating {task.info['campaign']}",
                active="humaneval", task=task, log=log, progress=cf.task_progress(log))


@router.get("/tasks/{task_id}/state")
async def task_state(request: Request, task_id: str) -> Response:
    """Polled while the answers are generated; a finished task reloads the page."""
    task = await run_in_threadpool(_task, request, task_id)
    if task.state != "running":
        return Response(status_code=200, headers={"HX-Refresh": "true"})
    log = task.log_tail(200)
    return fragment("humaneval/creating_progress.html", task=task, log=log,
                    progress=cf.task_progress(log))


def _detail(request: Request, name: str) -> dict[str, Any]:
    db = _db(request)
    camp = campaigns.get_campaign(db, name)
    return {"camp": camp, "progress": campaigns.progress(db, camp),
            "results": campaigns.results(db, camp), "formats": FORMATS,
            "models": json.loads(camp.models)}


@router.get("/{name}")
async def detail(request: Request, name: str) -> HTMLResponse:
    ctx = await run_in_threadpool(_detail, request, name)
    data_dir = shlex.quote(str(request.app.state.settings.data_dir))
    cli = {f: f"tunesmith feedback export --campaign {shlex.quote(name)} --format {f} -o "
              f"{shlex.quote(name)}-{f}.jsonl --data-dir {data_dir}" for f in FORMATS}
    return page(request, "humaneval/campaign.html", title=name, active="humaneval", cli=cli,
                new_key=None, **ctx)


@router.post("/{name}/reviewers")
async def add_reviewer(request: Request, name: str) -> Response:
    form = await request.form()
    return await new_key(request, "campaign", name, str(form.get("reviewer") or ""))


@router.post("/{name}/reviewers/{person_id}/revoke")
async def revoke(request: Request, name: str, person_id: int) -> Response:
    camp = await run_in_threadpool(campaigns.get_campaign, _db(request), name)
    await run_in_threadpool(revoke_in, _db(request), "campaign", camp.id, person_id)
    return go(request, f"/studio/humaneval/{name}")


@router.get("/{name}/export.jsonl")
async def export(request: Request, name: str, format: str = "dpo") -> Response:
    rows = await run_in_threadpool(campaign_rows, _db(request), name, format)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return Response(body, media_type="application/x-ndjson", headers={
        "content-disposition": f'attachment; filename="{name}-{format}.jsonl"'})
