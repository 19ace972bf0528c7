"""`data inspect` / `data prepare` on NER and extractive-QA rows (issue 20, point 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tunesmith.config.schema import ExtractiveQAConfig
from tunesmith.data.prepare.cli import register
from tunesmith.data.prepare.config import build_config
from tunesmith.data.prepare.inspect import inspect_dataset
from tunesmith.data.prepare.pipeline import prepare
from tunesmith.data.prepare.spans import span_map
from tunesmith.data.qa import read_questions

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"

NER = [
    {"tokens": ["John", "lives", "in", "New", "York"],
     "ner_tags": ["B-PER", "O", "O", "B-LOC", "I-LOC"]},
    {"tokens": ["Mary", "went", "to", "Paris"], "ner_tags": ["B-PER", "O", "O"]},  # line 2
    {"tokens": ["Acme", "Corp", "hired", "Bob", "Smith"],
     "ner_tags": ["B-ORG", "I-ORG", "O", "B-PER", "I-PER"]},
    {"tokens": ["in", "London", "today"], "ner_tags": ["O", "I-LOC", "O"]},  # line 4: no B-
    {"tokens": ["Big", "Co"], "ner_tags": ["B-ORG", "X-ORG"]},  # line 5: malformed
]
CTX = "Paris is the capital of France. The sky over it is blue."
QA = [
    {"id": "a", "context": CTX, "question": "What is the capital?",
     "answers": {"text": ["Paris"], "answer_start": [0]}},
    {"id": "b", "context": CTX, "question": "Which country?",
     "answers": {"text": ["France"], "answer_start": [3]}},  # line 2: wrong start
    {"id": "c", "context": "", "question": "Where?", "answers": {"text": [], "answer_start": []}},
    {"id": "d", "context": CTX, "question": " ", "answers": {"text": ["blue"],
                                                              "answer_start": [51]}},
    {"id": "e", "context": CTX, "question": "Who won in 1990?",
     "answers": {"text": [], "answer_start": []}},
    {"id": "f", "context": "Another passage about Rome, the Eternal City.",
     "question": "Which city?", "answers": [{"text": "Rome", "answer_start": 22}]},
]


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_inspect_ner_counts_entities_and_reports_tag_errors_with_lines(tmp_path: Path) -> None:
    src = _write(tmp_path / "ner.jsonl", NER)
    report = inspect_dataset(str(src))
    assert report["format"] == "token_classification"
    t = report["token_classification"]
    assert t["scheme"] == "iob2" and t["sentences"] == 3
    # line 4's stray I-LOC is read as B-LOC (training's repair), so London is a LOC
    assert t["entities"] == {"LOC": 2, "ORG": 1, "PER": 2}
    errors = {(e["where"], e["kind"]) for e in t["tag_errors"]["examples"]}
    assert errors == {(f"{src}:2", "tag count differs from word count"),
                      (f"{src}:4", "invalid continuation"), (f"{src}:5", "malformed tag")}
    assert t["tag_errors"]["repaired"] == 1
    assert report["bad_rows"]["invalid"] == {"tag_count_differs_from_word_count": 1,
                                             "malformed_tag": 1}
    assert [e["where"] for e in report["bad_rows"]["examples"]] == [f"{src}:2", f"{src}:5"]


def test_inspect_ner_entity_counts_equal_seqeval_on_shared_data() -> None:
    seqeval = pytest.importorskip("seqeval.metrics.sequence_labeling")
    path = SHARED / "wnut17" / "validation.jsonl"
    if not path.is_file():
        pytest.skip("shared data not present")
    report = inspect_dataset(str(path))
    expected: dict[str, int] = {}
    for line in path.open(encoding="utf-8"):
        for kind, _, _ in seqeval.get_entities(json.loads(line)["ner_tags"]):
            expected[kind] = expected.get(kind, 0) + 1
    assert report["token_classification"]["entities"] == dict(sorted(expected.items()))
    assert report["token_classification"]["tag_errors"]["counts"] == {}


def test_inspect_integer_tags_need_the_label_list(tmp_path: Path) -> None:
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    rows = [{"tokens": ["Ann", "Lee", "in", "Oslo"], "ner_tags": [1, 2, 0, 3]},
            {"tokens": ["x"], "ner_tags": [9]}]
    src = _write(tmp_path / "ids.jsonl", rows)
    from tunesmith.config.schema import TokenClassificationConfig

    report = inspect_dataset(str(src), tags=TokenClassificationConfig(labels=names))
    assert report["token_classification"]["entities"] == {"LOC": 1, "PER": 1}
    assert report["bad_rows"]["invalid"] == {"tag_id_outside_the_label_list": 1}
    bare = inspect_dataset(str(src))
    assert bare["bad_rows"]["invalid"] == {"integer_tags_without_a_label_list": 2}


def test_inspect_qa_reports_bad_answers_empties_and_unanswerable(tmp_path: Path) -> None:
    src = _write(tmp_path / "qa.jsonl", QA)
    report = inspect_dataset(str(src))
    assert report["format"] == "extractive_qa"
    q = report["extractive_qa"]
    assert (q["questions"], q["answerable"], q["unanswerable"], q["contexts"]) == (3, 2, 1, 2)
    assert q["context_chars"]["max"] == len(CTX)
    assert report["bad_rows"]["invalid"] == {
        "answer_start_does_not_point_at_the_answer": 1, "empty_context": 1,
        "empty_question": 1}
    first = report["bad_rows"]["examples"][0]
    assert first["where"] == f"{src}:2" and "'France' at 3" in first["message"]
    assert f"occurs at {CTX.index('France')}" in first["message"]


def test_inspect_reads_squad_json_articles(tmp_path: Path) -> None:
    squad = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": CTX, "qas": [
            {"id": "1", "question": "Capital?", "answers": [{"text": "Paris",
                                                             "answer_start": 0}]},
            {"id": "2", "question": "Colour?", "answers": [{"text": "blue",
                                                            "answer_start": 5}]}]}]}]}
    src = tmp_path / "squad.json"
    src.write_text(json.dumps(squad), encoding="utf-8")
    report = inspect_dataset(str(src))
    assert report["format"] == "extractive_qa" and report["extractive_qa"]["questions"] == 1
    assert report["bad_rows"]["examples"][0]["where"] == f"{src}[0].paragraphs[0].qas[1]"


def test_prepare_ner_keeps_rows_trainable_and_rejects_bad_ones(tmp_path: Path) -> None:
    rows = NER + [{"tokens": [f"w{i}", "Oslo", "x"], "ner_tags": ["O", "B-LOC", "O"]}
                  for i in range(20)]
    src = _write(tmp_path / "ner.jsonl", rows)
    cfg = build_config({"inputs": [str(src)], "output": str(tmp_path / "out"),
                        "dedup": {"near": False}})
    card = prepare(cfg).card
    assert card["format"] == "token_classification"
    assert card["bad_input"]["by_reason"] == {"malformed_tag": 1,
                                              "tag_count_differs_from_word_count": 1}
    written = [json.loads(line) for s in ("train", "validation", "test")
               for line in (tmp_path / "out" / f"{s}.jsonl").open()]
    assert len(written) == len(rows) - 2
    originals = [r for i, r in enumerate(rows) if i not in (1, 4)]
    assert sorted(map(json.dumps, written)) == sorted(map(json.dumps, originals))
    task = card["token_classification"]
    per_split = sum(sp.get("entities", {}).get("LOC", 0) for sp in task["splits"].values())
    assert per_split == task["entities"]["LOC"] == 22
    assert "## Entities" in (tmp_path / "out" / "data_card.md").read_text()
    rejected = [json.loads(x) for x in (tmp_path / "out" / "reports" / "rejected.jsonl").open()]
    assert {r["where"] for r in rejected} == {f"{src}:2", f"{src}:5"}


def test_prepare_ner_invalid_tags_error_rejects_the_row(tmp_path: Path) -> None:
    src = _write(tmp_path / "ner.jsonl", NER[:1] + NER[2:4])
    cfg = build_config({"inputs": [str(src)], "output": str(tmp_path / "out"),
                        "token_classification": {"invalid_tags": "error"},
                        "split": {"train": 1.0, "validation": 0.0, "test": 0.0}})
    card = prepare(cfg).card
    assert card["bad_input"]["by_reason"] == {"invalid_continuation": 1}
    assert card["bad_input"]["examples"][0]["where"] == f"{src}:3"


def test_prepare_qa_groups_by_context_and_output_trains(tmp_path: Path) -> None:
    rows = [{"id": f"q{i}", "context": f"Passage {i}: the river Vltava flows through "
             f"Prague {i}.", "question": f"Which river, case {i}?",
             "answers": {"text": ["Vltava"], "answer_start": [len(f"Passage {i}: the river ")]}}
            for i in range(12)]
    rows += [{**r, "id": r["id"] + "b", "question": "Which city? " + r["id"],
              "answers": {"text": ["Prague"], "answer_start": [r["context"].index("Prague")]}}
             for r in rows]
    src = _write(tmp_path / "qa.jsonl", rows + QA[1:3])
    out = tmp_path / "out"
    card = prepare(build_config({"inputs": [str(src)], "output": str(out)})).card
    assert card["split_options"]["group_by"] == "context"
    assert card["config"]["dedup"]["near"] is False
    assert set(card["bad_input"]["by_reason"]) == {"answer_start_does_not_point_at_the_answer",
                                                   "empty_context"}
    qcfg = ExtractiveQAConfig()
    seen: dict[str, str] = {}
    total = 0
    for split in ("train", "validation", "test"):
        path = out / f"{split}.jsonl"
        if not path.stat().st_size:
            continue
        questions, _ = read_questions(str(path), qcfg)  # training's reader accepts them
        total += len(questions)
        for q in questions:
            assert seen.setdefault(q.context, split) == split  # one context, one split
    assert total == 24
    assert sum(s["rows"] for s in card["extractive_qa"]["splits"].values()) == 24


def test_cleaning_a_context_moves_answer_starts() -> None:
    data = {"context": "Caf\u00c3\u00a9 ok.  <b>Paris</b>   is   nice", "question": " Where? ",
            "answers": {"text": ["Paris"], "answer_start": [14]}}
    assert data["context"][14:19] == "Paris"

    def squeeze(text: str) -> str:
        return " ".join(text.replace("\u00c3\u00a9", "\u00e9").split())

    new = span_map(data, "extractive_qa", squeeze)
    start = new["answers"]["answer_start"][0]
    assert new["answers"]["text"] == ["Paris"]
    assert new["context"][start:start + 5] == "Paris"
    assert new["context"].startswith("Caf\u00e9 ok.") and new["question"] == "Where?"
    tags = span_map({"tokens": [" a ", "b"], "ner_tags": ["O", "O"]}, "token_classification",
                    str.strip)
    assert tags["tokens"] == ["a", "b"] and tags["ner_tags"] == ["O", "O"]


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root, data = typer.Typer(), typer.Typer()
    register(data)
    root.add_typer(data, name="data")
    return root


def test_cli_inspect_prints_entities_and_tag_errors(app: typer.Typer, tmp_path: Path) -> None:
    src = _write(tmp_path / "ner.jsonl", NER)
    res = CliRunner().invoke(app, ["data", "inspect", str(src), "--samples", "0"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps lines at its own width
    assert "tag scheme iob2" in text and "Entities per type" in text
    assert "ner.jsonl:4: 'I-LOC' at word 1 ('London') after 'O'" in text
    ids = _write(tmp_path / "ids.jsonl", [{"tokens": ["Ann"], "ner_tags": [1]}])
    res = CliRunner().invoke(app, ["data", "inspect", str(ids), "--labels", "O,B-PER,I-PER",
                                   "--json"])
    assert json.loads(res.output)["token_classification"]["entities"] == {"PER": 1}


def test_prepare_counts_duplicate_words_with_other_tags_as_conflicts(tmp_path: Path) -> None:
    rows = [{"tokens": ["Jordan", "won", str(i)], "ner_tags": ["B-PER", "O", "O"]}
            for i in range(6)]
    rows += [{"tokens": ["Jordan", "won", "0"], "ner_tags": ["B-LOC", "O", "O"]},  # conflict
             {"tokens": ["Jordan", "won", "1"], "ner_tags": ["B-PER", "O", "O"]}]  # same tags
    src = _write(tmp_path / "ner.jsonl", rows)
    card = prepare(build_config({"inputs": [str(src)], "output": str(tmp_path / "out"),
                                 "dedup": {"near": False}})).card
    step = next(s for s in card["steps"] if s["step"] == "exact_dedup")
    assert (step["removed"], step["label_conflicts"]) == (2, 1)
    removed = [json.loads(x) for x in (tmp_path / "out" / "reports" / "removed.jsonl").open()]
    assert [r.get("label_conflict") for r in removed] == ["the kept row has other tags", None]


def test_cleaning_never_empties_an_answer() -> None:
    data = {"context": "Intro. <br> and more", "question": "Q?",
            "answers": [{"text": "<br>", "answer_start": 7}]}
    new = span_map(data, "extractive_qa", lambda t: t.replace("<br>", "").strip())
    a = new["answers"][0]
    assert a["text"] == "<br>" and new["context"][a["answer_start"]:][:4] == "<br>"
    assert new["context"] == "Intro. <br> and more"
