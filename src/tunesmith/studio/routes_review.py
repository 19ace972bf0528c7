"""Rating and labelling screens: what reviewers and annotators see, and all they can reach.

``/studio/review/`` is open in the gate (auth.OPEN): a reviewer or annotator signs in there
with their own key (humaneval/people.py), kept in an HttpOnly SameSite=Strict cookie scoped
to ``/studio/review/``. Every route here resolves the person from that key, and serves only
the campaign or queue the key is for; the rest of the studio and the API still need the
server's API key, so a reviewer key opens nothing else. A signed-in administrator may work
here too, under a name of their choosing (``?as=NAME``).

Each answer is one POST that commits before the response (a closed tab loses nothing) and
whose response is the next item; a reload shows the item leased to this person.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.humaneval import campaigns, people, queues
from tunesmith.humaneval.models import Campaign, Person, Queue
from tunesmith.studio.render import StudioRoute, env, error_parts, fragment, go

router = APIRouter(prefix="/studio/review", route_class=StudioRoute, include_in_schema=False)
COOKIE = "tunesmith_review"
MAX_AGE = 30 * 24 * 3600
CHOICE_KEYS = (("left", "A is better", "1"), ("right", "B is better", "2"),
               ("tie", "Tie", "3"), ("both_bad", "Both bad", "4"))


def _session(request: Request) -> dict[str, Any]:
    return (request.scope.get("state") or {}).get("studio_session") or {}


def is_admin(request: Request) -> bool:
    """Signed in with the server's API key (or the server has none)."""
    return bool(_session(request).get("auth")) or not request.app.state.settings.api_key


def review_page(request: Request, template: str, status: int = 200, **ctx: Any
                ) -> HTMLResponse:
    """A page without the studio's navigation (a reviewer can open none of it)."""
    html = env.get_template(template).render(request=request, csrf=_session(request).get(
        "csrf", ""), admin=is_admin(request), **ctx)
    return HTMLResponse(html, status_code=status)


def _person(request: Request, scope: str, scope_id: int) -> Person | None:
    """The key holder (for this campaign or queue only), or the administrator's name."""
    db = request.app.state.db
    holder = people.by_key(db, request.cookies.get(COOKIE))
    if holder is not None:
        people.check_member(holder, scope, scope_id)
        return holder
    if is_admin(request):
        name = request.query_params.get("as") or "studio"
        return people.named(db, scope, scope_id, name)
    return None


def _sign_in_first(request: Request) -> Response:
    return RedirectResponse(f"/studio/review/sign-in?next={request.url.path}", status_code=303)


@router.get("/sign-in")
async def sign_in_form(request: Request, next: str = "") -> HTMLResponse:
    return review_page(request, "humaneval/sign_in.html", title="Sign in to rate or label",
                       error=None)


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    form = await request.form()
    key = str(form.get("key") or "").strip()
    person = await run_in_threadpool(people.by_key, request.app.state.db, key)
    if person is None:
        exc = UsageError("that is not a reviewer or annotator key (or it was revoked)",
                         where="key", fix="use the key you were given (it starts with tsr_)")
        return review_page(request, "humaneval/sign_in.html", status=401,
                           title="Sign in to rate or label", error=error_parts(exc))
    target = await run_in_threadpool(_home_of, request, person)
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(COOKIE, key, max_age=MAX_AGE, path="/studio/review/", httponly=True,
                    samesite="strict")
    return resp


def _home_of(request: Request, person: Person) -> str:
    with request.app.state.db.session() as s:
        table = Campaign if person.scope == "campaign" else Queue
        name = s.get(table, person.scope_id).name
    return f"/studio/review/{person.scope}/{name}"


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    resp = go(request, "/studio/review/sign-in")
    resp.delete_cookie(COOKIE, path="/studio/review/")
    return resp


# -- campaigns ----------------------------------------------------------------------------------
def _rating_ctx(request: Request, name: str) -> dict[str, Any] | None:
    db = request.app.state.db
    camp = campaigns.get_campaign(db, name)
    person = _person(request, "campaign", camp.id)
    if person is None:
        return None
    item = campaigns.next_item(db, camp, person)
    prog = campaigns.progress(db, camp)
    mine = next((r["rated"] for r in prog["reviewers"] if r["id"] == person.id), 0)
    return {"camp": camp, "person": person, "item": item, "mine": mine, "progress": prog,
            "choices": CHOICE_KEYS, "as_name": request.query_params.get("as")}


@router.get("/campaign/{name}")
async def rate_page(request: Request, name: str) -> Response:
    try:
        ctx = await run_in_threadpool(_rating_ctx, request, name)
    except TunesmithError as exc:
        return _refused(request, exc)
    if ctx is None:
        return _sign_in_first(request)
    return review_page(request, "humaneval/rate.html", title=f"Rate · {name}", **ctx)


@router.post("/campaign/{name}/rate")
async def rate(request: Request, name: str) -> Response:
    form = await request.form()

    def save(db: Any, person: Person, camp: Campaign) -> None:
        campaigns.rate(db, camp, person, _int(form.get("item")), str(form.get("choice") or ""),
                       comment=str(form.get("comment") or ""),
                       correction=str(form.get("correction") or ""))

    return await _save_then_next(request, name, "campaign", save, _rating_ctx,
                                 "humaneval/rate_item.html")


async def _save_then_next(request: Request, name: str, scope: str, save: Any, context: Any,
                          template: str) -> Response:
    """Save one answer (committed before the response), then render the next item; an
    error is shown above the same item, which stays leased to this person."""
    def run() -> dict[str, Any] | None:
        db = request.app.state.db
        target = campaigns.get_campaign(db, name) if scope == "campaign" else \
            queues.get_queue(db, name)
        person = _person(request, scope, target.id)
        if person is None:
            return None
        save(db, person, target)
        return context(request, name)

    try:
        ctx = await run_in_threadpool(run)
    except TunesmithError as exc:
        ctx = await run_in_threadpool(context, request, name)
        return fragment(template, **(ctx or {}), error=error_parts(exc))
    if ctx is None:
        return Response(status_code=401)
    return fragment(template, **ctx)


# -- queues -------------------------------------------------------------------------------------
def _label_ctx(request: Request, name: str) -> dict[str, Any] | None:
    db = request.app.state.db
    q = queues.get_queue(db, name)
    person = _person(request, "queue", q.id)
    if person is None:
        return None
    row = queues.next_row(db, q, person)
    prog = queues.progress(db, q)
    mine = next((a["labelled"] for a in prog["annotators"] if a["id"] == person.id), 0)
    return {"queue": q, "labels": q.label_set(), "person": person, "row": row, "mine": mine,
            "progress": prog, "as_name": request.query_params.get("as")}


@router.get("/queue/{name}")
async def label_page(request: Request, name: str) -> Response:
    try:
        ctx = await run_in_threadpool(_label_ctx, request, name)
    except TunesmithError as exc:
        return _refused(request, exc)
    if ctx is None:
        return _sign_in_first(request)
    return review_page(request, "humaneval/label.html", title=f"Label · {name}", **ctx)


@router.post("/queue/{name}/label")
async def label(request: Request, name: str) -> Response:
    form = await request.form()

    def save(db: Any, person: Person, q: Queue) -> None:
        queues.save_label(db, q, person, _int(form.get("row")),
                          str(form.get("status") or "labelled"),
                          label=str(form.get("label") or "") or None,
                          answer=str(form.get("answer") or ""))

    return await _save_then_next(request, name, "queue", save, _label_ctx,
                                 "humaneval/label_item.html")


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise UsageError("the form lost its item", where="item", got=value,
                         fix="reload the page") from None


def _refused(request: Request, exc: TunesmithError) -> HTMLResponse:
    status = 403 if "this key is not for" in exc.what else 404
    return review_page(request, "humaneval/refused.html", status=status, title="Not here",
                       error=error_parts(exc))
