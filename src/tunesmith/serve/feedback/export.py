"""Feedback → the next training set: SFT rows from corrections and upvotes, DPO pairs.

For each choice of each stored completion the feedback rows are folded (the latest rating
or score wins; the latest correction wins). A choice is *good* when rated up (or scored
at least 0.5) and *bad* when rated down (or scored below 0.5).

- ``sft``: one row per corrected choice (the correction is the answer) and per good choice
  without a correction (its output is the answer). Chat completions become
  ``{"messages": [... prompt ..., {"role": "assistant", ...}]}``, text completions
  ``{"prompt", "completion"}``: the formats ``tunesmith train`` and ``data prepare`` read.
- ``dpo``: completions are grouped by identical prompt (across requests and models); every
  preferred answer (a correction, or a good output) is paired with every bad output of the
  group: ``{"prompt": [...messages...], "chosen": [{"role": "assistant", ...}],
  "rejected": [...]}`` (TRL's conversational preference format; plain strings for text
  completions).
- ``kto``: one row per rated choice — ``{"prompt", "completion", "label"}`` with ``label``
  true for a good choice, false for a bad one — plus a desirable row per correction (TRL's
  unpaired preference format, what ``task: kto`` reads). Single ratings need no pairing,
  so nothing rated is lost.

Every row carries ``provenance`` (completion ids, feedback ids, model, time) so a
training example can be traced back to the requests that produced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunesmith.io import atomic_write_text
from tunesmith.serve.api.completions import CompletionRecord
from tunesmith.serve.db import Database
from tunesmith.serve.feedback.routes import FeedbackRecord


@dataclass
class ChoiceFeedback:
    """Folded feedback on one choice of one completion."""

    completion_id: str
    index: int
    model: str
    kind: str
    prompt: Any
    output: str
    time: float
    rating: int | None = None  # +1 / -1 from rating or score
    correction: str | None = None
    comment: str | None = None
    feedback_ids: list[str] = field(default_factory=list)

    @property
    def good(self) -> bool:
        return self.rating is not None and self.rating > 0

    @property
    def bad(self) -> bool:
        return self.rating is not None and self.rating < 0

    def provenance(self) -> dict[str, Any]:
        return {"completion_id": self.completion_id, "choice_index": self.index,
                "model": self.model, "feedback_ids": self.feedback_ids, "time": self.time,
                **({"comment": self.comment} if self.comment else {})}


def collect(db: Database, model: str | None = None, kind: str | None = None
            ) -> list[ChoiceFeedback]:
    """Every choice that received feedback, in completion time order."""
    q = select(FeedbackRecord, CompletionRecord).join(
        CompletionRecord, FeedbackRecord.completion_id == CompletionRecord.id).order_by(
        CompletionRecord.time, FeedbackRecord.time)
    if model:
        q = q.where(CompletionRecord.model == model)
    if kind:
        q = q.where(CompletionRecord.kind == kind)
    folded: dict[tuple[str, int], ChoiceFeedback] = {}
    with db.session() as s:
        for fb, comp in s.execute(q).all():
            key = (comp.id, fb.choice_index)
            cf = folded.get(key)
            if cf is None:
                outputs = json.loads(comp.outputs)
                cf = folded[key] = ChoiceFeedback(comp.id, fb.choice_index, comp.model,
                                                  comp.kind, json.loads(comp.prompt),
                                                  outputs[fb.choice_index], comp.time)
            if fb.rating is not None:
                cf.rating = fb.rating
            elif fb.score is not None:
                cf.rating = 1 if fb.score >= 0.5 else -1
            if fb.correction:
                cf.correction = fb.correction
            if fb.comment:
                cf.comment = fb.comment
            cf.feedback_ids.append(fb.id)
    return list(folded.values())


def sft_rows(items: list[ChoiceFeedback]) -> list[dict[str, Any]]:
    rows = []
    for cf in items:
        answer = cf.correction or (cf.output if cf.good else None)
        if not answer or not answer.strip():
            continue
        prov = {**cf.provenance(), "source": "correction" if cf.correction else "upvoted"}
        if cf.kind == "chat":
            rows.append({"messages": list(cf.prompt) + [{"role": "assistant",
                                                         "content": answer}],
                         "provenance": prov})
        else:
            rows.append({"prompt": cf.prompt, "completion": answer, "provenance": prov})
    return rows


def dpo_rows(items: list[ChoiceFeedback]) -> list[dict[str, Any]]:
    groups: dict[str, list[ChoiceFeedback]] = {}
    for cf in items:
        groups.setdefault(json.dumps(cf.prompt, sort_keys=True, ensure_ascii=False),
                          []).append(cf)
    rows = []
    for members in groups.values():
        preferred = [(cf.correction, cf, "correction") for cf in members if cf.correction]
        preferred += [(cf.output, cf, "upvoted") for cf in members if cf.good and cf.output]
        rejected = [cf for cf in members if cf.bad]
        seen = set()
        for text, src, how in preferred:
            for bad in rejected:
                # an empty or identical pair teaches nothing (and the DPO reader refuses it)
                if (not bad.output.strip() or text.strip() == bad.output.strip()
                        or (text, bad.output) in seen):
                    continue
                seen.add((text, bad.output))
                prov = {"chosen": {**src.provenance(), "source": how},
                        "rejected": bad.provenance()}
                if src.kind == "chat":
                    rows.append({"prompt": list(src.prompt),
                                 "chosen": [{"role": "assistant", "content": text}],
                                 "rejected": [{"role": "assistant", "content": bad.output}],
                                 "provenance": prov})
                else:
                    rows.append({"prompt": src.prompt, "chosen": text,
                                 "rejected": bad.output, "provenance": prov})
    return rows


def kto_rows(items: list[ChoiceFeedback]) -> list[dict[str, Any]]:
    rows = []
    for cf in items:
        prompt = list(cf.prompt) if cf.kind == "chat" else cf.prompt
        rated = [(cf.output, cf.good, "upvoted" if cf.good else "downvoted")] \
            if cf.rating is not None and cf.output.strip() else []
        if cf.correction and cf.correction.strip():
            rated.append((cf.correction, True, "correction"))
        for text, good, how in rated:
            completion: Any = [{"role": "assistant", "content": text}] \
                if cf.kind == "chat" else text
            rows.append({"prompt": prompt, "completion": completion, "label": good,
                         "provenance": {**cf.provenance(), "source": how}})
    return rows


ROWS = {"sft": sft_rows, "dpo": dpo_rows, "kto": kto_rows}


def export_feedback(db_url: str, output: Path, fmt: str, model: str | None = None,
                    kind: str = "chat") -> int:
    """Write the rows (atomically) and return how many there are."""
    db = Database(db_url)
    try:
        items = collect(db, model, kind)
    finally:
        db.dispose()
    rows = ROWS[fmt](items)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)
