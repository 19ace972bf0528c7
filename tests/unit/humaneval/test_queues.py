"""Annotation queues: sources, hand-out (leases, overlap, skip/unsure, expiry), concurrency,
agreement — on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tunesmith.errors import DataError, UsageError
from tunesmith.humaneval import people, queues, work
from tunesmith.humaneval.queues import Source, create_queue, from_file, from_relabel
from tunesmith.serve.db import Database


def _rows(path: Path, n: int, labelled_every: int = 0) -> Path:
    rows = []
    for i in range(n):
        row = {"text": f"review number {i}"}
        if labelled_every and i % labelled_every == 0:
            row["label"] = "pos" if i % 2 else "neg"
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _queue(db: Database, tmp_path: Path, n: int = 10, overlap: int = 1, name: str = "q"):
    inp = from_file(_rows(tmp_path / f"{name}.jsonl", n))
    return create_queue(db, name, inp, labels=["pos", "neg"], overlap=overlap)


def test_from_file_queues_only_unlabelled_rows(tmp_path: Path, db: Database) -> None:
    src = _rows(tmp_path / "d.jsonl", 9, labelled_every=3)
    inp = from_file(src)
    assert inp.task == "classification" and [r.index for r in inp.rows] == [1, 2, 4, 5, 7, 8]
    assert inp.labels == ["neg", "pos"]  # the labels already in the file
    assert len(from_file(src, include_labelled=True).rows) == 9
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n"
                       + json.dumps({"prompt": "Add 2 and 2.", "completion": "4"}) + "\n")
    sft = from_file(prompts)
    assert sft.task == "sft" and sft.rows[1].draft == "4"
    assert sft.rows[0].prompt == [{"role": "user", "content": "Hi"}]
    with pytest.raises(UsageError, match="needs its label set"):
        create_queue(db, "x", from_file(_rows(tmp_path / "e.jsonl", 3)))
    with pytest.raises(UsageError, match="needs the model's probabilities"):
        create_queue(db, "x", inp, order="uncertainty")


def test_relabel_queue_keeps_the_model_suggestion(tmp_path: Path, db: Database) -> None:
    path = tmp_path / "errors.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": "neg", "review": {
        "rank": i + 1, "where": f"d.jsonl:{i + 1}", "gold": "neg", "predicted": "pos",
        "confidence": c}}) + "\n" for i, c in enumerate([0.9, 0.55, 0.7])))
    inp = from_relabel(path)
    assert inp.task == "classification" and inp.labels == ["neg", "pos"]
    q = create_queue(db, "relabel", inp, order="uncertainty")
    alice = people.named(db, "queue", q.id, "alice")
    first = queues.next_row(db, q, alice)
    assert first["suggestion"] == "pos" and first["probability"] == 0.55  # least sure first
    with pytest.raises(DataError, match="not a relabel queue"):
        from_relabel(_rows(tmp_path / "plain.jsonl", 2))


def test_leases_overlap_skip_and_expiry(tmp_path: Path, db: Database) -> None:
    q = _queue(db, tmp_path, n=3)
    a, b = (people.named(db, "queue", q.id, n) for n in ("a", "b"))
    ra = queues.next_row(db, q, a)
    assert queues.next_row(db, q, a)["id"] == ra["id"]  # a reload shows the same row
    rb = queues.next_row(db, q, b)
    assert rb["id"] != ra["id"]
    queues.save_label(db, q, b, rb["id"], "skipped")  # b passes: the row goes to someone else
    rb2 = queues.next_row(db, q, b)
    assert rb2["id"] not in (ra["id"], rb["id"])
    queues.save_label(db, q, b, rb2["id"], "labelled", label="pos")
    assert queues.next_row(db, q, b) is None  # the skipped row is not b's again; a holds one
    # a's lease expires: the row goes to b
    assert work.claim(db, work.ROWS, q.id, b.id, 1, now=1e12) == ra["id"]
    # a saves anyway: nothing is lost
    queues.save_label(db, q, a, ra["id"], "labelled", label="neg")
    c = people.named(db, "queue", q.id, "c")
    assert queues.next_row(db, q, c)["id"] == rb["id"]  # the row b skipped
    queues.save_label(db, q, c, rb["id"], "unsure")
    prog = queues.progress(db, q)
    assert prog["labelled"] == 2 and prog["skipped"] == 1 and prog["unsure"] == 1
    with pytest.raises(UsageError, match="not one of this queue's labels"):
        queues.save_label(db, q, c, rb["id"], "labelled", label="maybe")


def test_double_annotation_and_agreement(tmp_path: Path, db: Database) -> None:
    q = _queue(db, tmp_path, n=4, overlap=2)
    a, b, c = (people.named(db, "queue", q.id, n) for n in ("a", "b", "c"))
    seen: dict[str, list[int]] = {"a": [], "b": []}
    for who, person in (("a", a), ("b", b)):
        while (row := queues.next_row(db, q, person)) is not None:
            seen[who].append(row["id"])
            label = "pos" if who == "a" or row["position"] < 3 else "neg"
            queues.save_label(db, q, person, row["id"], "labelled", label=label)
    assert sorted(seen["a"]) == sorted(seen["b"])  # both annotators saw every row
    assert queues.next_row(db, q, c) is None  # two labels each: nothing left for a third
    ag = queues.agreement(db, q)
    assert ag["items"] == 4 and ag["pairs"][0]["agree"] == pytest.approx(0.75)


def test_keys_only_work_for_their_queue(tmp_path: Path, db: Database) -> None:
    q1, q2 = _queue(db, tmp_path, name="q1"), _queue(db, tmp_path, name="q2")
    person, key = people.add_person(db, "queue", q1.id, "ann")
    assert people.by_key(db, key).id == person.id and key.startswith("tsr_")
    assert people.by_key(db, key + "x") is None and people.by_key(db, None) is None
    with pytest.raises(UsageError, match="this key is not for this queue"):
        queues.next_row(db, q2, person)
    people.revoke(db, person.id)
    assert people.by_key(db, key) is None
    with pytest.raises(UsageError, match="already a"):
        people.add_person(db, "queue", q1.id, "ann")


def test_two_annotators_never_get_the_same_row(tmp_path: Path, any_db: Database) -> None:
    """Two annotators labelling as fast as they can: every row labelled exactly once, no row
    handed to both, no label lost; then eight racing claims get eight different rows."""
    db = any_db
    q = _queue(db, tmp_path, n=60)
    annotators = [people.named(db, "queue", q.id, n) for n in ("a", "b")]
    handed: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def annotate(person) -> None:
        try:
            start.wait()
            while (row := queues.next_row(db, q, person)) is not None:
                handed[person.name].append(row["id"])
                queues.save_label(db, q, person, row["id"], "labelled", label="pos")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=annotate, args=(p,)) for p in annotators]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not set(handed["a"]) & set(handed["b"])
    assert len(handed["a"]) + len(handed["b"]) == 60
    labels = queues.labels_by_row(db, q)
    assert len(labels) == 60 and all(len(v) == 1 for v in labels.values())
    assert queues.progress(db, q)["complete"] == 60

    q2 = _queue(db, tmp_path, n=8, name="race")
    racers = [people.named(db, "queue", q2.id, f"r{i}") for i in range(8)]
    got: list[int | None] = [None] * 8
    barrier = threading.Barrier(8)

    def grab(i: int) -> None:
        barrier.wait()
        row = queues.next_row(db, q2, racers[i])
        got[i] = row["id"] if row else None

    ts = [threading.Thread(target=grab, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert None not in got and len(set(got)) == 8


def test_sources_that_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n" + json.dumps({"other": 1}) + "\n")
    with pytest.raises(DataError) as exc:
        from_file(bad, task="classification")
    assert "bad.jsonl:2" in exc.value.where
    assert Source(0, "w", {}, "t").suggestion is None
