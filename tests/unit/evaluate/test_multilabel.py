"""Multi-label classifiers in `tunesmith eval` and `tunesmith analyze` (issue 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.tiny import write_jsonl
from tests.helpers.tiny_cls import topic_rows
from tests.unit.evaluate.conftest import build_tiny_classifier_dir
from tunesmith.errors import DataError
from tunesmith.evaluate.metrics import (
    StreamingMetrics,
    aggregator,
    example_f1,
    paired_bootstrap,
    stats_matrix,
)
from tunesmith.evaluate.runner import run_eval
from tunesmith.evaluate.tasks import EvalSettings

TOPICS = ("food", "music", "sport")
ML_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0],
                    [0, 0, 0], [1, 1, 1]])
ML_PRED = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0],
                    [0, 0, 0], [1, 0, 1]])


def _records(true: np.ndarray, pred: np.ndarray) -> list[dict]:
    return [{"label_id": t.tolist(), "pred_id": p.tolist(),
             "scores": {"example_f1": example_f1(t.tolist(), p.tolist())}}
            for t, p in zip(true, pred)]


def test_multilabel_metrics_equal_scikit_learn_streamed() -> None:
    from sklearn.metrics import hamming_loss

    metrics = ["accuracy", "example_f1", "micro_f1", "macro_f1", "hamming_loss"]
    acc = StreamingMetrics(metrics, 3, multi_label=True)
    recs = _records(ML_TRUE, ML_PRED)
    acc.update(recs[:3])  # batch by batch
    acc.update(recs[3:])
    got = acc.compute()
    _assert_like_sklearn(got, ML_TRUE, ML_PRED)
    assert got["hamming_loss"] == pytest.approx(hamming_loss(ML_TRUE, ML_PRED))


def _assert_like_sklearn(got: dict, y: np.ndarray, yhat: np.ndarray) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    assert got["accuracy"] == pytest.approx(accuracy_score(y, yhat))  # subset accuracy
    # an empty gold set predicted empty is a perfect example (zero_division=1)
    assert got["example_f1"] == pytest.approx(f1_score(y, yhat, average="samples",
                                                       zero_division=1))
    for avg in ("micro", "macro"):
        assert got[f"{avg}_f1"] == pytest.approx(f1_score(y, yhat, average=avg,
                                                          zero_division=0))


def test_paired_bootstrap_on_exact_match_and_example_f1() -> None:
    better = _records(ML_TRUE, ML_TRUE)  # a perfect model
    worse = _records(ML_TRUE, ML_PRED)
    for m in ("accuracy", "example_f1", "macro_f1"):
        res = paired_bootstrap(stats_matrix(m, worse, 3), stats_matrix(m, better, 3),
                               aggregator(m, 3, True), 200, 0)
        assert res["b"] == pytest.approx(1.0) and res["delta"] > 0 and res["low"] >= 0


def _ml_classifier(out: Path, threshold: float, separator: str | None = None) -> Path:
    from tunesmith.models.artifacts import write_classifier_info

    build_tiny_classifier_dir(out, TOPICS)
    cfg = json.loads((out / "config.json").read_text())
    cfg["problem_type"] = "multi_label_classification"
    (out / "config.json").write_text(json.dumps(cfg))
    write_classifier_info(out, {"labels": list(TOPICS), "multi_label": True,
                                "threshold": threshold, "label_separator": separator,
                                "text_field": "text", "label_field": "labels",
                                "max_length": 64})
    return out


@pytest.fixture(scope="module")
def ml_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ml-models")
    a = _ml_classifier(tmp / "a", 0.5, separator="|")
    b = tmp / "b"
    shutil.copytree(a, b)
    info = json.loads((b / "tunesmith_classifier.json").read_text())
    (b / "tunesmith_classifier.json").write_text(json.dumps({**info, "threshold": 0.3}))
    return a, b


@pytest.fixture(scope="module")
def ml_eval(ml_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("ml-eval")
    rows = topic_rows(24, seed=3)
    for i, r in enumerate(rows):
        r["channel"] = ["web", "mail"][i % 2]
        if i % 3 == 0:  # separator-joined string labels, as in a CSV
            r["labels"] = "|".join(r["labels"])
    rows[5]["labels"] = []  # a row without any label
    data = write_jsonl(tmp / "topics.jsonl", rows)
    out = tmp / "eval"
    summary = run_eval([str(m) for m in ml_models], str(data), out,
                       EvalSettings(bootstrap=100, dtype="float32", batch_size=5))
    return out, summary


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_eval_multilabel_writes_predictions_metrics_report(ml_eval: tuple[Path, dict]) -> None:
    out, summary = ml_eval
    assert (out / "metrics.json").exists() and (out / "report.html").exists()
    assert summary["task"] == "multi-label"
    thresholds = []
    for m in summary["models"]:
        preds = _lines(out / m["dir"] / "predictions.jsonl")
        assert len(preds) == 24
        thresholds.append(m["threshold"])
        for p in preds:  # the label set is every class at or above the model's threshold
            assert set(p["probs"]) == set(TOPICS)
            assert p["prediction"] == [n for n in TOPICS if p["probs"][n] >= m["threshold"]]
            assert set(p["missed"]) == set(p["label"]) - set(p["prediction"])
        assert preds[0]["label"] == sorted(topic_rows(24, seed=3)[0]["labels"])  # "a|b" split
        assert preds[5]["label"] == []
        y = np.array([p["label_id"] for p in preds])
        yhat = np.array([p["pred_id"] for p in preds])
        got = m["metrics"]
        _assert_like_sklearn(got, y, yhat)
        c = m["classification"]  # MultiLabelCounts, updated batch by batch
        assert c["accuracy"] == pytest.approx(got["accuracy"])
        assert c["macro_f1"] == pytest.approx(got["macro_f1"])
        assert sorted(c["per_class"]) == sorted(TOPICS)
    assert thresholds == [0.5, 0.3]
    cmp = {c["metric"]: c for c in summary["comparison"]}
    assert set(cmp) == {"accuracy", "example_f1", "micro_f1", "macro_f1"}
    a, b = summary["models"]
    assert cmp["example_f1"]["delta"] == pytest.approx(b["metrics"]["example_f1"]
                                                       - a["metrics"]["example_f1"])
    md = (out / "report.md").read_text()
    assert "Per-class figures" in md and "threshold 0.3" in md
    assert "confusion-" not in md  # no confusion-matrix image for multi-label


def test_analyze_multilabel(ml_eval: tuple[Path, dict], tmp_path: Path) -> None:
    from tunesmith.evaluate.analysis import run_analyze

    out, summary = ml_eval
    result = run_analyze(out, tmp_path / "an", top=5, queue_size=50, n_boot=100)
    preds = _lines(out / summary["models"][0]["dir"] / "predictions.jsonl")
    a = next(iter(result["models"].values()))
    f1s = [r["scores"]["example_f1"] for r in a["worst"]["items"]]
    assert f1s == sorted(f1s) and f1s[0] == min(p["scores"]["example_f1"] for p in preds)
    assert a["worst"]["by"] == "per-example F1 of the label set"
    missed = sum(len(p["missed"]) for p in preds)
    extra = sum(len(p["extra"]) for p in preds)
    assert sum(r["missed"] for r in a["label_errors"]) == missed
    assert sum(r["extra"] for r in a["label_errors"]) == extra
    assert a["errors"] == sum(p["label"] != p["prediction"] for p in preds)
    dims = {r["dimension"] for r in a["slices"]}
    assert {"label", "channel"} <= dims
    label_rows = {r["slice"]: r["n"] for r in a["slices"] if r["dimension"] == "label"
                  and r["metric"] == "accuracy"}
    assert label_rows["food"] == sum("food" in p["label"] for p in preds)
    queue = _lines(tmp_path / "an" / "errors-a.jsonl")
    assert len(queue) == a["errors"] and queue[0]["review"]["missed"] is not None
    for q in queue:  # training-format rows: the text and the (editable) gold label set
        assert isinstance(q["text"], str) and q["review"]["gold"] is not None
        assert set(q["review"]["extra"]) | set(q["review"]["missed"])
    md = (tmp_path / "an" / "report.md").read_text()
    assert "most often missed and extra labels" in md


def test_unknown_gold_label_names_line_and_field(ml_models: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    rows = topic_rows(4, seed=1)
    rows[2]["labels"] = ["food", "weather"]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as exc:
        run_eval([str(ml_models[0])], str(data), tmp_path / "out",
                 EvalSettings(bootstrap=10, dtype="float32"))
    err = exc.value
    assert "bad.jsonl:3" in err.where and "labels" in err.where
    assert "weather" in str(err.got) and "food" in err.fix
    assert not (tmp_path / "out").exists()
