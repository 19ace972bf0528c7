"""Human evaluation: campaigns (create from an eval directory, reviewers and their keys,
progress, results, exports). The rating screen itself is routes_review.py.

Everything here is behind the studio's sign-in (the server's API key); a reviewer key opens
none of it. Generating answers with models is the CLI's job (``tunesmith humaneval create
NAME --prompts FILE --model ...``, shown on the page): it loads each model once.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.humaneval import campaigns, people
from tunesmith.humaneval.answers import import_eval
from tunesmith.humaneval.export import FORMATS, campaign_rows
from tunesmith.humaneval.models import Campaign
from tunesmith.studio.render import StudioRoute, error_parts, fragment, go, page
from tunesmith.studio.routes_annotate import new_key, queue_rows, revoke_in

router = APIRouter(prefix="/studio/humaneval", route_class=StudioRoute,
                   include_in_schema=False)


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
    data_dir = shlex.quote(str(request.app.state.settings.data_dir))
    cli = (f"tunesmith humaneval create base-vs-tuned --prompts prompts.jsonl --model "
           f"base=BASE --model tuned=RUN_DIR --data-dir {data_dir}")
    return page(request, "humaneval/overview.html", title="Human evaluation", active="humaneval",
                cli=cli, error=None, **ctx)


@router.post("/create")
async def create(request: Request) -> Response:
    form = await request.form()
    name, path = str(form.get("name") or "").strip(), str(form.get("eval_dir") or "").strip()

    def make() -> None:
        if not path:
            raise UsageError("give the evaluation directory", where="eval directory",
                             fix="the -o directory of `tunesmith eval BASE TUNED --data FILE`")
        try:
            overlap = int(str(form.get("overlap") or "1"))
        except ValueError:
            raise UsageError("reviewers per item must be a whole number", where="overlap",
                             got=form.get("overlap"), fix="1, or 2+ for agreement") from None
        campaigns.create_campaign(_db(request), name, import_eval(Path(path).expanduser()),
                                  overlap=overlap)

    try:
        await run_in_threadpool(make)
    except TunesmithError as exc:
        return fragment("error_block.html", error=error_parts(exc))
    return go(request, f"/studio/humaneval/{name}")


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
