"""Queues → a new dataset version: labels and answers filled in, provenance per row, the
source file untouched, ties left out and counted; the `tunesmith annotate` commands; a
classifier's suggestions and active-learning order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.tiny import write_jsonl
from tests.unit.sft_support import cli
from tunesmith.errors import UsageError
from tunesmith.humaneval import people, queues
from tunesmith.humaneval.export import export_queue
from tunesmith.humaneval.queues import create_queue, from_file
from tunesmith.io import file_sha256
from tunesmith.serve.db import Database


def _label_all(db: Database, q, person, pick) -> int:
    n = 0
    while (row := queues.next_row(db, q, person)) is not None:
        status, value = pick(row)
        queues.save_label(db, q, person, row["id"], status,
                          label=value if q.task == "classification" else None,
                          answer=value if q.task == "sft" else None)
        n += 1
    return n


def test_classification_version(tmp_path: Path, db: Database) -> None:
    src = write_jsonl(tmp_path / "reviews.jsonl", [
        {"text": "great film", "label": "pos"}, {"text": "awful plot"},
        {"text": "fine acting"}, {"text": "dull"}, {"text": "boring", "label": "neg"}])
    before = file_sha256(src)
    q = create_queue(db, "rev", from_file(src), overlap=2)
    a, b = (people.named(db, "queue", q.id, n) for n in ("a", "b"))
    _label_all(db, q, a, lambda r: ("labelled", "neg") if r["text"] != "dull"
               else ("unsure", None))
    _label_all(db, q, b, lambda r: ("labelled", "neg" if r["text"] == "awful plot" else "pos"))
    m = export_queue(db, "rev", tmp_path / "v2.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "v2.jsonl").read_text().splitlines()]
    assert file_sha256(src) == before  # the source is never modified
    by_text = {r["text"]: r for r in rows}
    # kept as they were: the two labelled rows; new: "awful plot" (both neg) and "dull"
    # (only b labelled it); "fine acting" is a tie (neg vs pos) and is left out
    assert set(by_text) == {"great film", "awful plot", "dull", "boring"}
    assert by_text["awful plot"]["label"] == "neg" and by_text["dull"]["label"] == "pos"
    assert "provenance" not in by_text["great film"]
    prov = by_text["awful plot"]["provenance"]
    assert prov["queue"] == "rev" and prov["where"].endswith("reviews.jsonl:2")
    assert {x["annotator"] for x in prov["annotations"]} == {"a", "b"}
    assert m["annotated"] == 2 and m["unresolved_ties"] == 1 and m["rows"] == 4
    assert json.loads((tmp_path / "v2.json").read_text())["source_sha256"] == before
    with pytest.raises(UsageError, match="overwrite its source"):
        export_queue(db, "rev", src)


def test_sft_version(tmp_path: Path, db: Database) -> None:
    src = write_jsonl(tmp_path / "prompts.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"prompt": "Add 2 and 2.", "completion": "5"},
        {"instruction": "Name a colour."}])
    q = create_queue(db, "sft", from_file(src))
    ann = people.named(db, "queue", q.id, "ann")
    drafts = []

    def answer(row):
        drafts.append(row["draft"])
        return ("skipped", None) if "colour" in row["text"] else ("labelled", f"A{row['id']}")
    assert _label_all(db, q, ann, answer) == 3
    assert drafts == [None, "5", None]  # the row's answer is the draft to edit
    export_queue(db, "sft", tmp_path / "out.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[0]["messages"] == [{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "A1"}]
    assert rows[1]["completion"] == "A2" and rows[1]["prompt"] == "Add 2 and 2."
    assert len(rows) == 2  # the skipped prompt had no answer: not trainable
    with pytest.raises(UsageError, match="the answer is empty"):
        queues.save_label(db, q, ann, 1, "labelled", answer="  ")


def test_annotate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "u.jsonl", [{"text": f"t{i}"} for i in range(4)])
    data = tmp_path / "data"
    code, _, errs = cli(["annotate", "create", "u", "--data", str(src), "--labels", "a,b",
                         "--data-dir", str(data)], capsys)
    assert code == 0 and "4 classification rows, labels a, b" in errs, errs
    code, key, _ = cli(["annotate", "add-annotator", "u", "zoe", "--data-dir", str(data)],
                       capsys)
    assert code == 0 and key.startswith("tsr_")
    db = Database(f"sqlite:///{data / 'tunesmith.db'}")
    try:
        q = queues.get_queue(db, "u")
        zoe = people.by_key(db, key.strip())
        _label_all(db, q, zoe, lambda r: ("labelled", "a"))
    finally:
        db.dispose()
    code, out, _ = cli(["annotate", "status", "--data-dir", str(data)], capsys)
    assert code == 0 and "4 / 4" in out and "zoe 4" in out
    code, _, errs = cli(["annotate", "export", "u", "-o", str(tmp_path / "v.jsonl"),
                         "--data-dir", str(data)], capsys)
    assert code == 0 and "wrote 4 rows (4 annotated)" in errs
    code, _, errs = cli(["annotate", "create", "x", "--data-dir", str(data)], capsys)
    assert code == 2 and "exactly one of --data, --relabel or --from-feedback" in errs
    code, _, errs = cli(["annotate", "create", "fb", "--from-feedback", "--data-dir",
                         str(data)], capsys)
    assert code == 2 and "no served completion was rated down" in errs


def test_suggestions_and_active_learning(tmp_path: Path, db: Database) -> None:
    """A tiny classifier pre-labels; --order uncertainty deals its least sure rows first."""
    from tests.helpers.tiny_cls import build_tiny_bert_dir
    from tests.unit.serve.serve_support import make_classifier_run

    run = make_classifier_run(tmp_path / "sentiment", build_tiny_bert_dir(tmp_path / "bert"))
    src = write_jsonl(tmp_path / "u.jsonl", [{"text": t} for t in
                                             ("good film", "bad plot", "the movie", "nice")])
    inp = from_file(src)
    queues.suggest(inp, str(run))
    assert inp.labels == ["negative", "positive"]
    q = create_queue(db, "al", inp, order="uncertainty", model=str(run))
    ann = people.named(db, "queue", q.id, "ann")
    probs = []
    while (row := queues.next_row(db, q, ann)) is not None:
        assert row["suggestion"] in inp.labels and 0.5 <= row["probability"] <= 1
        probs.append(row["probability"])
        queues.save_label(db, q, ann, row["id"], "labelled", label=row["suggestion"])
    assert len(probs) == 4 and probs == sorted(probs)  # least sure first


def test_queue_from_served_completions_rated_down(tmp_path: Path, db: Database) -> None:
    """A completion rated down becomes an SFT row to answer; the export is a chat row with
    the feedback's provenance kept in the queue's."""
    import time

    from tunesmith.serve.api.completions import record_completion
    from tunesmith.serve.feedback.export import collect
    from tunesmith.serve.feedback.routes import FeedbackRecord

    db.create_tables()
    prompt = [{"role": "user", "content": "Where is my order?"}]
    for cid, rating in (("chatcmpl-1", -1), ("chatcmpl-2", 1)):
        record_completion(db, cid, "bot", "chat", prompt, ["No idea."], ["stop"], {}, 3, 2)
        with db.session() as s:
            s.add(FeedbackRecord(id=f"fb-{cid}", time=time.time(), completion_id=cid,
                                 choice_index=0, rating=rating))
    inp = queues.from_feedback(collect(db))
    assert len(inp.rows) == 1 and inp.rows[0].data["rejected_output"] == "No idea."
    q = create_queue(db, "fb", inp)
    ann = people.named(db, "queue", q.id, "ann")
    row = queues.next_row(db, q, ann)
    queues.save_label(db, q, ann, row["id"], "labelled", answer="Let me check: order 42.")
    export_queue(db, "fb", tmp_path / "fb.jsonl")
    (out,) = [json.loads(x) for x in (tmp_path / "fb.jsonl").read_text().splitlines()]
    assert out["messages"] == [*prompt, {"role": "assistant",
                                         "content": "Let me check: order 42."}]
    assert out["provenance"]["where"] == "chatcmpl-1#0"
