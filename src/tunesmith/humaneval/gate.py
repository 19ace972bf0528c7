"""A campaign's verdict as a promotion gate (``tunesmith promote --campaign NAME``).

The candidate's win rate over the current model on the campaign's items (ties and both-bad
count half; items, not ratings, are the unit) and its 95% Wilson interval [lo, hi]:

    promote  ⇔  lo ≥ 0.5 − tolerance      (``--campaign-tolerance``, default 0)

With the default, reviewers must prefer the candidate beyond chance (at 97.5% one-sided);
a tolerance of 0.1 accepts a candidate unless the data rule out that it wins at least 40%.
Models are matched to the campaign's by name or by the directory they were loaded from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.errors import UsageError
from tunesmith.humaneval import campaigns
from tunesmith.serve.db import Database

RULE = ("promote iff the lower bound of the 95% Wilson interval of the candidate's win rate "
        "over the current model (ties half) ≥ 0.5 − campaign tolerance")


def _same(spec: str, source: str) -> bool:
    if spec == source:
        return True
    a, b = Path(spec).expanduser(), Path(source).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def match_model(models: list[dict[str, str]], *specs: str) -> str | None:
    """The campaign's name for a model given by name, path or resolved source."""
    for spec in specs:
        for m in models:
            if spec == m["name"] or _same(spec, m["source"]):
                return m["name"]
    return None


def campaign_decision(db: Database, name: str, candidate: tuple[str, ...],
                      current: tuple[str, ...], tolerance: float = 0.0) -> dict[str, Any]:
    """The gate's decision, shaped like promote's metric decision."""
    if not 0 <= tolerance < 0.5:
        raise UsageError("--campaign-tolerance is a win-rate margin in [0, 0.5)",
                         where="--campaign-tolerance", got=tolerance, fix="e.g. 0.1")
    camp = campaigns.get_campaign(db, name)
    models = json.loads(camp.models)
    cand, cur = match_model(models, *candidate), match_model(models, *current)
    for found, given, option in ((cand, candidate, "CANDIDATE"), (cur, current, "--over")):
        if found is None:
            raise UsageError(f"the model is not in campaign {name}", where=option,
                             got=given[0], fix="name it as the campaign does: " + ", ".join(
                                 f"{m['name']} ({m['source']})" for m in models))
    res = campaigns.results(db, camp)
    a, b = sorted((cand, cur))
    pair = next((p for p in res["pairs"] if (p["a"], p["b"]) == (a, b)), None)
    if pair is None or not pair["items"]:
        raise UsageError(f"campaign {name} has no ratings of {cand} against {cur}",
                         where="--campaign", fix="rate some items first (`tunesmith humaneval "
                         f"status {name}` shows progress)")
    rate, lo, hi = pair["rate"], pair["low"], pair["high"]
    if a != cand:
        rate, lo, hi = 1 - rate, 1 - hi, 1 - lo
    ok = lo >= 0.5 - tolerance
    wins = pair["wins"] if a == cand else pair["losses"]
    losses = pair["losses"] if a == cand else pair["wins"]
    why = (f"human win rate in campaign {name}: {cand} over {cur} {rate:.3f} on "
           f"{pair['items']} items ({wins} won, {losses} lost, {pair['ties']} even), 95% CI "
           f"[{lo:.3f}, {hi:.3f}]; lower bound {lo:.3f} {'≥' if ok else '<'} "
           f"{0.5 - tolerance:.3f} (0.5 − tolerance)")
    return {"metric": f"human win rate ({name})", "higher_is_better": True,
            "candidate_value": rate, "current_value": 1 - rate, "improvement": rate - 0.5,
            "ci95": [lo, hi], "p_value": None, "tolerance": tolerance, "rule": RULE,
            "promote": bool(ok), "reason": why, "campaign": name, "items": pair["items"]}


def campaign_gate(db_url: str, name: str, candidate: str, current: str,
                  tolerance: float = 0.0) -> Callable[[str, str], dict[str, Any]]:
    """A gate for ``PromoteRequest.gates``: called with the resolved sources of both."""
    def gate(candidate_source: str, current_source: str) -> dict[str, Any]:
        db = Database(db_url)
        try:
            return campaign_decision(db, name, (candidate, candidate_source),
                                     (current, current_source), tolerance)
        finally:
            db.dispose()
    return gate
