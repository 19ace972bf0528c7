"""Annotation queues: build one from unlabeled data, ``tunesmith analyze``'s relabel queue or
served completions with negative feedback; hand rows out; save labels; report progress and
agreement.

- **classification**: each row's text, the label set, and (with ``--model``, or from the
  relabel queue's ``review``) the model's suggested label with its probability. With
  ``order='uncertainty'`` (lowest top probability first) or ``'entropy'`` (highest entropy
  first) the queue is active learning: the rows the model is least sure of come first.
- **sft**: the prompt (rendered with the model's chat template when a model is given) and a
  draft answer to edit (the row's answer, the analyzed reference, or nothing).

Annotators answer a label, an answer text, ``skip`` or ``unsure``; skip and unsure free the
row for someone else. ``overlap`` annotators label each row (2+ gives agreement figures).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from tunesmith.data.readers import read_rows
from tunesmith.errors import DataError, UsageError
from tunesmith.humaneval import people, work
from tunesmith.humaneval.models import STATUSES, Label, Person, Queue, QueueRow, dumps
from tunesmith.humaneval.stats import agreement as stats_agreement
from tunesmith.inference.prompts import prompt_of
from tunesmith.io import file_sha256
from tunesmith.serve.db import Database

ORDERS = ("file", "uncertainty", "entropy")
MAX_ANSWER = 100_000


@dataclass
class Source:
    """One row to queue: the original record and what the annotator sees."""

    index: int
    where: str
    data: dict[str, Any]
    text: str
    prompt: Any = None
    draft: str | None = None
    suggestion: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    rendered: str | None = None  # the prompt through the model's chat template


@dataclass
class QueueInput:
    """A queue before it is stored."""

    task: str  # classification | sft
    rows: list[Source]
    source: str
    source_kind: str
    labels: list[str] = field(default_factory=list)
    text_field: str = "text"
    label_field: str = "label"
    sha256: str | None = None


def answer_of(row: dict[str, Any]) -> str | None:
    msgs = row.get("messages")
    if isinstance(msgs, list) and msgs and msgs[-1].get("role") == "assistant":
        return str(msgs[-1].get("content") or "")
    for key in ("completion", "output", "response"):
        if isinstance(row.get(key), str):
            return row[key]
    return None


def _is_classification(row: dict[str, Any], text_field: str) -> bool:
    return isinstance(row.get(text_field), str) and not any(
        k in row for k in ("messages", "prompt", "instruction"))


def from_file(path: Path, task: str | None = None, text_field: str = "text",
              label_field: str = "label", include_labelled: bool = False) -> QueueInput:
    """Classification rows without a label (all rows with ``include_labelled``), or prompts
    (with their answer, if any, as the draft)."""
    rows = read_rows(path)
    task = task or ("classification" if _is_classification(rows[0].data, text_field)
                    else "sft")
    out: list[Source] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        d = row.data
        if task == "classification":
            text = d.get(text_field)
            if not isinstance(text, str):
                raise DataError(f"row has no `{text_field}` text", where=row.where,
                                got=sorted(d), fix="name the text field with --text-field")
            label = d.get(label_field)
            if label not in (None, ""):
                seen.add(str(label))
                if not include_labelled:
                    continue
            out.append(Source(i, row.where, d, text))
        else:
            prompt = prompt_of(d, row.where)
            out.append(Source(i, row.where, d, _prompt_text(prompt), prompt, answer_of(d)))
    if not out:
        raise DataError("no rows to annotate: every row already has a label", where=str(path),
                        fix="pass --all to queue labelled rows too")
    return QueueInput(task, out, str(Path(path).resolve()), "file", sorted(seen), text_field,
                      label_field, file_sha256(path))


def from_relabel(path: Path) -> QueueInput:
    """``tunesmith analyze``'s ``errors.jsonl``: the suggestion is what the model predicted."""
    rows = read_rows(path)
    review = rows[0].data.get("review")
    if not isinstance(review, dict):
        raise DataError("not a relabel queue (rows have no `review` object)", where=rows[0].where,
                        fix="pass the errors.jsonl written by `tunesmith analyze`")
    task = "classification" if "predicted" in review else "sft"
    out = []
    labels: set[str] = set()
    for i, row in enumerate(rows):
        d, rv = row.data, row.data.get("review") or {}
        if task == "classification":
            labels.update(str(x) for x in (rv.get("gold"), rv.get("predicted")) if x is not None)
            out.append(Source(i, row.where, d, str(d.get("text", "")),
                              suggestion=str(rv.get("predicted")),
                              probability=rv.get("confidence")))
        else:
            prompt = prompt_of(d, row.where)
            out.append(Source(i, row.where, d, _prompt_text(prompt), prompt, answer_of(d)))
    return QueueInput(task, out, str(Path(path).resolve()), "relabel", sorted(labels),
                      sha256=file_sha256(path))


def from_feedback(choices: list[Any]) -> QueueInput:
    """Served completions rated down (``serve.feedback.export.collect``): write the answer
    the model should have given; the bad output is shown beside it."""
    out = []
    for i, cf in enumerate(c for c in choices if c.bad):
        data = {"prompt": cf.prompt, "rejected_output": cf.output,
                "provenance": cf.provenance()}
        out.append(Source(i, f"{cf.completion_id}#{cf.index}", data, _prompt_text(cf.prompt),
                          cf.prompt, cf.correction))
    if not out:
        raise DataError("no served completion was rated down", where="feedback",
                        fix="collect feedback with POST /v1/feedback (rating: down) first")
    return QueueInput("sft", out, "feedback", "feedback")


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)


def suggest(inp: QueueInput, model: str) -> None:
    """Pre-label with a classifier (its labels become the label set when none was given),
    or render SFT prompts with a chat model's template."""
    # deferred: loads torch and transformers
    from tunesmith.inference.generate import render_prompt
    from tunesmith.inference.predict import load_predictor
    from tunesmith.models.artifacts import resolve_artifact
    from tunesmith.models.load import load_tokenizer

    if inp.task == "classification":
        predictor = load_predictor(model)
        preds = predictor.predict([r.text for r in inp.rows])
        for r, p in zip(inp.rows, preds):
            r.suggestion, r.probability = str(p.label), float(p.score)
            r.probabilities = dict(p.probabilities)
        inp.labels = inp.labels or list(predictor.labels)
    else:
        tok = load_tokenizer(resolve_artifact(model))
        for r in inp.rows:
            r.rendered = render_prompt(tok, r.prompt)


def _uncertainty(r: Source, order: str) -> float | None:
    if order == "entropy" and r.probabilities:
        return -sum(p * math.log(p) for p in r.probabilities.values() if p > 0)
    if r.probability is not None:
        return 1.0 - r.probability
    return None


def create_queue(db: Database, name: str, inp: QueueInput, labels: list[str] | None = None,
                 overlap: int = 1, order: str = "file", model: str | None = None) -> Queue:
    """Store a queue and its rows (in the order annotators will get them)."""
    people.check_slug(name, "queue")
    if order not in ORDERS:
        raise UsageError("unknown --order", where="--order", got=order,
                         fix=f"one of {', '.join(ORDERS)}")
    if overlap < 1:
        raise UsageError("--overlap must be at least 1", where="--overlap", got=overlap,
                         fix="1 (each row labelled once) or 2+ (agreement)")
    label_set = list(labels or inp.labels)
    if inp.task == "classification" and len(label_set) < 2:
        raise UsageError("a classification queue needs its label set", where="--labels",
                         got=label_set, fix="e.g. --labels positive,negative,neutral (or "
                         "--model a classifier, whose labels are used)")
    if order != "file" and all(r.probability is None for r in inp.rows):
        raise UsageError(f"--order {order} needs the model's probabilities", where="--order",
                         fix="pass --model CLASSIFIER (or queue a relabel file)")
    scored = [(_uncertainty(r, order), r) for r in inp.rows]
    if order != "file":
        scored.sort(key=lambda x: (-(x[0] if x[0] is not None else -1.0), x[1].index))
    with db.session() as s:
        if s.scalar(select(Queue.id).where(Queue.name == name)) is not None:
            raise UsageError("a queue of that name exists", where=name,
                             fix="choose another name (`tunesmith annotate status` lists them)")
        q = Queue(name=name, created_at=time.time(), task=inp.task, labels=dumps(label_set),
                  source=inp.source, source_kind=inp.source_kind, source_sha256=inp.sha256,
                  text_field=inp.text_field, label_field=inp.label_field, overlap=overlap,
                  order=order, model=model)
        s.add(q)
        s.flush()
        s.add_all(QueueRow(queue_id=q.id, position=pos, row_index=r.index, where=r.where,
                           data=dumps(r.data), text=r.text,
                           prompt=None if r.prompt is None else dumps(r.prompt),
                           rendered=r.rendered, draft=r.draft, suggestion=r.suggestion,
                           probability=r.probability, uncertainty=u, done=0, complete=False)
                  for pos, (u, r) in enumerate(scored))
        return q


def get_queue(db: Database, name: str) -> Queue:
    return people.find_named(db, Queue, name, "queue", "tunesmith annotate create")


def row_view(db: Database, row_id: int) -> dict[str, Any]:
    with db.session() as s:
        r = s.get(QueueRow, row_id)
        return {"id": r.id, "position": r.position, "where": r.where, "text": r.text,
                "data": json.loads(r.data),
                "prompt": json.loads(r.prompt) if r.prompt else None, "rendered": r.rendered,
                "draft": r.draft, "suggestion": r.suggestion, "probability": r.probability}


def next_row(db: Database, q: Queue, person: Person) -> dict[str, Any] | None:
    people.check_member(person, "queue", q.id)
    row_id = work.claim(db, work.ROWS, q.id, person.id, q.overlap)
    return None if row_id is None else row_view(db, row_id)


def save_label(db: Database, q: Queue, person: Person, row_id: int, status: str,
               label: str | None = None, answer: str | None = None) -> Label:
    """Save (or revise) one annotation; durable when this returns."""
    people.check_member(person, "queue", q.id)
    if status not in STATUSES:
        raise UsageError("unknown status", where="status", got=status,
                         fix=f"one of {', '.join(STATUSES)}")
    if status == "labelled":
        if q.task == "classification" and label not in q.label_set():
            raise UsageError("not one of this queue's labels", where="label", got=label,
                             fix=f"one of {', '.join(q.label_set())}")
        if q.task == "sft" and not (answer or "").strip():
            raise UsageError("the answer is empty", where="answer",
                             fix="write the answer (or skip the row)")
    now = time.time()
    with db.session() as s:
        row = s.get(QueueRow, row_id)
        if row is None or row.queue_id != q.id:
            raise UsageError("no such row in this queue", where=q.name, got=row_id,
                             fix="label the row the page shows (reload it)")
        if status == "labelled":
            work.finish(s, work.ROWS, q.id, row_id, person.id, q.overlap)
        else:
            work.release(s, work.ROWS, q.id, row_id, person.id)
        lab = s.scalar(select(Label).where(Label.row_id == row_id,
                                           Label.person_id == person.id))
        if lab is None:
            lab = Label(queue_id=q.id, row_id=row_id, person_id=person.id, created_at=now)
            s.add(lab)
        lab.status, lab.updated_at = status, now
        lab.label = label if status == "labelled" and q.task == "classification" else None
        lab.answer = (answer or "")[:MAX_ANSWER] if status == "labelled" and q.task == "sft" \
            else None
        s.flush()
        return lab


def progress(db: Database, q: Queue) -> dict[str, Any]:
    with db.session() as s:
        total = s.scalar(select(func.count()).select_from(QueueRow).where(
            QueueRow.queue_id == q.id)) or 0
        complete = s.scalar(select(func.count()).select_from(QueueRow).where(
            QueueRow.queue_id == q.id, QueueRow.complete.is_(True))) or 0
        per = work.progress(s, work.ROWS, q.id)
        statuses = dict(s.execute(select(Label.status, func.count()).where(
            Label.queue_id == q.id).group_by(Label.status)).all())
    who = people.people(db, "queue", q.id)
    return {"rows": total, "complete": complete, "needed": total * q.overlap,
            "labelled": sum(per.values()), "skipped": statuses.get("skipped", 0),
            "unsure": statuses.get("unsure", 0),
            "annotators": [{"id": p.id, "name": p.name, "labelled": per.get(p.id, 0),
                            "key": p.key_hash is not None, "revoked": p.revoked} for p in who]}


def labels_by_row(db: Database, q: Queue) -> dict[int, list[dict[str, Any]]]:
    """Every saved annotation, grouped by row id (oldest first)."""
    with db.session() as s:
        labs = list(s.scalars(select(Label).where(Label.queue_id == q.id)
                              .order_by(Label.row_id, Label.id)))
    names = people.names(db, {lab.person_id for lab in labs})
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for lab in labs:
        out[lab.row_id].append({"annotator": names.get(lab.person_id), "status": lab.status,
                                "label": lab.label, "answer": lab.answer,
                                "time": lab.updated_at})
    return out


def agreement(db: Database, q: Queue) -> dict[str, Any]:
    """Fleiss' kappa over rows labelled two or more times, Cohen's kappa per annotator pair
    (classification only: free-text answers have no chance-corrected agreement)."""
    if q.task != "classification":
        return {"items": 0, "fleiss": None, "pairs": []}
    return stats_agreement([[(x["annotator"], x["label"]) for x in labs
                             if x["status"] == "labelled"]
                            for labs in labels_by_row(db, q).values()])


def majority(labs: list[dict[str, Any]]) -> str | None:
    """The label most annotators chose (None on a tie or when nobody labelled)."""
    counts = Counter(x["label"] for x in labs if x["status"] == "labelled")
    top = counts.most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1]):
        return None
    return top[0][0]
