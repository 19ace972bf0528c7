"""The embedded MiniLM fine-tuned for a few dozen steps on an SST-2 slice beats chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.tiny import write_jsonl
from tunesmith.config import validate_dict
from tunesmith.inference.predict import load_predictor, predict_file
from tunesmith.models.registry import EMBEDDED, package_path
from tunesmith.recipes import run_task

# about a minute on 2 idle cores; the timeout leaves room for a busy machine
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _slice(path: Path, n: int) -> list[dict]:
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    return rows[:n]


def test_minilm_sst2_slice_beats_chance(tmp_path: Path, shared_data: Path) -> None:
    if package_path(EMBEDDED["minilm-l6"]) is None:
        pytest.skip("embedded MiniLM is not installed (make setup)")
    sst2 = shared_data / "sst2"
    train = write_jsonl(tmp_path / "train.jsonl", _slice(sst2 / "train.jsonl", 480))
    val = write_jsonl(tmp_path / "val.jsonl", _slice(sst2 / "validation.jsonl", 128))
    held_out = write_jsonl(tmp_path / "test.jsonl", _slice(sst2 / "test.jsonl", 200))
    cfg = validate_dict({
        "name": "minilm-sst2", "task": "classification", "model": {"name": "minilm-l6"},
        "method": {"type": "full"},
        "data": {"train": str(train), "validation": str(val)},
        "classification": {"labels": ["negative", "positive"], "max_length": 64},
        "train": {"max_steps": 30, "batch_size": 16, "lr": 2e-4, "warmup_steps": 3,
                  "scheduler": "linear",
                  "early_stopping": {"metric": "val_accuracy"}},
        "output": {"dir": str(tmp_path / "runs"), "tensorboard": False}})
    result = run_task(cfg)
    assert result.loop.steps == 30
    assert result.loop.losses[-1] < result.loop.losses[0]
    predictor = load_predictor(str(result.run_dir))
    assert predictor.labels == ["negative", "positive"]
    rows, metrics = predict_file(predictor, held_out)
    assert metrics is not None and metrics["examples"] == 200
    # chance is 0.5 on this nearly balanced slice (sd 0.035 over 200 rows)
    assert metrics["accuracy"] > 0.62, metrics["accuracy"]
    assert {r["predicted_label"] for r in rows} == {"negative", "positive"}
