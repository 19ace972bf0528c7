"""Campaigns: items blind and randomised, ratings saved and revised, progress, results,
exports with provenance, the promotion gate — and the CLI end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.helpers.tiny import build_tiny_model_dir, write_jsonl
from tests.unit.sft_support import cli
from tunesmith.errors import UsageError
from tunesmith.humaneval import campaigns, export, people
from tunesmith.humaneval.answers import Answers, parse_models
from tunesmith.humaneval.gate import campaign_decision
from tunesmith.humaneval.models import Answer
from tunesmith.serve.db import Database

PROMPTS = [[{"role": "user", "content": f"Question {i}?"}] for i in range(6)]


def _answers(models: tuple[str, ...] = ("base", "tuned"), n: int = 6) -> Answers:
    return Answers(PROMPTS[:n], {m: [f"{m} answer {i}" for i in range(n)] for m in models},
                   {m: f"/models/{m}" for m in models}, {"prompts": "p.jsonl"})


def _rate_all(db: Database, camp, person, prefer: str, choice_else: str = "tie",
              correction_on: int | None = None) -> int:
    n = 0
    while (item := campaigns.next_item(db, camp, person)) is not None:
        side = "left" if item["left"].startswith(prefer) else "right" \
            if item["right"].startswith(prefer) else choice_else
        corr = "the corrected answer" if item["position"] == correction_on else None
        campaigns.rate(db, camp, person, item["id"], side, comment="ok" if n == 0 else None,
                       correction=corr)
        n += 1
    return n


def test_items_are_blind_and_randomised(db: Database) -> None:
    camp = campaigns.create_campaign(db, "c1", _answers(("a", "b", "c")), seed=3)
    views = [campaigns.item_view(db, i) for i in range(1, 19)]
    assert len(views) == 18  # 6 prompts × 3 pairs
    assert not any("model" in v for v in views)  # nothing names the models
    lefts = [v["left"].split()[0] for v in views]
    assert len(set(lefts)) == 3  # every model appears on the left somewhere
    prompts = [v["prompt"][0]["content"] for v in views]
    assert prompts != sorted(prompts)  # dealt in a shuffled order
    with pytest.raises(UsageError, match="exists"):
        campaigns.create_campaign(db, "c1", _answers())
    with pytest.raises(UsageError, match="two or more models"):
        campaigns.create_campaign(db, "c2", _answers(("a",)))
    with pytest.raises(UsageError, match="not a usable campaign name"):
        campaigns.create_campaign(db, "../x", _answers())
    assert camp.model_names() == ["a", "b", "c"]


def test_results_export_and_gate(db: Database) -> None:
    camp = campaigns.create_campaign(db, "bt", _answers(), overlap=2, seed=1)
    ann, bob = people.named(db, "campaign", camp.id, "ann"), \
        people.named(db, "campaign", camp.id, "bob")
    assert _rate_all(db, camp, ann, "tuned", correction_on=0) == 6
    assert _rate_all(db, camp, bob, "base") == 6
    # ann revises one rating: still one rating, progress unchanged
    first = next(r for r in campaigns.ratings(db, camp)
                 if r["reviewer"] == "ann" and not r["correction"])
    campaigns.rate(db, camp, ann, first["item"], "tie")
    prog = campaigns.progress(db, camp)
    assert prog["rated"] == 12 and prog["complete"] == 6
    assert {r["name"]: r["rated"] for r in prog["reviewers"]} == {"ann": 6, "bob": 6}
    res = campaigns.results(db, camp)
    (pair,) = res["pairs"]
    assert pair["a"] == "base" and pair["items"] == 6
    assert res["agreement"]["items"] == 6 and res["agreement"]["pairs"][0]["agree"] == 0
    assert res["disputed"] and res["disputed"][0]["disagreement"] > 0
    assert any(c["comment"] == "ok" for c in res["comments"])

    rows = export.campaign_rows(db, "bt", "dpo")
    # an item split evenly (ann vs bob) gives no rating pair; the one ann revised to a tie
    # leans to bob's choice; the correction is preferred over both answers
    by_rating = [r for r in rows if r["provenance"]["source"] == "rating"]
    assert len(by_rating) == 1 and by_rating[0]["provenance"]["chosen_model"] == "base"
    fixed = [r for r in rows if r["provenance"]["source"] == "correction"]
    assert len(fixed) == 1 and fixed[0]["chosen"] == [{"role": "assistant",
                                                       "content": "the corrected answer"}]
    prov = fixed[0]["provenance"]["ratings"][0]
    assert prov["campaign"] == "bt" and prov["reviewer"] == "ann" and prov["time"] > 0
    sft = export.campaign_rows(db, "bt", "sft")
    assert len(sft) == 1 and sft[0]["messages"][-1]["content"] == "the corrected answer"
    kto = export.campaign_rows(db, "bt", "kto")
    assert {r["label"] for r in kto} == {True, False}


def test_dpo_pairs_follow_the_majority_and_the_gate(db: Database) -> None:
    camp = campaigns.create_campaign(db, "win", _answers(n=6), seed=0)
    ann = people.named(db, "campaign", camp.id, "ann")
    _rate_all(db, camp, ann, "tuned")
    rows = export.campaign_rows(db, "win", "dpo")
    assert len(rows) == 6
    assert all(r["chosen"][0]["content"].startswith("tuned") for r in rows)
    assert all(r["rejected"][0]["content"].startswith("base") for r in rows)
    assert rows[0]["provenance"]["chosen_model"] == "tuned"
    ok = campaign_decision(db, "win", ("tuned",), ("base",))
    assert ok["promote"] and ok["candidate_value"] == 1.0 and ok["ci95"][0] > 0.5
    no = campaign_decision(db, "win", ("base",), ("tuned",))
    assert not no["promote"] and "0.000" in no["reason"]
    # by path too; an unknown model is named with the campaign's models
    assert campaign_decision(db, "win", ("x", "/models/tuned"), ("base",))["promote"]
    with pytest.raises(UsageError, match="not in campaign win") as exc:
        campaign_decision(db, "win", ("other",), ("base",))
    assert "tuned (/models/tuned)" in exc.value.fix


def test_reviewer_of_another_campaign_is_refused(db: Database) -> None:
    c1 = campaigns.create_campaign(db, "one", _answers())
    c2 = campaigns.create_campaign(db, "two", _answers())
    person, key = people.add_person(db, "campaign", c1.id, "rev")
    assert campaigns.next_item(db, c1, person) is not None
    with pytest.raises(UsageError, match="this key is not for this campaign"):
        campaigns.next_item(db, c2, person)
    with pytest.raises(UsageError, match="unknown choice"):
        campaigns.rate(db, c1, person, 1, "A")


def test_parse_models() -> None:
    assert parse_models(["base=x", "runs/tuned/"]) == [("base", "x"), ("tuned", "runs/tuned/")]
    with pytest.raises(UsageError, match="same name"):
        parse_models(["a=x", "a=y"])


def _eval_dir(out: Path, base: Path, tuned: Path) -> Path:
    """What `tunesmith eval BASE TUNED --data p.jsonl -o OUT` leaves (generation)."""
    models = []
    for name, path in (("base", base), ("tuned", tuned)):
        (out / name).mkdir(parents=True)
        write_jsonl(out / name / "predictions.jsonl", [
            {"index": i, "where": f"p.jsonl:{i + 1}", "input": f"Say {w}.",
             "reference": [w], "prediction": f"{name} says {w}", "row": {"prompt": f"Say {w}."}}
            for i, w in enumerate(("hello", "yes", "no", "red"))])
        models.append({"name": name, "dir": name, "path": str(path), "metrics": {}})
    (out / "metrics.json").write_text(json.dumps({"task": "generation", "models": models,
                                                  "settings": {"max_new_tokens": 8}}))
    return out


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """create (generation on tiny models, and import of eval predictions) → add-reviewer →
    rate → status → results → export and feedback export --campaign → promote --campaign
    (no eval file)."""
    base = build_tiny_model_dir(tmp_path / "base")
    tuned = build_tiny_model_dir(tmp_path / "tuned", tie=False)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Say {w}."} for w in
                                                 ("hello", "yes", "no", "red")])
    data = tmp_path / "data"
    code, _, errs = cli(["humaneval", "create", "gen", "--prompts", str(prompts), "--model",
                         f"base={base}", "--model", f"tuned={tuned}", "--max-new-tokens", "4",
                         "--data-dir", str(data)], capsys)
    assert code == 0 and "4 prompts, 4 items" in errs, errs
    code, _, errs = cli(["humaneval", "create", "ab", "--from-eval",
                         str(_eval_dir(tmp_path / "ev", base, tuned)), "--data-dir", str(data)],
                        capsys)
    assert code == 0 and "4 prompts, 4 items, models base, tuned" in errs, errs
    code, key, _ = cli(["humaneval", "add-reviewer", "ab", "rev", "--data-dir", str(data)],
                       capsys)
    assert code == 0 and key.strip().startswith("tsr_")
    db = Database(f"sqlite:///{data / 'tunesmith.db'}")
    try:
        with db.session() as s:
            gen = campaigns.get_campaign(db, "gen")
            n = len(list(s.scalars(select(Answer).where(Answer.campaign_id == gen.id))))
        assert n == 8  # two models × four prompts, generated once and stored
        camp = campaigns.get_campaign(db, "ab")
        rev = people.by_key(db, key.strip())
        while (item := campaigns.next_item(db, camp, rev)) is not None:
            assert item["left"].split()[0] != item["right"].split()[0]
            side = "left" if item["left"].startswith("tuned") else "right"
            campaigns.rate(db, camp, rev, item["id"], side,
                           correction="Fixed." if item["position"] == 0 else None)
    finally:
        db.dispose()
    code, out, _ = cli(["humaneval", "status", "--data-dir", str(data)], capsys)
    assert code == 0 and "4 / 4" in out and "rev 4" in out
    code, out, _ = cli(["humaneval", "results", "ab", "--data-dir", str(data), "--json",
                        str(tmp_path / "r.json")], capsys)
    assert code == 0 and "0.0%" in out
    assert json.loads((tmp_path / "r.json").read_text())["pairs"][0]["losses"] == 4
    code, _, errs = cli(["feedback", "export", "--campaign", "ab", "--format", "dpo", "-o",
                         str(tmp_path / "dpo.jsonl"), "--data-dir", str(data)], capsys)
    assert code == 0 and "wrote 5 dpo rows" in errs, errs  # 4 ratings + the correction
    dpo = [json.loads(x) for x in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    assert all(r["provenance"]["ratings"][0]["campaign"] == "ab" for r in dpo)
    assert all(isinstance(r["prompt"], str) for r in dpo)  # plain prompts stay plain
    assert dpo[0]["prompt"].startswith("Say ")
    code, _, _ = cli(["humaneval", "export", "ab", "--format", "sft", "-o",
                      str(tmp_path / "sft.jsonl"), "--data-dir", str(data)], capsys)
    sft = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert code == 0 and sft[0]["completion"] == "Fixed."
    code, out, errs = cli(["promote", str(tuned), "--over", str(base), "--campaign", "ab",
                           "--data-dir", str(data), "--dry-run", "-o",
                           str(tmp_path / "promo")], capsys)
    assert code == 0 and "would promote" in out and "human win rate in campaign ab" in out, \
        out + errs
    assert json.loads((tmp_path / "promo" / "promote.json").read_text())["passed"]
    code, out, _ = cli(["promote", str(base), "--over", str(tuned), "--campaign", "ab",
                        "--data-dir", str(data), "--dry-run", "-o", str(tmp_path / "p2")],
                       capsys)
    assert code == 1 and "refused" in out
    code, _, errs = cli(["humaneval", "results", "nope", "--data-dir", str(data)], capsys)
    assert code == 2 and "no campaign of that name" in errs and "ab" in errs
    code, _, errs = cli(["humaneval", "status", "--data-dir", str(tmp_path / "none")], capsys)
    assert code == 2 and "no server database here" in errs
