"""Human judgements → training data, each row with its provenance.

Campaigns (``tunesmith feedback export --campaign NAME`` and ``humaneval export``):

- ``dpo``: per item, the reviewers' verdicts in model terms are averaged (1 better, 0
  worse, ½ tie or both bad); the answer preferred on balance is ``chosen`` over the other.
  Every correction is also ``chosen`` over each answer its reviewer did not prefer. An item
  split evenly gives no pair.
- ``sft``: one row per correction (the reviewer's corrected answer is the answer).
- ``kto``: one row per answer per rating: the preferred answer ``label: true``, the other
  ``false``; both bad: both ``false``; a tie: none; a correction: ``true``.

The prompt keeps its form: a message list becomes conversational rows (``prompt`` messages,
``chosen``/``rejected``/``completion`` as assistant turns), a plain string stays plain.

Queues (``tunesmith annotate export``) write a **new dataset version**: a file source is
re-read and every row comes out with the label (the annotators' majority; a tie is left
out and counted) or the answer (the latest saved) filled in, rows nobody labelled keep
what they had (and are dropped when they had no label), and each annotated row carries
``provenance``. The source file is never written. Beside the output goes ``NAME.json``:
the source's sha256, counts and time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunesmith.data.readers import read_rows
from tunesmith.errors import UsageError
from tunesmith.humaneval import campaigns, queues
from tunesmith.humaneval.models import Campaign, Queue, QueueRow
from tunesmith.io import atomic_write_text, file_sha256
from tunesmith.serve.db import Database

FORMATS = ("dpo", "sft", "kto")


def _turn(prompt: Any, text: str) -> Any:
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def _prov(camp: Campaign, r: dict[str, Any]) -> dict[str, Any]:
    return {"campaign": camp.name, "item": r["item"], "prompt_index": r["prompt_index"],
            "reviewer": r["reviewer"], "rating_id": r["rating_id"], "choice": r["choice"],
            "time": r["time"], **({"comment": r["comment"]} if r["comment"] else {})}


def _preferred(r: dict[str, Any]) -> tuple[str, str, str, str] | None:
    """(winner model, winner text, loser model, loser text) of one rating, if any."""
    if r["choice"] == "left":
        return r["left_model"], r["left"], r["right_model"], r["right"]
    if r["choice"] == "right":
        return r["right_model"], r["right"], r["left_model"], r["left"]
    return None


def dpo_rows(camp: Campaign, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in campaigns.item_scores(rows).values():
        rs = item["ratings"]
        r0 = rs[0]
        text = {r0["left_model"]: r0["left"], r0["right_model"]: r0["right"]}
        prompt, pairs = r0["prompt"], []
        if item["score"] != 0.5:
            win, lose = (item["a"], item["b"]) if item["score"] > 0.5 else (item["b"], item["a"])
            pairs.append((text[win], text[lose], {
                "source": "rating", "chosen_model": win, "rejected_model": lose,
                "score": item["score"], "ratings": [_prov(camp, r) for r in rs]}))
        for r in rs:
            if not r["correction"]:
                continue
            pref = _preferred(r)
            rejected = [(m, t) for m, t in text.items() if pref is None or m != pref[0]]
            for model, t in rejected:
                pairs.append((r["correction"], t, {"source": "correction",
                                                   "rejected_model": model,
                                                   "ratings": [_prov(camp, r)]}))
        for chosen, rejected_text, prov in pairs:
            if chosen.strip() and rejected_text.strip() and chosen.strip() != rejected_text.strip():
                out.append({"prompt": prompt, "chosen": _turn(prompt, chosen),
                            "rejected": _turn(prompt, rejected_text), "provenance": prov})
    return out


def sft_rows(camp: Campaign, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if not r["correction"]:
            continue
        prov = {**_prov(camp, r), "source": "correction"}
        if isinstance(r["prompt"], list):
            out.append({"messages": [*r["prompt"], {"role": "assistant",
                                                    "content": r["correction"]}],
                        "provenance": prov})
        else:
            out.append({"prompt": r["prompt"], "completion": r["correction"], "provenance": prov})
    return out


def kto_rows(camp: Campaign, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        judged: list[tuple[str, bool, str]] = []
        pref = _preferred(r)
        if pref is not None:
            judged += [(pref[1], True, pref[0]), (pref[3], False, pref[2])]
        elif r["choice"] == "both_bad":
            judged += [(r["left"], False, r["left_model"]), (r["right"], False, r["right_model"])]
        if r["correction"]:
            judged.append((r["correction"], True, "correction"))
        for text, good, model in judged:
            if text.strip():
                out.append({"prompt": r["prompt"], "completion": _turn(r["prompt"], text),
                            "label": good, "provenance": {**_prov(camp, r), "model": model}})
    return out


ROWS = {"dpo": dpo_rows, "sft": sft_rows, "kto": kto_rows}


def campaign_rows(db: Database, name: str, fmt: str) -> list[dict[str, Any]]:
    if fmt not in FORMATS:
        raise UsageError("unknown --format", where="--format", got=fmt,
                         fix=f"use {', '.join(FORMATS)}")
    camp = campaigns.get_campaign(db, name)
    return ROWS[fmt](camp, campaigns.ratings(db, camp))


def write_jsonl(output: Path, rows: list[dict[str, Any]]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def export_campaign(db_url: str, name: str, output: Path, fmt: str) -> int:
    """``feedback export --campaign``: write the rows atomically, return how many."""
    db = Database(db_url)
    try:
        rows = campaign_rows(db, name, fmt)
    finally:
        db.dispose()
    write_jsonl(output, rows)
    return len(rows)


# -- queues -------------------------------------------------------------------------------------
def _annotated(q: Queue, data: dict[str, Any], labs: list[dict[str, Any]]
               ) -> dict[str, Any] | None:
    """The row with its new label or answer, or None when the annotators gave none."""
    row = {k: v for k, v in data.items() if k not in ("review", "provenance",
                                                       "rejected_output")}
    if q.task == "classification":
        label = queues.majority(labs)
        if label is None:
            return None
        row[q.label_field] = label
        return row
    answers = [x for x in labs if x["status"] == "labelled" and x["answer"]]
    if not answers:
        return None
    answer = max(answers, key=lambda x: x["time"])["answer"]
    prompt = data.get("prompt")
    if isinstance(data.get("messages"), list):
        msgs = list(data["messages"])
        while msgs and msgs[-1].get("role") == "assistant":
            msgs.pop()
        return {**{k: v for k, v in row.items() if k not in ("completion", "output")},
                "messages": [*msgs, {"role": "assistant", "content": answer}]}
    if isinstance(prompt, list):
        return {"messages": [*prompt, {"role": "assistant", "content": answer}]}
    if "instruction" in data:
        return {**row, "output": answer}
    return {**{k: v for k, v in row.items() if k != "completion"}, "completion": answer}


def _trainable(q: Queue, row: dict[str, Any]) -> bool:
    if q.task == "classification":
        return row.get(q.label_field) not in (None, "")
    return queues.answer_of(row) is not None


def export_queue(db: Database, name: str, output: Path) -> dict[str, Any]:
    """Write the queue's new dataset version to ``output`` (JSONL) and its manifest beside
    it; return the manifest."""
    q = queues.get_queue(db, name)
    by_row = queues.labels_by_row(db, q)
    with db.session() as s:
        stored = {r.row_index: r for r in s.scalars(select(QueueRow).where(
            QueueRow.queue_id == q.id).order_by(QueueRow.row_index))}
    source = Path(q.source)
    if q.source_kind == "file" and output.resolve() == source.resolve():
        raise UsageError("the export would overwrite its source file", where=str(output),
                         fix="write the new version to another file: the source is never "
                         "modified")
    changed = None
    base: list[dict[str, Any]] | None = None
    if q.source_kind == "file" and source.exists():
        changed = file_sha256(source) != q.source_sha256
        if not changed:
            base = [r.data for r in read_rows(source)]
    out, annotated, unresolved = [], 0, 0
    indices = range(len(base)) if base is not None else sorted(stored)
    for i in indices:
        qr = stored.get(i)
        original = base[i] if base is not None else json.loads(qr.data)
        labs = by_row.get(qr.id, []) if qr is not None else []
        new = _annotated(q, original, labs) if labs else None
        if new is not None:
            annotated += 1
            new["provenance"] = {"queue": q.name, "row": i, "where": qr.where,
                                 "source": q.source, "annotations": labs,
                                 "time": max(x["time"] for x in labs)}
            out.append(new)
            continue
        if labs and any(x["status"] == "labelled" for x in labs):
            unresolved += 1
        if base is not None and _trainable(q, original):
            out.append(original)  # not (or not yet) annotated: kept as it was
    write_jsonl(output, out)
    manifest = {"queue": q.name, "task": q.task, "source": q.source,
                "source_sha256": q.source_sha256, "source_changed": changed,
                "rows": len(out), "annotated": annotated, "unresolved_ties": unresolved,
                "labels": q.label_set(), "output": str(output), "time": time.time()}
    atomic_write_text(output.with_suffix(".json"), json.dumps(manifest, indent=1) + "\n")
    return manifest
