"""Error analysis: slice flags on a constructed case, worst examples, pairs, relabel queue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.readers import Row
from tunesmith.evaluate.analysis import (
    confusion_pairs,
    relabel_queue,
    run_analyze,
    slice_groups,
    slice_metrics,
)
from tunesmith.evaluate.examples import worst_examples


def _label_records() -> list[dict]:
    """Category A: 30 rows, all wrong. B: 30 rows, all right. C: 30 rows, 26 right."""
    recs = []
    for i in range(90):
        cat = "ABC"[i // 30]
        right = cat == "B" or (cat == "C" and i % 30 < 26)
        gold = ["neg", "pos"][i % 2]
        pred = gold if right else ["neg", "pos"][1 - i % 2]
        recs.append({"index": i, "where": f"f.jsonl:{i + 1}", "input": "w " * (1 + i % 7),
                     "label": gold, "prediction": pred, "label_id": ["neg", "pos"].index(gold),
                     "pred_id": ["neg", "pos"].index(pred), "confidence": 0.5 + (i % 10) / 20,
                     "loss": 0.1 if right else 2.0 + i / 100,
                     "row": {"text": "w " * (1 + i % 7), "label": gold, "category": cat,
                             "id": i}})
    return recs


def test_slice_flags_on_a_constructed_case() -> None:
    recs = _label_records()
    groups = slice_groups(recs, "classification", None)
    assert set(groups) == {"input length", "label", "category"}  # `id` is unique: skipped
    rows = slice_metrics(recs, "classification", ["accuracy", "macro_f1"], groups, 2,
                         n_boot=400)
    assert {r["metric"] for r in rows} == {"accuracy"}
    by = {(r["dimension"], r["slice"]): r for r in rows}
    a, b, c = (by[("category", k)] for k in "ABC")
    assert (a["value"], b["value"]) == (0.0, 1.0) and c["value"] == pytest.approx(26 / 30)
    assert a["rest"] == pytest.approx(56 / 60)
    assert a["flagged"] and not b["flagged"] and not c["flagged"]
    assert a["high"] < 0 < b["low"]
    assert not by[("label", "neg")]["flagged"] and not by[("label", "pos")]["flagged"]


def test_slice_flags_for_lower_is_better_corpus_metrics() -> None:
    recs = [{"index": i, "input": "x", "loss_sum": (9.0 if i < 20 else 1.0) * 4, "tokens": 4,
             "correct": 1, "loss": 9.0 if i < 20 else 1.0, "row": {"domain": "bad" if i < 20
                                                                  else ["a", "b"][i % 2]}}
            for i in range(60)]
    groups = {"domain": slice_groups(recs, "lm", ["domain"])["domain"]}
    rows = slice_metrics(recs, "lm", ["perplexity"], groups, n_boot=300)
    by = {r["slice"]: r for r in rows}
    assert by["bad"]["flagged"] and not by["a"]["flagged"] and not by["b"]["flagged"]
    assert by["bad"]["value"] > by["bad"]["rest"]


def test_worst_examples_and_confusion_pairs() -> None:
    recs = _label_records()
    worst = worst_examples(recs, "classification", k=5)
    assert worst["by"] == "loss"
    losses = [r["loss"] for r in worst["items"]]
    assert losses == sorted(losses, reverse=True) and losses[0] == max(r["loss"] for r in recs)
    pairs = confusion_pairs(recs, "classification")
    assert {(p["expected"], p["predicted"]): p["count"] for p in pairs} == \
        {("neg", "pos"): 17, ("pos", "neg"): 17}
    gen = [{"reference": ["Paris"], "prediction": p, "scores": {"exact_match": float(p == "Paris"),
                                                                 "chrf": float(p == "Paris")}}
           for p in ["Lyon", "Lyon", "Paris", "the lyon", "Nice"]]
    pairs = confusion_pairs(gen, "generation")
    assert pairs == [{"expected": "paris", "predicted": "lyon", "count": 3,
                      "share_of_errors": 0.75}]
    assert worst_examples(gen, "generation", k=1)["by"] == "sentence chrf"


def test_relabel_queue_rows_are_accepted_by_prepare_and_train() -> None:
    from tunesmith.data.formats import detect_format as prepare_format
    from tunesmith.data.formats import detect_training_format, to_example
    from tunesmith.data.prepare.fields import check_row

    queue = relabel_queue(_label_records(), "classification", {}, size=10)
    assert len(queue) == 10
    assert [q["review"]["confidence"] for q in queue] == sorted(
        [q["review"]["confidence"] for q in queue], reverse=True)
    for q in queue:
        assert prepare_format(q) == "classification" and check_row(q, "classification") is None
        assert q["review"]["gold"] == q["label"] != q["review"]["predicted"]
    gen = [{"where": f"mt.jsonl:{i}", "input": f"Translate: s{i}", "reference": [f"t{i}"],
            "prediction": "x", "scores": {"exact_match": 0.0, "chrf": float(i)},
            "row": {"source": f"s{i}", "target": f"t{i}", "domain": "news"}} for i in range(4)]
    queue = relabel_queue(gen, "generation", {}, size=3)
    assert [q["review"]["where"] for q in queue] == ["mt.jsonl:0", "mt.jsonl:1", "mt.jsonl:2"]
    for q in queue:
        assert prepare_format(q) == "prompt_completion"
        assert check_row(q, "prompt_completion") is None
        ex = to_example(Row(q, "q"), detect_training_format([Row(q, "q")]))
        assert ex.kind == "completion" and ex.completion == q["target"]
    alpaca = [{**gen[0], "row": {"instruction": "Say hi", "output": "hi"}}]
    assert set(relabel_queue(alpaca, "generation", {})[0]) == {"instruction", "output", "review"}


def test_analyze_writes_queue_json_and_report(generation_eval_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "analysis"
    result = run_analyze(generation_eval_dir, out, top=3, queue_size=5, n_boot=100)
    assert len(result["models"]) == 2
    data = json.loads((out / "analysis.json").read_text())
    for name, a in data["models"].items():
        assert len(a["worst"]["items"]) == 3 and a["queue"] <= 5
        lines = (out / a["queue_file"]).read_text().splitlines()
        assert len(lines) == a["queue"] and all("review" in json.loads(x) for x in lines)
        assert {r["dimension"] for r in a["slices"]} >= {"category"}
    html = (out / "report.html").read_text()
    for sid in ("summary", "worst-examples", "slices", "errors"):
        assert f'id="{sid}"' in html
    assert (out / "report.md").read_text().count("## ") >= 4
