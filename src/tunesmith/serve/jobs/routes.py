"""The OpenAI-compatible fine-tuning API: ``/v1/files`` and ``/v1/fine_tuning/jobs``.

Routes only check requests, read and write the database, and shape OpenAI's objects; jobs
are trained by the worker (``serve/jobs/worker.py``) in a separate process through the same
recipe as ``tunesmith train``. Lists are newest first with cursor pagination
(``after=<id>``, ``limit``, ``has_more``), as the ``openai`` client expects.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import select
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from tunesmith.errors import DataError
from tunesmith.serve import paths
from tunesmith.serve.api.errors import APIError, shown
from tunesmith.serve.api.schemas import ID_PATTERN, text_problem
from tunesmith.serve.jobs import spec as job_spec
from tunesmith.serve.jobs.files import file_object, render_error, store_upload
from tunesmith.serve.jobs.models import (
    CheckpointRow,
    EventRow,
    FileRow,
    JobRow,
    add_event,
    new_id,
    now,
)
from tunesmith.serve.jobs.worker import JobWorker

ACTIVE = ("validating_files", "queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
MAX_FILENAME = 256  # characters of an uploaded file's name (stored in a 512-character column)
PURPOSE_PATTERN = r"^[A-Za-z0-9_-]{0,32}$"  # fine-tune, batch, assistants...
_ID = re.compile(ID_PATTERN)


def build_jobs_router(app: FastAPI | None = None) -> APIRouter:
    """The files + fine-tuning jobs routes; with ``app``, also its worker's start and stop."""
    router = APIRouter()
    router.add_api_route("/v1/files", upload_file, methods=["POST"])
    router.add_api_route("/v1/files", list_files, methods=["GET"])
    router.add_api_route("/v1/files/{file_id}", get_file, methods=["GET"])
    router.add_api_route("/v1/files/{file_id}/content", file_content, methods=["GET"])
    router.add_api_route("/v1/files/{file_id}", delete_file, methods=["DELETE"])
    router.add_api_route("/v1/fine_tuning/jobs", create_job, methods=["POST"])
    router.add_api_route("/v1/fine_tuning/jobs", list_jobs, methods=["GET"])
    router.add_api_route("/v1/fine_tuning/jobs/{job_id}", get_job, methods=["GET"])
    router.add_api_route("/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job, methods=["POST"])
    router.add_api_route("/v1/fine_tuning/jobs/{job_id}/events", list_events, methods=["GET"])
    router.add_api_route("/v1/fine_tuning/jobs/{job_id}/checkpoints", list_checkpoints,
                         methods=["GET"])
    if app is not None and getattr(app.state.settings, "jobs_worker", True):
        worker = JobWorker(app.state.db, Path(app.state.settings.data_dir))
        app.state.jobs_worker = worker
        app.state.startup.append(worker.start)
        app.state.shutdown.append(worker.stop)
    return router


# -- files -----------------------------------------------------------------------------------
async def upload_file(request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    limit = getattr(settings, "max_upload_bytes", 512 << 20)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + (1 << 16):
        raise APIError(413, f"The file is larger than this server's upload limit of {limit} "
                       "bytes.", param="file", code="file_too_large")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except (HTTPException, MultiPartException, ValueError) as exc:  # malformed body
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or exc
        raise APIError(400, f"Could not parse the multipart form ({detail}); send the file as "
                       "multipart/form-data with fields 'file' and 'purpose'.",
                       code="invalid_request") from None
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "Missing required parameter: 'file'.", param="file",
                       code="missing_required_parameter")
    if purpose != "fine-tune":
        raise APIError(400, f"'purpose' must be 'fine-tune' on this server (got "
                       f"{shown(purpose)}).",
                       param="purpose", code="invalid_value")
    filename = os.path.basename(upload.filename or "upload.jsonl") or "upload.jsonl"
    problem = text_problem(filename) or (len(filename) > MAX_FILENAME and
                                         f"it is longer than {MAX_FILENAME} characters")
    if problem:
        raise APIError(400, f"Invalid file name {shown(filename)}: {problem}.", param="file",
                       code="invalid_value")
    if not filename.endswith(".jsonl"):
        raise APIError(400, f"Invalid file format for Fine-Tuning API. Must be .jsonl "
                       f"(got {shown(filename)}).", param="file", code="invalid_file_format")
    if upload.size is not None and upload.size > limit:
        raise APIError(413, f"The file is {upload.size} bytes, larger than this server's "
                       f"upload limit of {limit} bytes.", param="file", code="file_too_large")
    try:
        row = await run_in_threadpool(store_upload, request.app.state.db,
                                      Path(settings.data_dir), upload.file, filename, purpose)
    except DataError as exc:
        raise APIError(400, f"Invalid file format: {render_error(exc)}", param="file",
                       code="invalid_file_format") from None
    finally:
        await upload.close()
    return file_object(row)


async def list_files(request: Request,
                     purpose: str | None = Query(None, pattern=PURPOSE_PATTERN),
                     limit: int = Query(10000, ge=1, le=10000), after: str | None = None,
                     order: Literal["asc", "desc"] = "desc") -> dict[str, Any]:
    with request.app.state.db.session() as s:
        q = select(FileRow)
        if purpose:
            q = q.where(FileRow.purpose == purpose)
        rows, more = _page(s, FileRow, q, after, limit, desc=order == "desc")
        return _list([file_object(r) for r in rows], more)


async def get_file(request: Request, file_id: str) -> dict[str, Any]:
    with request.app.state.db.session() as s:
        return file_object(_file(s, file_id))


async def file_content(request: Request, file_id: str) -> FileResponse:
    with request.app.state.db.session() as s:
        row = _file(s, file_id)
    path = paths.file_path(Path(request.app.state.settings.data_dir), row.id)
    if not path.exists():
        raise APIError(404, f"The content of file {file_id} is missing on the server.",
                       param="file_id", code="file_not_found")
    media = "text/csv" if row.filename.endswith(".csv") else "application/jsonl"
    return FileResponse(path, media_type=media, filename=row.filename)


async def delete_file(request: Request, file_id: str) -> dict[str, Any]:
    with request.app.state.db.session() as s:
        row = _file(s, file_id)
        busy = s.scalars(select(JobRow.id).where(
            JobRow.status.in_(ACTIVE),
            (JobRow.training_file == file_id) | (JobRow.validation_file == file_id))).first()
        if busy:
            raise APIError(400, f"File {file_id} is used by job {busy}, which has not finished; "
                           "cancel the job or wait for it first.", param="file_id",
                           code="file_in_use")
        s.delete(row)
    paths.file_path(Path(request.app.state.settings.data_dir), file_id).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}


# -- jobs ------------------------------------------------------------------------------------
async def create_job(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON, not UTF-8, a 4,300-digit number, nested
        raise APIError(400, "We could not parse the JSON body of your request. Send valid JSON "
                       "with Content-Type: application/json.", code="invalid_json") from None
    req = job_spec.parse_request(body)
    settings = request.app.state.settings
    job_spec.check_python_allowed(settings, req["grader"])
    data_dir = Path(settings.data_dir)
    method = req["method_type"]
    with request.app.state.db.session() as s:
        train = job_spec.check_file(_file(s, req["training_file"], missing_ok=True),
                                    req["training_file"], "training_file", method)
        val = None
        if req["validation_file"]:
            val = job_spec.check_file(_file(s, req["validation_file"], missing_ok=True),
                                      req["validation_file"], "validation_file", method)
    pool = getattr(request.app.state, "pool", None)  # the jobs API also runs without models
    base = job_spec.resolve_base(settings, pool.handles if pool is not None else {},
                                 req["model"])
    hparams = job_spec.resolve_hparams(req["hyperparameters"], train.rows, method)
    job_id = new_id("ftjob-")
    config = await run_in_threadpool(job_spec.build_config, job_id, data_dir, base, method,
                                     hparams, req["seed"], train, val, req["overrides"],
                                     req["grader"])
    method_obj = {"hyperparameters": hparams}
    if req["grader"] is not None:
        method_obj["grader"] = req["grader"]
    row = JobRow(id=job_id, created_at=now(), model=req["model"], training_file=train.id,
                 validation_file=val.id if val else None, status="queued",
                 method={"type": method, method: method_obj},
                 hyperparameters=hparams, spec={"config": config, "base": base},
                 suffix=req["suffix"], seed=req["seed"], metadata_=req["metadata"],
                 output_name=paths.fine_tuned_name(req["model"], req["suffix"], job_id))
    with request.app.state.db.session() as s:
        s.add(row)
        add_event(s, job_id, f"Created fine-tuning job: {job_id}")
        add_event(s, job_id, f"Validating training file: {train.id}" +
                  (f" and validation file: {val.id}" if val else ""))
        add_event(s, job_id, "Files validated, moving job to queued state")
    return job_object(row)


async def list_jobs(request: Request, after: str | None = None,
                    limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    with request.app.state.db.session() as s:
        rows, more = _page(s, JobRow, select(JobRow), after, limit)
        return _list([job_object(r) for r in rows], more)


async def get_job(request: Request, job_id: str) -> dict[str, Any]:
    with request.app.state.db.session() as s:
        return job_object(_job(s, job_id))


async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    with request.app.state.db.session() as s:
        row = _job(s, job_id)
        if row.status in FINISHED:
            raise APIError(400, f"Job {job_id} has already {row.status}; only queued or running "
                           "jobs can be cancelled.", param="job_id", code="job_not_cancellable")
        row.status, row.finished_at, row.estimated_finish = "cancelled", now(), None
        add_event(s, job_id, "Job cancelled by request")
        s.flush()
        return job_object(row)


async def list_events(request: Request, job_id: str, after: str | None = None,
                      limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
    with request.app.state.db.session() as s:
        _job(s, job_id)
        q = select(EventRow).where(EventRow.job_id == job_id)
        rows, more = _page(s, EventRow, q, after, limit)
        return _list([event_object(r) for r in rows], more)


async def list_checkpoints(request: Request, job_id: str, after: str | None = None,
                           limit: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
    with request.app.state.db.session() as s:
        _job(s, job_id)
        q = select(CheckpointRow).where(CheckpointRow.job_id == job_id)
        rows, more = _page(s, CheckpointRow, q, after, limit)
        return _list([checkpoint_object(r) for r in rows], more)


# -- OpenAI objects ----------------------------------------------------------------------------
def job_object(row: JobRow) -> dict[str, Any]:
    return {
        "id": row.id, "object": "fine_tuning.job", "created_at": row.created_at,
        "error": row.error, "fine_tuned_model": row.fine_tuned_model,
        "finished_at": row.finished_at, "hyperparameters": row.hyperparameters,
        "model": row.model, "organization_id": "org-tunesmith",
        "result_files": list((row.spec or {}).get("result_files", [])), "seed": row.seed,
        "status": row.status, "trained_tokens": row.trained_tokens,
        "training_file": row.training_file, "validation_file": row.validation_file,
        "estimated_finish": row.estimated_finish if row.status in ACTIVE else None,
        "integrations": [], "metadata": row.metadata_, "method": row.method,
        "user_provided_suffix": row.suffix,
    }


def event_object(row: EventRow) -> dict[str, Any]:
    return {"id": row.id, "object": "fine_tuning.job.event", "created_at": row.created_at,
            "level": row.level, "message": row.message, "data": row.data or {},
            "type": row.type}


def checkpoint_object(row: CheckpointRow) -> dict[str, Any]:
    return {"id": row.id, "object": "fine_tuning.job.checkpoint", "created_at": row.created_at,
            "fine_tuned_model_checkpoint": row.fine_tuned_model_checkpoint,
            "fine_tuning_job_id": row.job_id, "metrics": row.metrics,
            "step_number": row.step_number}


# -- helpers ---------------------------------------------------------------------------------
def _list(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


def _page(s: Any, model: Any, q: Any, after: str | None, limit: int,
          desc: bool = True) -> tuple[list[Any], bool]:
    """``limit`` rows after the row with id ``after`` in ``seq`` order, and whether more exist."""
    if after:
        seq = s.scalar(select(model.seq).where(model.id == after)) if _is_id(after) else None
        if seq is None:
            raise APIError(400, f"'after' names no known object: {shown(after)}", param="after",
                           code="invalid_value")
        q = q.where(model.seq < seq if desc else model.seq > seq)
    q = q.order_by(model.seq.desc() if desc else model.seq.asc()).limit(limit + 1)
    rows = list(s.scalars(q))
    return rows[:limit], len(rows) > limit


def _is_id(text: str) -> bool:
    """Whether ``text`` can be an id this server made (other text never reaches a query:
    PostgreSQL refuses a NUL in it with an error, which would be a 500)."""
    return bool(_ID.match(text))


def _file(s: Any, file_id: str, missing_ok: bool = False) -> FileRow | None:
    row = s.scalar(select(FileRow).where(FileRow.id == file_id)) if _is_id(file_id) else None
    if row is None and not missing_ok:
        raise APIError(404, f"No such File object: {shown(file_id)}", param="file_id",
                       code="file_not_found")
    return row


def _job(s: Any, job_id: str) -> JobRow:
    row = s.scalar(select(JobRow).where(JobRow.id == job_id)) if _is_id(job_id) else None
    if row is None:
        raise APIError(404, f"Fine-tuning job {shown(job_id)} not found.", param="job_id",
                       code="fine_tuning_job_not_found")
    return row

