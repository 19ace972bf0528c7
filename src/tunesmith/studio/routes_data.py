"""Datasets: upload (or name a file on the server), inspect it, preview its trained tokens
under a model's chat template and label mask, prepare it (clean, dedup, split, data card),
and hand it to the New-run form."""

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
from tunesmith.studio import datasets as ds
from tunesmith.studio.drafts import read_draft, write_draft
from tunesmith.studio.render import StudioRoute, error_parts, fragment, go, page

router = APIRouter(prefix="/studio", route_class=StudioRoute, include_in_schema=False)
DEFAULT_MODEL = "smollm2-135m-instruct"


def _data_dir(request: Request) -> Path:
    return Path(request.app.state.settings.data_dir)


def _model_guess(request: Request) -> str:
    """The model of the run being drafted, else the first served model, else the default."""
    drafted = read_draft(_data_dir(request))[1].get("model.name")
    if drafted:
        return drafted
    served = list(getattr(request.app.state.pool, "handles", {}) or {})
    return served[0] if served else DEFAULT_MODEL


@router.get("/data")
async def data_page(request: Request, path: str | None = None) -> HTMLResponse:
    data_dir = _data_dir(request)
    files = await run_in_threadpool(ds.dataset_paths, data_dir)
    ctx: dict[str, Any] = {"files": files, "path": path, "report": None, "error": None,
                           "model": _model_guess(request)}
    if path:
        try:
            resolved = await run_in_threadpool(ds.resolve_dataset, data_dir, path)
            ctx["resolved"] = resolved
            ctx["report"] = await run_in_threadpool(ds.inspect, resolved)
        except TunesmithError as exc:
            ctx["error"] = error_parts(exc)
    return page(request, "data.html", title="Datasets", active="data", **ctx)


@router.post("/data/upload")
async def upload(request: Request) -> Response:
    form = await request.form(max_files=1)
    file = form.get("file")
    if not isinstance(file, UploadFile) or not file.filename:
        return fragment("error_block.html", error=error_parts(UsageError(
            "no file chosen", where="upload", fix="choose a .jsonl, .json, .csv or .parquet "
            "file first")))
    try:
        stored = await run_in_threadpool(ds.store_upload, _data_dir(request), file.filename,
                                         file.file)
    except TunesmithError as exc:
        return fragment("error_block.html", error=error_parts(exc))
    finally:
        await file.close()
    return go(request, f"/studio/data?path={stored.name}")


def _preview_args(form: Any) -> dict[str, Any]:
    try:
        max_length = int(str(form.get("max_length") or "1024"))
    except ValueError:
        raise UsageError("max length must be a whole number of tokens", where="max length",
                         got=form.get("max_length"), fix="e.g. 1024") from None
    return {"model": str(form.get("model") or DEFAULT_MODEL).strip(), "max_length": max_length,
            "train_on_inputs": form.get("train_on_inputs") == "true",
            "system_prompt": str(form.get("system_prompt") or "") or None}


@router.post("/data/preview")
async def preview(request: Request) -> HTMLResponse:
    form = await request.form()
    path = str(form.get("path") or "")
    try:
        args = _preview_args(form)
        resolved = await run_in_threadpool(ds.resolve_dataset, _data_dir(request), path)
        result = await run_in_threadpool(lambda: ds.preview(resolved, **args))
    except TunesmithError as exc:
        return fragment("error_block.html", error=error_parts(exc))
    overrides = [f"data.train={resolved}", f"model.name={args['model']}",
                 f"data.max_length={args['max_length']}"]
    if args["train_on_inputs"]:
        overrides.append("data.train_on_inputs=true")
    cli = "tunesmith data preview CONFIG.yaml " + " ".join(shlex.quote(o) for o in overrides)
    return fragment("data_preview.html", result=result, cli=cli)


@router.post("/data/prepare")
async def prepare(request: Request) -> HTMLResponse:
    form = await request.form()
    path = str(form.get("path") or "")
    try:
        options = _prepare_options(form)
        resolved = await run_in_threadpool(ds.resolve_dataset, _data_dir(request), path)
        card = await run_in_threadpool(ds.run_prepare, _data_dir(request), resolved, options)
    except TunesmithError as exc:
        return fragment("error_block.html", error=error_parts(exc))
    split = options["split"]
    cli = (f"tunesmith data prepare {shlex.quote(str(resolved))} -o "
           f"{shlex.quote(card['output_dir'])} --split "
           f"{split['train']},{split['validation']},{split['test']}"
           + ("" if options["dedup"]["near"] else " --no-near-dedup")
           + (" --pii" if options["pii"]["enabled"] else ""))
    return fragment("data_card.html", card=card, card_json=json.dumps(card, indent=1,
                                                                      default=str), cli=cli)


def _prepare_options(form: Any) -> dict[str, Any]:
    try:
        ratios = [float(str(form.get(k) or "0")) for k in ("train", "validation", "test")]
    except ValueError:
        raise UsageError("split ratios must be numbers", where="split",
                         got=[form.get(k) for k in ("train", "validation", "test")],
                         fix="e.g. 0.8, 0.1, 0.1") from None
    return {"split": dict(zip(("train", "validation", "test"), ratios)),
            "dedup": {"near": form.get("near_dedup") == "true"},
            "pii": {"enabled": form.get("pii") == "true"}}


@router.post("/data/use")
async def use_for_run(request: Request) -> Response:
    """Put the dataset (and the preview's model) into the New-run draft."""
    form = await request.form()
    path = str(form.get("path") or "")
    resolved = await run_in_threadpool(ds.resolve_dataset, _data_dir(request), path)
    start, values = read_draft(_data_dir(request))
    values["data.train"] = str(resolved)
    if form.get("model"):
        values["model.name"] = str(form.get("model"))
    await run_in_threadpool(write_draft, _data_dir(request), start, values)
    return go(request, "/studio/new")
