"""Annotation queues: create one (a data file uploaded or on the server, ``analyze``'s
relabel queue, or the served completions rated down), annotators and their keys, progress, agreement, and
the export of a new dataset version. The labelling screen itself is routes_review.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import UploadFile

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.humaneval import people, queues
from tunesmith.humaneval.export import export_queue
from tunesmith.humaneval.models import Campaign, Queue
from tunesmith.serve.feedback.export import collect
from tunesmith.studio.datasets import store_upload
from tunesmith.studio.render import StudioRoute, error_parts, fragment, go, page

router = APIRouter(prefix="/studio/annotate", route_class=StudioRoute, include_in_schema=False)


def _db(request: Request) -> Any:
    return request.app.state.db


def queue_rows(db: Any) -> list[dict[str, Any]]:
    """Each queue with its progress (for the overview)."""
    out = []
    for name in people.all_names(db, Queue):
        q = queues.get_queue(db, name)
        out.append({"name": name, "task": q.task, "source": q.source, **queues.progress(db, q)})
    return out


def revoke_in(db: Any, scope: str, scope_id: int, person_id: int) -> None:
    """Revoke a key of this campaign or queue only."""
    if not any(p.id == person_id for p in people.people(db, scope, scope_id)):
        raise UsageError(f"no such person in this {scope}", got=person_id,
                         fix="pick one from the list")
    people.revoke(db, person_id)


def _build(request: Request, form: Any) -> str:
    db, name = _db(request), str(form.get("name") or "").strip()
    source, path = str(form.get("source") or "data"), str(form.get("path") or "").strip()
    labels = [x.strip() for x in str(form.get("labels") or "").split(",") if x.strip()]
    try:
        overlap = int(str(form.get("overlap") or "1"))
    except ValueError:
        raise UsageError("annotators per row must be a whole number", where="overlap",
                         got=form.get("overlap"), fix="1, or 2+ for agreement") from None
    if source == "feedback":
        inp = queues.from_feedback(collect(db))
    else:
        if not path:
            raise UsageError("give the file's path on the server", where="path",
                             fix="a JSONL/CSV/Parquet file, or analyze's errors.jsonl")
        file = Path(path).expanduser()
        inp = queues.from_relabel(file) if source == "relabel" else queues.from_file(
            file, str(form.get("task") or "") or None,
            include_labelled=form.get("all") == "true")
    model = str(form.get("model") or "").strip() or None
    if model:
        queues.suggest(inp, model)
    queues.create_queue(db, name, inp, labels=labels or None, overlap=overlap,
                        order=str(form.get("order") or "file"), model=model)
    return name


@router.post("/create")
async def create(request: Request) -> Response:
    form = await request.form(max_files=1)
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    upload = form.get("upload")
    try:
        if isinstance(upload, UploadFile) and upload.filename:
            # kept with the studio's datasets (its rows read first); the queue's source
            fields["path"] = str(await run_in_threadpool(
                store_upload, Path(request.app.state.settings.data_dir), upload.filename,
                upload.file))
        name = await run_in_threadpool(_build, request, fields)
    except TunesmithError as exc:
        return fragment("error_block.html", error=error_parts(exc))
    finally:
        if isinstance(upload, UploadFile):
            await upload.close()
    return go(request, f"/studio/annotate/{name}")


def _detail(request: Request, name: str) -> dict[str, Any]:
    db = _db(request)
    q = queues.get_queue(db, name)
    return {"queue": q, "progress": queues.progress(db, q), "agreement": queues.agreement(db, q),
            "versions": _versions(request, name)}


def _out_dir(request: Request, name: str) -> Path:
    return Path(request.app.state.settings.data_dir) / "annotations" / name


def _versions(request: Request, name: str) -> list[Path]:
    found = [(int(m.group(1)), p) for p in _out_dir(request, name).glob("v*.jsonl")
             if (m := re.fullmatch(r"v(\d+)\.jsonl", p.name))]
    return [p for _, p in sorted(found)]


@router.get("/{name}")
async def detail(request: Request, name: str) -> HTMLResponse:
    ctx = await run_in_threadpool(_detail, request, name)
    cli = (f"tunesmith annotate export {shlex.quote(name)} -o {shlex.quote(name)}-v2.jsonl "
           f"--data-dir {shlex.quote(str(request.app.state.settings.data_dir))}")
    return page(request, "humaneval/queue.html", title=name, active="humaneval", cli=cli, **ctx)


@router.post("/{name}/annotators")
async def add_annotator(request: Request, name: str) -> Response:
    form = await request.form()
    return await new_key(request, "queue", name, str(form.get("annotator") or ""))


async def new_key(request: Request, scope: str, name: str, who: str) -> Response:
    """A new reviewer or annotator with a key, shown once."""
    def add() -> tuple[str, str]:
        db = _db(request)
        target = people.find_named(db, Queue if scope == "queue" else Campaign, name, scope,
                                   f"tunesmith {'annotate' if scope == 'queue' else 'humaneval'}"
                                   " create")
        person, key = people.add_person(db, scope, target.id, who)
        return person.name, key or ""

    try:
        name_, key = await run_in_threadpool(add)
    except TunesmithError as exc:
        return fragment("error_block.html", error=error_parts(exc))
    return fragment("humaneval/new_key.html", who=name_, key=key,
                    where=f"{request.base_url}studio/review/sign-in")


@router.post("/{name}/annotators/{person_id}/revoke")
async def revoke(request: Request, name: str, person_id: int) -> Response:
    q = await run_in_threadpool(queues.get_queue, _db(request), name)
    await run_in_threadpool(revoke_in, _db(request), "queue", q.id, person_id)
    return go(request, f"/studio/annotate/{name}")


@router.post("/{name}/export")
async def export(request: Request, name: str) -> Response:
    """A new version under <data_dir>/annotations/NAME/vN.jsonl (never the source)."""
    def write() -> dict[str, Any]:
        out = _out_dir(request, name)
        out.mkdir(parents=True, exist_ok=True)
        return export_queue(_db(request), name, out / f"v{len(_versions(request, name)) + 1}"
                            ".jsonl")

    try:
        manifest = await run_in_threadpool(write)
    except TunesmithError as exc:
        return fragment("error_block.html", error=error_parts(exc))
    return fragment("humaneval/exported.html", m=manifest,
                    cli=f"tunesmith data prepare {shlex.quote(manifest['output'])}")
