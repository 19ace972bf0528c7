"""tunesmith eval on tiny models: files, metrics equal to recomputation, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
import torch

from tests.helpers.tiny import write_jsonl
from tunesmith.errors import ConfigError, DataError, TunesmithError
from tunesmith.evaluate.results import load_eval_dir
from tunesmith.evaluate.runner import run_eval
from tunesmith.evaluate.tasks import EvalSettings


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def test_generation_eval_writes_predictions_metrics_and_comparison(
        generation_eval_dir: Path) -> None:
    summary = json.loads((generation_eval_dir / "metrics.json").read_text())
    assert summary["task"] == "generation" and summary["examples"] == 16
    assert [m["dir"] for m in summary["models"]] == ["tiny-llama0", "tiny-llama0-2"] or \
        len({m["dir"] for m in summary["models"]}) == 2
    for m in summary["models"]:
        d = generation_eval_dir / m["dir"]
        preds = _lines(d / "predictions.jsonl")
        assert len(preds) == 16 and [p["index"] for p in preds] == list(range(16))
        assert json.loads((d / "metrics.json").read_text())["metrics"] == m["metrics"]
        hyps = [p["prediction"] for p in preds]
        refs = [[p["reference"][0] for p in preds]]
        assert m["metrics"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score)
        assert m["metrics"]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, refs).score)
        assert all(lo <= m["metrics"][k] + 1e-9 and m["metrics"][k] <= hi + 1e-9
                   for k, (lo, hi) in m["ci95"].items())
        assert preds[0]["where"].endswith("qa.jsonl:1") and preds[0]["row"]["category"]
    comp = summary["comparison"]
    assert {c["metric"] for c in comp} == set(summary["models"][0]["metrics"])
    for c in comp:
        assert c["delta"] == pytest.approx(c["b"] - c["a"])
        assert c["low"] <= c["delta"] + 1e-9 <= c["high"] + 2e-9
    assert (generation_eval_dir / "report.html").exists()
    _, records = load_eval_dir(generation_eval_dir)
    assert len(records) == 2


def test_lm_eval_loss_equals_training_loss(tmp_path: Path, tiny_model_dir: Path,
                                           messages_file: Path) -> None:
    from tunesmith.data.collate import collate
    from tunesmith.data.formats import detect_training_format, to_example
    from tunesmith.data.readers import read_rows
    from tunesmith.data.templates import Encoder
    from tunesmith.models.load import load_for_inference
    from tunesmith.train.loss import CausalLMLoss

    summary = run_eval([str(tiny_model_dir)], str(messages_file), tmp_path / "lm",
                       EvalSettings(task="lm", bootstrap=50, batch_size=4, dtype="float32"))
    got = summary["models"][0]["metrics"]
    model, tok = load_for_inference(str(tiny_model_dir), dtype="float32")
    rows = read_rows(messages_file)
    enc = Encoder(tok, 2048)
    encs = [enc.fit(enc.encode(to_example(r, detect_training_format(rows)))) for r in rows]
    with torch.no_grad():
        loss, n, correct = CausalLMLoss(model)(**collate(encs, tok.pad_token_id))
    assert got["loss"] == pytest.approx(float(loss / n), rel=1e-5)
    assert got["perplexity"] == pytest.approx(float(torch.exp(loss / n)), rel=1e-5)
    assert got["token_accuracy"] == pytest.approx(float(correct / n))
    preds = _lines(tmp_path / "lm" / summary["models"][0]["dir"] / "predictions.jsonl")
    assert sum(p["tokens"] for p in preds) == int(n)


def test_zero_shot_picks_the_most_likely_label(tmp_path: Path, tiny_model_dir: Path,
                                               labelled_file: Path) -> None:
    summary = run_eval([str(tiny_model_dir)], str(labelled_file), tmp_path / "zs",
                       EvalSettings(bootstrap=50, dtype="float32"))
    assert summary["task"] == "zero-shot"
    preds = _lines(tmp_path / "zs" / summary["models"][0]["dir"] / "predictions.jsonl")
    for p in preds:
        ll = p["label_loglik"]
        assert p["prediction"] == max(ll, key=ll.get)
        assert sum(p["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    acc = sum(p["label"] == p["prediction"] for p in preds) / len(preds)
    assert summary["models"][0]["metrics"]["accuracy"] == pytest.approx(acc)


def test_classifier_eval_matches_scikit_learn(tmp_path: Path, tiny_classifier_dir: Path,
                                              labelled_file: Path) -> None:
    from sklearn.metrics import accuracy_score, f1_score, precision_score

    summary = run_eval([str(tiny_classifier_dir)], str(labelled_file), tmp_path / "cls",
                       EvalSettings(bootstrap=50, dtype="float32"))
    m = summary["models"][0]
    assert m["task"] == "classification"
    preds = _lines(tmp_path / "cls" / m["dir"] / "predictions.jsonl")
    gold, pred = [p["label"] for p in preds], [p["prediction"] for p in preds]
    assert m["metrics"]["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    assert m["metrics"]["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro",
                                                              zero_division=0))
    c = m["classification"]
    assert c["macro_precision"] == pytest.approx(precision_score(gold, pred, average="macro",
                                                                 zero_division=0))
    assert sum(map(sum, c["confusion_matrix"])) == 16


def test_bad_input_gives_one_clear_error(tmp_path: Path, tiny_model_dir: Path,
                                         qa_file: Path) -> None:
    s = EvalSettings(bootstrap=10)
    with pytest.raises(DataError) as err:
        run_eval([str(tiny_model_dir)], str(tmp_path / "nope.jsonl"), tmp_path / "o", s)
    assert "nope.jsonl" in err.value.render() and err.value.exit_code == 2

    flores = write_jsonl(tmp_path / "mt.jsonl", [{"source": "Hi", "target": "Salut"},
                                                 {"source": "Yes", "tgt": "Oui"}])
    with pytest.raises(DataError) as err:
        run_eval([str(tiny_model_dir)], str(flores), tmp_path / "o",
                 EvalSettings(prompt_template="Translate: {source}", reference_field="target"))
    text = err.value.render()
    assert "mt.jsonl:2 field target" in text and "--reference-field" in text
    with pytest.raises(DataError) as err:
        run_eval([str(tiny_model_dir)], str(flores), tmp_path / "o",
                 EvalSettings(prompt_template="Translate: {src}"))
    assert "mt.jsonl:1 field src" in err.value.render()
    with pytest.raises(ConfigError) as err:
        run_eval([str(tiny_model_dir)], str(qa_file), tmp_path / "o",
                 EvalSettings(metrics=["bleu", "bertscore"]))
    assert "bertscore" in err.value.render() and err.value.exit_code == 2
    labels = write_jsonl(tmp_path / "l.jsonl", [{"text": "a", "label": "positive"},
                                                {"text": "b", "label": "neutral"}])
    with pytest.raises(DataError) as err:
        run_eval([str(tiny_model_dir)], str(labels), tmp_path / "o",
                 EvalSettings(labels=["negative", "positive"]))
    assert "l.jsonl:2 field label" in err.value.render() and "neutral" in err.value.render()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError):
        run_eval([str(tiny_model_dir)], str(qa_file), tmp_path / "busy", s)
    assert (tmp_path / "busy" / "keep.txt").exists()


def test_cli_commands_exit_2_with_the_error_block(tmp_path: Path, tiny_model_dir: Path,
                                                  qa_file: Path) -> None:
    import typer

    from tunesmith.evaluate.cli import register

    app = typer.Typer()
    register(app)
    names = {c.name for c in app.registered_commands}
    assert names == {"eval", "analyze", "audit"}
    with pytest.raises(TunesmithError) as err:
        app(["eval", str(tiny_model_dir), "--data", str(qa_file), "--metrics", "nope",
             "-o", str(tmp_path / "o")], standalone_mode=False)
    assert err.value.exit_code == 2 and "nope" in err.value.render()
    with pytest.raises(TunesmithError) as err:
        app(["analyze", str(tmp_path)], standalone_mode=False)
    assert "metrics.json" in err.value.render()


def test_run_directory_defaults_and_training_curves(tmp_path: Path, tiny_classifier_dir: Path,
                                                    labelled_file: Path) -> None:
    import shutil

    run = tmp_path / "runs" / "sentiment"
    shutil.copytree(tiny_classifier_dir, run / "final")
    (run / "manifest.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n')
    (run / "eval").mkdir()
    (run / "eval" / "classification.jsonl").write_text("{}\n")  # the training loop's file
    summary = run_eval([str(run)], str(labelled_file), None, EvalSettings(bootstrap=20))
    assert Path(summary["out_dir"]) == run / "eval" / "labelled"
    assert (run / "eval" / "classification.jsonl").exists()
    assert summary["models"][0]["run_dir"] == str(run)
    assert summary["models"][0]["path"] == str(run / "final")
    assert 'id="training-curves"' in (run / "eval" / "labelled" / "report.html").read_text()
