"""Token-classification and extractive-QA recipes on tiny in-process models: the loss falls,
best/ is kept, metrics are in range, and predictions carry offsets that slice the original
text to the entity / answer."""

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
from tests.helpers.tiny_cls import build_tiny_llama_cls_dir
from tests.helpers.tiny_spans import build_tiny_bert_dir, ner_rows, qa_rows
from tunesmith.config import validate_dict
from tunesmith.errors import UsageError
from tunesmith.evaluate.analysis import run_analyze
from tunesmith.evaluate.runner import run_eval
from tunesmith.evaluate.tasks import EvalSettings
from tunesmith.inference.predict_cli import register
from tunesmith.inference.spans import load_span_predictor
from tunesmith.recipes import RECIPES, run_task


def _cli(*args: str) -> Any:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps `predict` a subcommand
    return CliRunner().invoke(app, ["predict", *args])


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert_dir(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama_cls_dir(tmp_path_factory.mktemp("llama"))


def _cfg(tmp: Path, task: str, model: Path, train_file: Path, val: Path | None, **sections: Any
         ) -> Any:
    raw: dict[str, Any] = {
        "name": task, "task": task, "model": {"name": str(model)}, "method": {"type": "full"},
        "data": {"train": str(train_file), **({"validation": str(val)} if val else {})},
        "train": {"max_steps": 16, "batch_size": 8, "lr": 3e-3, "eval_every": 8,
                  "scheduler": "constant", "dropout": 0.0, "precision": "fp32"},
        "output": {"dir": str(tmp / "runs"), "tensorboard": False}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return validate_dict(raw)


def test_recipes_are_registered() -> None:
    assert RECIPES["token_classification"].__name__ == "tunesmith.recipes.token_classify"
    assert RECIPES["extractive_qa"].__name__ == "tunesmith.recipes.qa"


def test_ner_encoder_full_learns_and_keeps_best(tmp_path: Path, bert_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", ner_rows(96))
    val = write_jsonl(tmp_path / "val.jsonl", ner_rows(24, seed=1))
    cfg = _cfg(tmp_path, "token_classification", bert_dir, train, val, train={
        "max_steps": 24, "lr": 1e-2, "early_stopping": {"metric": "val_entity_f1"}},
        token_classification={"class_weights": "balanced"})
    result = run_task(cfg, progress=False)
    run = result.run_dir
    for name in ("best/config.json", "final/model.safetensors",
                 "final/tunesmith_classifier.json", "eval/token_classification.jsonl"):
        assert (run / name).exists(), name
    config = json.loads((run / "final/config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert list(config["id2label"].values()) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    losses = result.loop.losses
    assert sum(losses[-4:]) < sum(losses[:4])
    last = result.loop.last_eval
    assert 0.5 < last["val_entity_f1"] <= 1.0 and last["val_token_accuracy"] > 0.7
    best = json.loads((run / "best/tunesmith_eval.json").read_text())
    assert best["val_entity_f1"] >= last["val_entity_f1"] - 1e-9
    assert set(best["report"]["per_type"]) == {"LOC", "PER"}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["entity_types"] == ["LOC", "PER"] and manifest["scheme"] == "iob2"

    # predict: entities with offsets that slice the original text
    p = load_span_predictor(str(run), precision="fp32")
    text = "Yesterday  alice went to Paris, then (tokyo)."
    (ents,) = p.entities([text])
    assert ents, "the trained tagger finds entities"
    for e in ents:
        assert text[e.start:e.end] == e.text and e.type in ("PER", "LOC") and 0 < e.score <= 1
    assert {e.text.lower() for e in ents} & {"alice", "paris", "tokyo"}
    rows = write_jsonl(tmp_path / "in.jsonl", ner_rows(6, seed=3))
    out = _cli(str(run), "--file", str(rows), "-o", str(tmp_path / "out.jsonl"),
               "--precision", "fp32")
    assert out.exit_code == 0, out.output
    assert "entity F1" in out.output
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    joined = " ".join(first["tokens"])
    assert all(joined[e["start"]:e["end"]] == e["text"] for e in first["entities"])
    one = _cli(str(run / "best"), "--text", "bob met carol in rome", "--precision", "fp32")
    assert one.exit_code == 0 and "entities" in json.loads(one.stdout)

    # eval and analyze know the task: per-type figures, missed vs spurious, worst sentences
    summary = run_eval([str(run)], str(val), tmp_path / "ev", EvalSettings(dtype="float32"))
    m = summary["models"][0]
    assert summary["task"] == "token_classification"
    assert m["metrics"]["entity_f1"] == pytest.approx(last["val_entity_f1"], abs=1e-6)
    analysis = run_analyze(tmp_path / "ev")
    a = analysis["models"][str(run)]
    assert set(a["per_type"]) == {"LOC", "PER"} and set(a["error_kinds"]) == {
        "missed", "spurious", "type_confusion", "boundary"}
    assert (tmp_path / "ev/analysis/errors.jsonl").exists()
    assert all(w["errors"] for w in a["worst"])

    # the serve route: entities with offsets into each input
    from fastapi.testclient import TestClient

    from tunesmith.serve.app import create_app
    from tunesmith.serve.settings import ServeSettings

    settings = ServeSettings(models=[f"ner={run}"], data_dir=tmp_path / "serve",
                             preload=False)
    client = TestClient(create_app(settings))
    r = client.post("/v1/extract", json={"model": "ner", "input": [text, "bob saw rome"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "token_classification" and len(body["data"]) == 2
    for e in body["data"][0]["entities"]:
        assert text[e["start"]:e["end"]] == e["text"]
    assert client.post("/v1/extract", json={"model": "nope", "input": "x"}).status_code == 404
    assert client.post("/v1/extract", json={"model": "ner"}).status_code == 400


def test_ner_decoder_lora_trains_head_and_adapters(tmp_path: Path, llama_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", ner_rows(48))
    val = write_jsonl(tmp_path / "val.jsonl", ner_rows(12, seed=1))
    cfg = _cfg(tmp_path, "token_classification", llama_dir, train, val,
               method={"type": "lora", "r": 4, "alpha": 8})
    result = run_task(cfg, progress=False)
    run = result.run_dir
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["head"] == ["score"]
    adapter = load_file(run / "final/adapter/adapter_model.safetensors")
    assert any("score" in k for k in adapter) and any("lora_A" in k for k in adapter)
    base, final = load_file(llama_dir / "model.safetensors"), load_file(
        run / "final/model.safetensors")
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"],
                           final["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(base["model.layers.0.mlp.up_proj.weight"],
                       final["model.layers.0.mlp.up_proj.weight"])
    assert sum(result.loop.losses[-4:]) < sum(result.loop.losses[:4])
    # the adapter directory predicts like final/ (base + adapter merged on load)
    text = ["alice went to paris today"]
    a = load_span_predictor(str(run / "final"), precision="fp32").word_tags(
        text, [[(0, 5), (6, 10), (11, 13), (14, 19), (20, 25)]])
    b = load_span_predictor(str(run / "final/adapter"), precision="fp32").word_tags(
        text, [[(0, 5), (6, 10), (11, 13), (14, 19), (20, 25)]])
    assert a[0][0] == b[0][0] and a[0][1] == pytest.approx(b[0][1], abs=1e-4)


def test_qa_encoder_learns_spans(tmp_path: Path, bert_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(96))
    val = write_jsonl(tmp_path / "val.jsonl", qa_rows(24, seed=1))
    cfg = _cfg(tmp_path, "extractive_qa", bert_dir, train, val, train={
        "max_steps": 30, "eval_every": 10, "early_stopping": {"metric": "val_f1"}},
        extractive_qa={"max_length": 64, "doc_stride": 16})
    result = run_task(cfg, progress=False)
    run = result.run_dir
    config = json.loads((run / "final/config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"]
    assert sum(result.loop.losses[-5:]) < sum(result.loop.losses[:5])
    last = result.loop.last_eval
    assert 0 <= last["val_exact_match"] <= 100 and last["val_f1"] >= last["val_exact_match"]
    assert last["val_f1"] > 30
    assert (run / "best/tunesmith_eval.json").exists()
    info = json.loads((run / "final/tunesmith_classifier.json").read_text())
    assert info["task"] == "extractive_qa" and info["null_threshold"] is None

    p = load_span_predictor(str(run), precision="fp32")
    context = "the city of rome saw dave today . dave went to berlin today ."
    (ans,) = p.answers(["where did dave go ?"], [context])
    assert not ans["no_answer"] and context[ans["start"]:ans["end"]] == ans["answer"]
    assert 0 < ans["score"] <= 1
    out = _cli(str(run), "--file", str(val), "--precision", "fp32")
    assert out.exit_code == 0, out.output
    assert "exact match" in out.output
    row = json.loads(out.stdout.splitlines()[0])
    assert row["context"][row["start"]:row["end"]] == row["answer"]
    summary = run_eval([str(run)], str(val), tmp_path / "ev", EvalSettings(dtype="float32"))
    assert summary["models"][0]["metrics"]["f1"] == pytest.approx(last["val_f1"], abs=1e-6)
    analysis = run_analyze(tmp_path / "ev")
    worst = analysis["models"][str(run)]["worst"]
    assert all(w["f1"] <= worst[-1]["f1"] for w in worst[:1])
    bad = _cli(str(run), "--text", "bob went to rome", "--precision", "fp32")
    assert isinstance(bad.exception, UsageError) and "--question" in bad.exception.where


def test_qa_decoder_freeze_with_unanswerable(tmp_path: Path, llama_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(48, unanswerable=0.25))
    val = write_jsonl(tmp_path / "val.jsonl", qa_rows(16, seed=1, unanswerable=0.25))
    cfg = _cfg(tmp_path, "extractive_qa", llama_dir, train, val,
               method={"type": "freeze", "freeze_layers": 1},
               extractive_qa={"max_length": 64, "doc_stride": 16})
    result = run_task(cfg, progress=False)
    info = json.loads((result.run_dir / "final/tunesmith_classifier.json").read_text())
    assert info["allow_no_answer"] is True and isinstance(info["null_threshold"], float)
    config = json.loads((result.run_dir / "final/config.json").read_text())
    assert config["architectures"] == ["LlamaForQuestionAnswering"]
    p = load_span_predictor(str(result.run_dir), precision="fp32")
    # a threshold below every margin answers "no answer"; above every margin, never
    never = p.answers(["who went to rome ?"], ["bob went to rome ."], null_threshold=1e9)[0]
    always = p.answers(["who went to rome ?"], ["bob went to rome ."], null_threshold=-1e9)[0]
    assert not never["no_answer"] and always["no_answer"] and always["start"] is None
