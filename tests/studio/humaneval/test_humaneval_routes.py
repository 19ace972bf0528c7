"""The human-evaluation screens: every action (create, reviewers and keys, rate, label,
skip/unsure, results, exports), and a reviewer key refused everywhere but its own campaign."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import write_jsonl
from tests.studio.conftest import StudioClient, make_studio
from tunesmith.humaneval import campaigns
from tunesmith.humaneval.answers import Answers
from tunesmith.io import file_sha256


def _answers(n: int = 3) -> Answers:
    return Answers([[{"role": "user", "content": f"Q{i}?"}] for i in range(n)],
                   {m: [f"{m} says {i}" for i in range(n)] for m in ("base", "tuned")},
                   {"base": "/m/base", "tuned": "/m/tuned"}, {"prompts": "p.jsonl"})


def _campaign(client: Any, name: str = "ab", n: int = 3, overlap: int = 1) -> Any:
    return campaigns.create_campaign(client.app.state.db, name, _answers(n), overlap=overlap)


def _item_id(html: str) -> int:
    return int(re.search(r'name="item" value="(\d+)"', html).group(1))


def _winner_side(html: str, model: str) -> str:
    a = re.search(r'id="answer-a">([^<]*)<', html).group(1)
    return "left" if a.startswith(model) else "right"


def write_eval_dir(ev: Path, n: int) -> Path:
    """A ``tunesmith eval`` generation directory of two models, base and tuned."""
    for name in ("base", "tuned"):
        (ev / name).mkdir(parents=True)
        write_jsonl(ev / name / "predictions.jsonl", [
            {"index": i, "where": f"p:{i}", "input": f"Say {i}.", "reference": ["x"],
             "prediction": f"{name} {i}", "row": {"prompt": f"Say {i}."}} for i in range(n)])
    (ev / "metrics.json").write_text(json.dumps({"task": "generation", "models": [
        {"name": n, "dir": n, "path": f"/m/{n}"} for n in ("base", "tuned")]}))
    return ev


def test_overview_create_and_campaign_page(studio: StudioClient, tmp_path: Path) -> None:
    ev = write_eval_dir(tmp_path / "ev", 2)
    assert "No campaign yet" in studio.get("/studio/humaneval").text
    resp = studio.post("/studio/humaneval/create", data={"name": "ev", "source": "eval",
                                                         "eval_dir": str(ev)})
    assert resp.headers["HX-Redirect"] == "/studio/humaneval/ev"
    bad = studio.post("/studio/humaneval/create", data={"name": "ev2", "source": "eval",
                                                        "eval_dir": "/nope"})
    assert "not an evaluation directory" in bad.text and "/nope" in bad.text
    html = studio.get("/studio/humaneval/ev").text
    assert re.search(r"\b2 items", html) and "No ratings yet" in html
    assert "tunesmith feedback export" in html
    key = studio.post("/studio/humaneval/ev/reviewers", data={"reviewer": "rita"})
    assert "rita" in key.text and re.search(r"tsr_[\w-]{20,}", key.text)
    again = studio.post("/studio/humaneval/ev/reviewers", data={"reviewer": "rita"})
    assert "already a reviewer of that name" in again.text
    assert "rita" in studio.get("/studio/humaneval").text


def test_rate_with_results_and_exports(studio: StudioClient) -> None:
    _campaign(studio.client, n=3)
    page = studio.get("/studio/review/campaign/ab?as=ann")
    assert page.status_code == 200 and "base says" in page.text and "tuned says" in page.text
    assert "rating as <strong>ann</strong>" in page.text
    first = _item_id(page.text)
    assert _item_id(studio.get("/studio/review/campaign/ab?as=ann").text) == first  # reload
    bad = studio.post("/studio/review/campaign/ab/rate?as=ann",
                      data={"item": first, "choice": "C"})
    assert "unknown choice" in bad.text and _item_id(bad.text) == first  # same item kept
    html = page.text
    for n in range(3):
        side = _winner_side(html, "tuned")
        resp = studio.post("/studio/review/campaign/ab/rate?as=ann",
                           data={"item": _item_id(html), "choice": side,
                                 "comment": "clearer" if n == 0 else "",
                                 "correction": "Better." if n == 1 else ""})
        assert resp.status_code == 200
        html = resp.text
        assert f'id="mine">{n + 1}<' in html
    assert 'id="done"' in html
    detail = studio.get("/studio/humaneval/ab").text
    assert "100.0%" in detail or "0.0%" in detail
    assert "clearer" in detail and "corrected answer" in detail
    rows = [json.loads(x) for x in studio.get("/studio/humaneval/ab/export.jsonl?format=dpo")
            .text.splitlines()]
    assert len(rows) == 4 and all(r["chosen"][0]["content"] != "" for r in rows)
    sft = studio.get("/studio/humaneval/ab/export.jsonl?format=sft").text.splitlines()
    assert len(sft) == 1 and json.loads(sft[0])["provenance"]["reviewer"] == "ann"
    assert "unknown --format" in studio.get("/studio/humaneval/ab/export.jsonl?format=x").text


def test_queue_screens(studio: StudioClient, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "u.jsonl", [{"text": f"row {i}"} for i in range(3)]
                      + [{"text": "done", "label": "b"}])
    before = file_sha256(src)
    resp = studio.post("/studio/annotate/create", data={
        "name": "u", "source": "data", "path": str(src), "labels": "a,b", "overlap": "1"})
    assert resp.headers["HX-Redirect"] == "/studio/annotate/u"
    assert "needs its label set" in studio.post("/studio/annotate/create", data={
        "name": "v", "source": "data", "path": str(src)}).text
    page = studio.get("/studio/review/queue/u?as=lee")
    assert 'data-key="1"' in page.text and "row 0" in page.text
    html = page.text
    actions = [{"status": "labelled", "label": "a"}, {"status": "skipped"},
               {"status": "unsure"}]
    for act in actions:
        row = int(re.search(r'name="row" value="(\d+)"', html).group(1))
        html = studio.post("/studio/review/queue/u/label?as=lee", data={"row": row, **act}).text
    assert 'id="done"' in html
    detail = studio.get("/studio/annotate/u").text
    assert "1 / 3 labelled" in detail and "1 skipped" in detail and "1 unsure" in detail
    out = studio.post("/studio/annotate/u/export")
    assert "2 rows, 1 annotated" in out.text
    version = Path(studio.client.app.state.settings.data_dir) / "annotations/u/v1.jsonl"
    rows = [json.loads(x) for x in version.read_text().splitlines()]
    assert rows[0] == {"text": "row 0", "label": "a", "provenance": rows[0]["provenance"]}
    assert file_sha256(src) == before
    key = studio.post("/studio/annotate/u/annotators", data={"annotator": "kim"})
    assert re.search(r"tsr_[\w-]{20,}", key.text)


def test_sft_queue_answer(studio: StudioClient, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Add 2 and 2.", "completion": "5"}])
    studio.post("/studio/annotate/create", data={"name": "s", "source": "data",
                                                 "path": str(src)})
    html = studio.get("/studio/review/queue/s").text
    assert ">5</textarea>" in html and "Add 2 and 2." in html
    row = int(re.search(r'name="row" value="(\d+)"', html).group(1))
    empty = studio.post("/studio/review/queue/s/label", data={"row": row, "status": "labelled",
                                                             "answer": " "})
    assert "the answer is empty" in empty.text
    done = studio.post("/studio/review/queue/s/label", data={"row": row, "status": "labelled",
                                                            "answer": "4"})
    assert 'id="done"' in done.text


@pytest.fixture()
def locked(tmp_path: Path, runs_dir: Path) -> Any:
    with make_studio(tmp_path / "data", runs_dir, api_key="admin-key") as client:
        yield client


def _csrf(client: Any, url: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]*)"', client.get(url).text).group(1)


def test_reviewer_key_opens_its_campaign_only(locked: Any) -> None:
    app = locked.app
    from tunesmith.humaneval import people

    one, two = _campaign(locked, "one"), _campaign(locked, "two")
    _, key = people.add_person(app.state.db, "campaign", one.id, "rev")
    _, other_key = people.add_person(app.state.db, "campaign", two.id, "rev2")
    # not signed in: the review screen asks for a key
    resp = locked.get("/studio/review/campaign/one", follow_redirects=False)
    assert resp.status_code == 303 and "/studio/review/sign-in" in resp.headers["location"]
    token = _csrf(locked, "/studio/review/sign-in")
    bad = locked.post("/studio/review/sign-in", data={"key": "tsr_wrong"},
                      headers={"X-CSRF-Token": token})
    assert bad.status_code == 401 and "not a reviewer or annotator key" in bad.text
    assert locked.post("/studio/review/sign-in", data={"key": "admin-key"},
                       headers={"X-CSRF-Token": token}).status_code == 401
    ok = locked.post("/studio/review/sign-in", data={"key": key},
                     headers={"X-CSRF-Token": token}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/studio/review/campaign/one"
    assert "HttpOnly" in ok.headers["set-cookie"] and "SameSite=strict" in ok.headers[
        "set-cookie"]
    page = locked.get("/studio/review/campaign/one")
    assert page.status_code == 200 and "rating as <strong>rev</strong>" in page.text
    # ?as= is for administrators only: the key decides who rates
    assert "rating as <strong>rev</strong>" in locked.get(
        "/studio/review/campaign/one?as=boss").text
    token = _csrf(locked, "/studio/review/campaign/one")
    saved = locked.post("/studio/review/campaign/one/rate", headers={"X-CSRF-Token": token},
                        data={"item": _item_id(page.text), "choice": "tie"})
    assert saved.status_code == 200 and 'id="mine">1<' in saved.text
    assert locked.post("/studio/review/campaign/one/rate", data={
        "item": 1, "choice": "tie"}).status_code == 403  # no CSRF token
    # everything else is refused
    assert locked.get("/studio/review/campaign/two").status_code == 403
    for url in ("/studio/runs", "/studio/humaneval", "/studio/humaneval/one",
                "/studio/humaneval/one/export.jsonl", "/studio/annotate/x", "/studio/new"):
        resp = locked.get(url, follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"].startswith(
            "/studio/login"), url
    for path in ("/studio/humaneval/one/reviewers", "/studio/runs/x/cancel"):
        assert locked.post(path, headers={"X-CSRF-Token": token},
                           follow_redirects=False).status_code in (303, 403)
    assert locked.get("/v1/models").status_code == 401
    assert locked.get("/v1/models", headers={"Authorization": f"Bearer {key}"}
                      ).status_code == 401
    assert locked.post("/v1/fine_tuning/jobs", json={}, headers={
        "Authorization": f"Bearer {key}"}).status_code == 401
    # another campaign's key cannot rate this one; a revoked key stops at once
    locked.cookies.delete("tunesmith_review")
    locked.cookies.set("tunesmith_review", other_key, path="/studio/review/")
    assert locked.get("/studio/review/campaign/one").status_code == 403
    people.revoke(app.state.db, people.by_key(app.state.db, key).id)
    locked.cookies.delete("tunesmith_review")
    locked.cookies.set("tunesmith_review", key, path="/studio/review/")
    assert locked.get("/studio/review/campaign/one", follow_redirects=False).status_code == 303


def test_admin_signed_in_rates_under_a_name(locked: Any) -> None:
    _campaign(locked, "one")
    locked.post("/studio/login", data={"key": "admin-key", "next": "/studio/humaneval"})
    assert locked.get("/studio/humaneval").status_code == 200
    assert "rating as <strong>boss</strong>" in locked.get(
        "/studio/review/campaign/one?as=boss").text
