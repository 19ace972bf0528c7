"""Classification recipe on tiny in-process encoder and decoder models (a few steps each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.helpers.tiny import write_jsonl
from tests.helpers.tiny_cls import (
    build_tiny_bert_dir,
    build_tiny_llama_cls_dir,
    sentiment_rows,
    topic_rows,
    write_sentiment,
)
from tunesmith.config import validate_dict
from tunesmith.errors import DataError, UsageError
from tunesmith.inference.predict import load_predictor, predict_file
from tunesmith.inference.predict_cli import register
from tunesmith.recipes import RECIPES, run_task


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert_dir(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama_cls_dir(tmp_path_factory.mktemp("llama"))


def _cfg(tmp: Path, model: Path, train_file: Path, val_file: Path | None, name: str = "cls",
         **sections: dict[str, Any]) -> Any:
    raw: dict[str, Any] = {
        "name": name, "task": "classification", "model": {"name": str(model)},
        "method": {"type": "full"},
        "data": {"train": str(train_file), **({"validation": str(val_file)} if val_file
                                              else {})},
        "train": {"max_steps": 6, "batch_size": 8, "lr": 3e-3, "eval_every": 3,
                  "scheduler": "constant", "dropout": 0.0, "precision": "fp32"},
        "output": {"dir": str(tmp / "runs"), "tensorboard": False}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return validate_dict(raw)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_recipe_is_registered() -> None:
    assert RECIPES["classification"].__name__ == "tunesmith.recipes.classify"


def test_encoder_full_fine_tuning_end_to_end(tmp_path: Path, bert_dir: Path) -> None:
    train, val = write_sentiment(tmp_path, string_labels=True)
    cfg = _cfg(tmp_path, bert_dir, train, val, train={
        "max_steps": 12, "eval_every": 6, "batch_size": 16, "lr": 1e-3,
        "early_stopping": {"metric": "val_macro_f1"}})
    result = run_task(cfg)
    run = result.run_dir
    for name in ("config.yaml", "manifest.json", "metrics.jsonl", "status.json",
                 "best/config.json", "final/model.safetensors", "final/tunesmith_classifier.json",
                 "eval/classification.jsonl"):
        assert (run / name).exists(), name
    final_cfg = json.loads((run / "final/config.json").read_text())
    assert final_cfg["id2label"] == {"0": "negative", "1": "positive"}
    assert final_cfg["architectures"] == ["BertForSequenceClassification"]
    # every weight trained: compare with the base checkpoint (bert.* prefix added by the head)
    base = _weights(bert_dir)
    final = _weights(run / "final")
    changed = [k for k, v in base.items() if k in final or f"bert.{k}" in final]
    assert changed and all(not torch.equal(v, final.get(f"bert.{k}", final.get(k)))
                           for k, v in base.items() if "position_ids" not in k)
    assert {"classifier.weight", "classifier.bias"} <= set(final)
    evals = [json.loads(line) for line in (run / "eval/classification.jsonl").open()]
    assert [e["step"] for e in evals] == [6, 12]
    assert evals[-1]["confusion_matrix"] and set(evals[-1]["per_class"]) == {"negative",
                                                                           "positive"}
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed" and status["examples_per_s"] > 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["labels"] == ["negative", "positive"] and manifest["task"] == "classification"
    losses = result.loop.losses
    assert sum(losses[-4:]) < sum(losses[:4])  # it learns
    assert result.loop.last_eval["val_loss"] < 0.69 and result.loop.last_eval["val_accuracy"] > 0.6

    predictor = load_predictor(str(run), precision="fp32")
    preds = predictor.predict(["the film was good", "awful plot", "a movie"])
    assert len(preds) == 3
    for p in preds:
        assert set(p.probabilities) == {"negative", "positive"}
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.label == max(p.probabilities, key=p.probabilities.get)
    probs = predictor.probabilities(["good", "bad film", "the movie was quite dull"])
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
    # batching and length sorting do not change results
    single = torch.cat([predictor.probabilities([t]) for t in
                        ["good", "bad film", "the movie was quite dull"]])
    assert torch.allclose(single, probs, atol=1e-5)


def test_decoder_lora_trains_head_and_adapters_only(tmp_path: Path, llama_dir: Path) -> None:
    train, val = write_sentiment(tmp_path)
    cfg = _cfg(tmp_path, llama_dir, train, val, method={"type": "lora", "r": 4, "alpha": 8})
    result = run_task(cfg)
    run = result.run_dir
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["head"] == ["score"]
    assert manifest["lora_targets"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    adapter = load_file(run / "final/adapter/adapter_model.safetensors")
    assert any("score" in k for k in adapter) and any("lora_A" in k for k in adapter)
    # final/ is merged: a plain classifier whose attention projections moved, MLP did not
    base = _weights(llama_dir)
    final = _weights(run / "final")
    assert final["score.weight"].shape == (2, 32)
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"],
                           final["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(base["model.layers.0.mlp.up_proj.weight"],
                       final["model.layers.0.mlp.up_proj.weight"])
    config = json.loads((run / "final/config.json").read_text())
    assert config["pad_token_id"] is not None  # decoder pooling needs it
    predictor = load_predictor(str(run / "final"), precision="fp32")
    probs = predictor.probabilities(["the quick fox", "hello"])
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    # the adapter directory predicts the same (base + adapter, merged on load)
    via_adapter = load_predictor(str(run / "final/adapter"), precision="fp32")
    assert torch.allclose(via_adapter.probabilities(["the quick fox", "hello"]), probs,
                          atol=1e-4)


def test_multi_label_with_thresholds(tmp_path: Path, bert_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", topic_rows(48))
    val = write_jsonl(tmp_path / "val.jsonl", topic_rows(12, 1))
    cfg = _cfg(tmp_path, bert_dir, train, val, classification={
        "label_field": "labels", "multi_label": True, "threshold": 0.5,
        "class_weights": "balanced", "label_smoothing": 0.05},
        train={"early_stopping": {"metric": "val_micro_f1"}})
    result = run_task(cfg)
    assert "val_micro_f1" in result.loop.last_eval and "val_hamming_loss" in result.loop.last_eval
    predictor = load_predictor(str(result.run_dir), precision="fp32")
    assert predictor.multi_label and predictor.labels == ["food", "music", "sport"]
    texts = ["ball song", "soup", "the film"]
    probs = predictor.probabilities(texts)
    assert probs.shape == (3, 3) and bool(((probs > 0) & (probs < 1)).all())
    low = predictor.predict(texts, threshold=1e-6)
    high = predictor.predict(texts, threshold=1 - 1e-6)
    assert all(p.label == ["food", "music", "sport"] for p in low)
    assert all(p.label == [] for p in high)
    mid = predictor.predict(texts, threshold=0.5)
    for p in mid:
        assert p.label == [n for n, v in p.probabilities.items() if v >= 0.5]


def test_balanced_sampling_and_gradual_unfreezing(tmp_path: Path, bert_dir: Path) -> None:
    rows = sentiment_rows(60)
    rows = [r for r in rows if r["label"] == 1] + [r for r in rows if r["label"] == 0][:3]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = _cfg(tmp_path, bert_dir, train, None,
               method={"type": "freeze", "unfreeze": {"every_steps": 2}},
               classification={"balanced_sampling": True}, train={"max_steps": 4})
    seen: list[dict[str, Any]] = []
    from tunesmith.recipes.classify import run

    result = run(cfg, progress=False, callbacks=[lambda step, v: seen.append(v)])
    assert result.warnings == []  # balanced sampling silences the imbalance warning
    rows_logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    unfrozen = [r["unfrozen_groups"] for r in rows_logged if "unfrozen_groups" in r]
    assert unfrozen == [2, 3]
    assert [v["unfrozen"] for v in seen] == [1, 2, 2, 3]


def test_resume_reproduces_the_uninterrupted_losses(tmp_path: Path, bert_dir: Path) -> None:
    train, val = write_sentiment(tmp_path)
    from tunesmith.recipes.classify import run

    def losses(run_dir: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").open())
                if "loss" in r}

    straight = run(_cfg(tmp_path, bert_dir, train, val, name="straight",
                        train={"dropout": 0.1}), progress=False)

    def stop(step: int, values: dict[str, Any]) -> None:
        if step == 3:
            raise KeyboardInterrupt

    cfg = _cfg(tmp_path, bert_dir, train, val, name="resumed", train={"dropout": 0.1})
    with pytest.raises(KeyboardInterrupt):
        run(cfg, progress=False, callbacks=[stop])
    assert json.loads((tmp_path / "runs/resumed/status.json").read_text())["state"] == "interrupted"
    resumed = run(cfg, resume=True, progress=False)
    a, b = losses(straight.run_dir), losses(resumed.run_dir)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    assert [b[s] for s in (4, 5, 6)] == pytest.approx([a[s] for s in (4, 5, 6)], abs=1e-6)


def test_early_stopping_on_macro_f1_keeps_best(tmp_path: Path, bert_dir: Path) -> None:
    train, val = write_sentiment(tmp_path)
    cfg = _cfg(tmp_path, bert_dir, train, val, train={
        "max_steps": 12, "eval_every": 2, "early_stopping": {
            "metric": "val_macro_f1", "patience": 2, "min_delta": 1.0}})
    result = run_task(cfg)
    assert result.loop.stopped_early and result.loop.steps == 6
    assert result.loop.best_step == 2
    assert json.loads((result.run_dir / "best/tunesmith_eval.json").read_text())["step"] == 2


def test_bad_data_stops_before_a_run_directory_exists(tmp_path: Path, bert_dir: Path) -> None:
    train, _ = write_sentiment(tmp_path)
    val = write_jsonl(tmp_path / "v.jsonl", [{"text": "good", "label": 1},
                                             {"text": "meh", "label": 2}])
    with pytest.raises(DataError) as exc:
        run_task(_cfg(tmp_path, bert_dir, train, val))
    assert "never shows" in exc.value.what and exc.value.where.endswith("v.jsonl:2 field `label`")
    assert not (tmp_path / "runs/cls").exists()


def test_predict_command_text_and_file(tmp_path: Path, bert_dir: Path) -> None:
    train, val = write_sentiment(tmp_path, string_labels=True)
    result = run_task(_cfg(tmp_path, bert_dir, train, val, train={"max_steps": 2}))
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """root"""

    register(app)
    runner = CliRunner()
    out = runner.invoke(app, ["predict", str(result.run_dir), "--text", "good film",
                              "--precision", "fp32"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["predicted_label"] in ("negative", "positive")
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)

    dst = tmp_path / "out.jsonl"
    out = runner.invoke(app, ["predict", str(result.run_dir), "--file", str(val), "-o", str(dst)])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in dst.open()]
    assert len(rows) == 16 and all({"text", "label", "predicted_label", "score",
                                    "probabilities"} <= set(r) for r in rows)
    assert "accuracy" in out.output  # gold labels in the file → metrics on stderr

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "good"}, {"sentence": "x"}])
    predictor = load_predictor(str(result.run_dir))
    with pytest.raises(DataError) as exc:
        predict_file(predictor, bad)
    assert exc.value.where.endswith("bad.jsonl:2 field `text`") and exc.value.got == "(missing)"
    out = runner.invoke(app, ["predict", str(result.run_dir)])
    assert isinstance(out.exception, UsageError)


def test_predict_refuses_a_model_without_a_head(bert_dir: Path) -> None:
    from tunesmith.errors import ModelError

    with pytest.raises(ModelError, match="no classification head"):
        load_predictor(str(bert_dir))
