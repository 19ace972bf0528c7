"""Campaigns: create one from stored answers, hand items to reviewers, save their ratings,
report progress and results.

An item is one prompt and two models' answers. With more than two models every pair is an
item for every prompt. Which answer is shown on the left is drawn once per item (seeded),
and items are dealt in a shuffled order, so neither position nor sequence gives the models
away. ``overlap`` reviewers rate each item (2 or more gives agreement figures).
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import defaultdict
from dataclasses import asdict
from typing import Any

from sqlalchemy import func, select

from tunesmith.errors import UsageError
from tunesmith.humaneval import people, work
from tunesmith.humaneval.answers import Answers
from tunesmith.humaneval.models import CHOICES, Answer, Campaign, Item, Person, Rating, dumps
from tunesmith.humaneval.stats import agreement as stats_agreement
from tunesmith.humaneval.stats import bradley_terry, disagreement, win_rate
from tunesmith.serve.db import Database

MAX_TEXT = 100_000  # characters of a comment or corrected answer


def check_new_campaign(db: Database, name: str, overlap: int = 1) -> None:
    """A usable name that no campaign has yet (checked again, in the same transaction, when
    the campaign is stored)."""
    people.check_slug(name, "campaign")
    _check_overlap(overlap)
    with db.session() as s:
        _refuse_taken(s, name)


def _check_overlap(overlap: int) -> None:
    if overlap < 1:
        raise UsageError("--overlap must be at least 1", where="--overlap", got=overlap,
                         fix="1 (each item rated once) or 2+ (agreement between reviewers)")


def _refuse_taken(s: Any, name: str) -> None:
    if s.scalar(select(Campaign.id).where(Campaign.name == name)) is not None:
        raise UsageError("a campaign of that name exists", where=name,
                         fix="choose another name (`tunesmith humaneval status` lists them)")


def create_campaign(db: Database, name: str, answers: Answers, overlap: int = 1,
                    seed: int = 0) -> Campaign:
    """Store the answers and the items of a new campaign."""
    people.check_slug(name, "campaign")
    models = list(answers.answers)
    if len(models) < 2:
        raise UsageError("a campaign compares two or more models", where="--model",
                         got=models, fix="give --model twice (or an eval directory of two "
                         "or more models)")
    _check_overlap(overlap)
    rng = random.Random(seed)
    with db.session() as s:
        _refuse_taken(s, name)
        camp = Campaign(name=name, created_at=time.time(), source=str(
            answers.origin.get("prompts") or answers.origin.get("eval_dir") or ""),
            models=dumps([{"name": m, "source": answers.sources.get(m, m)} for m in models]),
            settings=dumps(answers.origin), overlap=overlap, seed=seed)
        s.add(camp)
        s.flush()
        ids: dict[tuple[int, str], int] = {}
        for i in range(len(answers.prompts)):
            for m in models:
                a = Answer(campaign_id=camp.id, prompt_index=i, model=m,
                           text=answers.answers[m][i])
                s.add(a)
                s.flush()
                ids[(i, m)] = a.id
        pairs = [(i, a, b) for i in range(len(answers.prompts))
                 for a, b in itertools.combinations(models, 2)]
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for position, k in enumerate(order):
            i, a, b = pairs[k]
            if rng.random() < 0.5:
                a, b = b, a
            s.add(Item(campaign_id=camp.id, position=position, prompt_index=i,
                       prompt=dumps(answers.prompts[i]), left_id=ids[(i, a)],
                       right_id=ids[(i, b)], done=0, complete=False))
        return camp


def get_campaign(db: Database, name: str) -> Campaign:
    return people.find_named(db, Campaign, name, "campaign", "tunesmith humaneval create")


def item_view(db: Database, item_id: int) -> dict[str, Any]:
    """What a reviewer sees (no model names): the prompt and the two answers."""
    with db.session() as s:
        item = s.get(Item, item_id)
        left, right = s.get(Answer, item.left_id), s.get(Answer, item.right_id)
        return {"id": item.id, "position": item.position, "prompt": json.loads(item.prompt),
                "left": left.text, "right": right.text}


def next_item(db: Database, camp: Campaign, person: Person) -> dict[str, Any] | None:
    """The item this reviewer should rate now (leased to them), or None when done."""
    people.check_member(person, "campaign", camp.id)
    item_id = work.claim(db, work.ITEMS, camp.id, person.id, camp.overlap)
    return None if item_id is None else item_view(db, item_id)


def rate(db: Database, camp: Campaign, person: Person, item_id: int, choice: str,
         comment: str | None = None, correction: str | None = None) -> Rating:
    """Save (or revise) a rating; durable when this returns."""
    people.check_member(person, "campaign", camp.id)
    if choice not in CHOICES:
        raise UsageError("unknown choice", where="choice", got=choice,
                         fix=f"one of {', '.join(CHOICES)}")
    comment = (comment or "").strip()[:MAX_TEXT] or None
    correction = (correction or "").strip()[:MAX_TEXT] or None
    now = time.time()
    with db.session() as s:
        item = s.get(Item, item_id)
        if item is None or item.campaign_id != camp.id:
            raise UsageError("no such item in this campaign", where=camp.name, got=item_id,
                             fix="rate the item the page shows (reload it)")
        work.finish(s, work.ITEMS, camp.id, item_id, person.id, camp.overlap)
        rating = s.scalar(select(Rating).where(Rating.item_id == item_id,
                                               Rating.person_id == person.id))
        if rating is None:
            rating = Rating(campaign_id=camp.id, item_id=item_id, person_id=person.id,
                            created_at=now)
            s.add(rating)
        rating.choice, rating.comment, rating.correction = choice, comment, correction
        rating.updated_at = now
        s.flush()
        return rating


def progress(db: Database, camp: Campaign) -> dict[str, Any]:
    """Items, ratings needed and done, and each reviewer's count."""
    with db.session() as s:
        items = s.scalar(select(func.count()).select_from(Item).where(
            Item.campaign_id == camp.id)) or 0
        complete = s.scalar(select(func.count()).select_from(Item).where(
            Item.campaign_id == camp.id, Item.complete.is_(True))) or 0
        per = work.progress(s, work.ITEMS, camp.id)
    who = people.people(db, "campaign", camp.id)
    return {"items": items, "complete": complete, "needed": items * camp.overlap,
            "rated": sum(per.values()),
            "reviewers": [{"id": p.id, "name": p.name, "rated": per.get(p.id, 0),
                           "key": p.key_hash is not None, "revoked": p.revoked} for p in who]}


# -- results ------------------------------------------------------------------------------------
def ratings(db: Database, camp: Campaign) -> list[dict[str, Any]]:
    """Every rating with the models behind left and right (for results and export)."""
    with db.session() as s:
        answers = {a.id: a for a in s.scalars(select(Answer).where(
            Answer.campaign_id == camp.id))}
        rows = s.execute(select(Rating, Item).join(Item, Rating.item_id == Item.id).where(
            Rating.campaign_id == camp.id).order_by(Rating.item_id, Rating.id)).all()
        names = people.names(db, {r.person_id for r, _ in rows})
        out = []
        for r, item in rows:
            left, right = answers[item.left_id], answers[item.right_id]
            out.append({"rating_id": r.id, "item": item.id, "prompt_index": item.prompt_index,
                        "prompt": json.loads(item.prompt), "left_model": left.model,
                        "right_model": right.model, "left": left.text, "right": right.text,
                        "choice": r.choice, "comment": r.comment, "correction": r.correction,
                        "reviewer": names.get(r.person_id, str(r.person_id)),
                        "time": r.updated_at})
        return out


def left_score(choice: str) -> float:
    """The left answer's score: 1 better, 0 worse, ½ for tie and both bad."""
    return {"left": 1.0, "right": 0.0}.get(choice, 0.5)


def item_scores(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per item: the two models (sorted) and the first model's mean score."""
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        grouped[r["item"]].append(r)
    out = {}
    for item, rs in grouped.items():
        a, b = sorted((rs[0]["left_model"], rs[0]["right_model"]))
        scores = [left_score(r["choice"]) if r["left_model"] == a else
                  1 - left_score(r["choice"]) for r in rs]
        out[item] = {"a": a, "b": b, "score": sum(scores) / len(scores), "ratings": rs}
    return out


def results(db: Database, camp: Campaign, top: int = 10) -> dict[str, Any]:
    """Win rates per pair (95% Wilson CI over items), the Bradley–Terry ranking (more than
    two models), agreement between reviewers, the most disputed items, the comments."""
    rows = ratings(db, camp)
    per_item = item_scores(rows)
    models = camp.model_names()
    pairs = []
    for a, b in itertools.combinations(sorted(models), 2):
        scores = [v["score"] for v in per_item.values() if (v["a"], v["b"]) == (a, b)]
        if scores:
            pairs.append(asdict(win_rate(a, b, scores)))
    ranking = []
    if len(models) > 2 and per_item:
        comps = [(v["a"], v["b"], v["score"]) for v in per_item.values()]
        ranking = [asdict(x) for x in bradley_terry(models, comps)]
    return {"campaign": camp.name, "models": models, "ratings": len(rows),
            "items_rated": len(per_item), "pairs": pairs, "ranking": ranking,
            "agreement": agreement(per_item),
            "disputed": disputed(per_item, top),
            "comments": [{"item": r["item"], "reviewer": r["reviewer"], "comment": r["comment"],
                          "correction": r["correction"], "choice": r["choice"]}
                         for r in rows if r["comment"] or r["correction"]]}


def _verdict(r: dict[str, Any], a: str) -> str:
    """A reviewer's verdict in model terms (independent of the side shown)."""
    if r["choice"] in ("tie", "both_bad"):
        return r["choice"]
    winner = r["left_model"] if r["choice"] == "left" else r["right_model"]
    return "first" if winner == a else "second"


def agreement(per_item: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Fleiss' kappa over items rated two or more times; Cohen's kappa per reviewer pair."""
    return stats_agreement([[(r["reviewer"], _verdict(r, v["a"])) for r in v["ratings"]]
                            for v in per_item.values()])


def disputed(per_item: dict[int, dict[str, Any]], top: int) -> list[dict[str, Any]]:
    scored = []
    for i, v in per_item.items():
        if len(v["ratings"]) < 2:
            continue
        d = disagreement([_verdict(r, v["a"]) for r in v["ratings"]])
        if d > 0:
            r0 = v["ratings"][0]
            scored.append({"item": i, "disagreement": d, "prompt": r0["prompt"],
                           "verdicts": [{"reviewer": r["reviewer"], "choice": r["choice"],
                                         "winner": None if r["choice"] in ("tie", "both_bad")
                                         else (r["left_model"] if r["choice"] == "left"
                                               else r["right_model"])}
                                        for r in v["ratings"]]})
    scored.sort(key=lambda x: (-x["disagreement"], x["item"]))
    return scored[:top]

