"""Mixture sampling matches the weights over many draws; records are rewritten into
instructions; a mixture run logs loss and validation metrics per task and overall."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import write_jsonl
from tests.unit.sft_support import isolated_home, raw_cfg  # noqa: F401 (fixture)
from tunesmith.config import validate_dict
from tunesmith.data.mixture import mixture_batches, sampling_probabilities
from tunesmith.errors import ConfigError

pytestmark = pytest.mark.usefixtures("isolated_home")


def test_proportional_sampling_matches_weights_over_many_draws() -> None:
    tasks = ["a"] * 600 + ["b"] * 300 + ["c"] * 100
    probs = sampling_probabilities({"a": 5.0, "b": 3.0, "c": 2.0}, "proportional", 2.0)
    assert probs == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2})
    counts: Counter[str] = Counter()
    for epoch in range(40):  # 40 epochs x 250 batches = 10,000 draws
        for batch in mixture_batches(tasks, [5] * len(tasks), probs, 4, 3, epoch):
            kinds = {tasks[i] for i in batch}
            assert len(kinds) == 1  # every batch holds one task
            counts[kinds.pop()] += 1
    n = sum(counts.values())
    assert n == 10_000
    for t, p in probs.items():  # within 4 standard errors
        assert abs(counts[t] / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_temperature_sampling_flattens_toward_small_tasks() -> None:
    probs = sampling_probabilities({"big": 900.0, "small": 100.0}, "temperature", 2.0)
    assert probs["small"] == pytest.approx(10 / (30 + 10))  # sqrt weights: 30 vs 10
    tasks = ["big"] * 900 + ["small"] * 100
    drawn = Counter(tasks[b[0]] for e in range(20)
                    for b in mixture_batches(tasks, [3] * 1000, probs, 10, 0, e))
    assert drawn["small"] / 2000 == pytest.approx(0.25, abs=0.03)


def test_batches_are_deterministic_and_cycle_small_tasks() -> None:
    tasks = ["a"] * 40 + ["b"] * 4
    probs = {"a": 0.5, "b": 0.5}
    first = mixture_batches(tasks, list(range(44)), probs, 2, 1, 0)
    assert first == mixture_batches(tasks, list(range(44)), probs, 2, 1, 0)
    b_batches = [b for b in first if tasks[b[0]] == "b"]
    assert len(b_batches) > 2  # "b" has 2 batches per pass: it restarts with a new shuffle
    assert all(set(b) <= set(range(40, 44)) for b in b_batches)


def _mixture_cfg(tmp: Path, model: Path, files: dict[str, Path], **extra: Any) -> Any:
    raw = raw_cfg(model, files["alpaca"], tmp, train={"max_steps": 6, "eval_every": 6,
                                                      "batch_size": 4, "lr": 2e-2})
    raw["data"].pop("train")
    raw["data"]["mixture"] = {"datasets": [
        {"name": "sum", "train": str(files["alpaca"]), "validation": str(files["alpaca_val"]),
         "instruction": "Answer briefly.", "weight": 2},
        {"name": "sentiment", "train": str(files["cls"]), "validation": str(files["cls_val"]),
         "prompt": "Sentiment of: {text}", "completion": "{label_text}",
         "label_names": ["no", "yes"], "weight": 1}], **extra}
    return validate_dict(raw)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    def alpaca(r: range) -> list[dict[str, Any]]:
        return [{"instruction": f"Add {i} and {i + 1}.", "output": f"The sum is {2 * i + 1}."}
                for i in r]

    def cls(r: range) -> list[dict[str, Any]]:
        return [{"text": ["red blue", "stop maybe"][i % 2] + f" {i}", "label": i % 2} for i in r]

    return {"alpaca": write_jsonl(tmp_path / "a.jsonl", alpaca(range(16))),
            "alpaca_val": write_jsonl(tmp_path / "av.jsonl", alpaca(range(16, 20))),
            "cls": write_jsonl(tmp_path / "c.jsonl", cls(range(16))),
            "cls_val": write_jsonl(tmp_path / "cv.jsonl", cls(range(16, 22)))}


def test_mixture_run_logs_per_task_and_overall_metrics(tiny_model_dir: Path, tmp_path: Path,
                                                       files: dict[str, Path]) -> None:
    from tunesmith.recipes import sft

    cfg = _mixture_cfg(tmp_path / "runs", tiny_model_dir, files)
    res = sft.run(cfg, progress=False)
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    seen = {k for r in steps for k in r if k.startswith("loss/")}
    assert seen == {"loss/sum", "loss/sentiment"}
    ev = res.loop.last_eval
    for task in ("sum", "sentiment"):
        for key in ("val_loss", "val_token_accuracy", "val_exact_match", "val_perplexity"):
            assert f"{key}/{task}" in ev
    assert "val_loss" in ev and "val_exact_match" in ev
    # overall = token-weighted per task; exact match = sequence-weighted (4 + 6 sequences)
    lo, hi = sorted([ev["val_loss/sum"], ev["val_loss/sentiment"]])
    assert lo <= ev["val_loss"] <= hi
    assert ev["val_exact_match"] == pytest.approx(
        (4 * ev["val_exact_match/sum"] + 6 * ev["val_exact_match/sentiment"]) / 10)
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    mix = manifest["mixture"]
    assert mix["probabilities"] == pytest.approx({"sum": 2 / 3, "sentiment": 1 / 3})
    assert mix["train"] == {"sum": 16, "sentiment": 16}


def test_rewritten_records_are_instructions(tiny_model_dir: Path, tmp_path: Path,
                                            files: dict[str, Path]) -> None:
    from tunesmith.data.mixture import prepare_mixture
    from tunesmith.recipes.common import build_tokenizer

    cfg = _mixture_cfg(tmp_path / "runs", tiny_model_dir, files)
    tok = build_tokenizer(cfg)
    data = prepare_mixture(cfg.data, cfg.data.mixture, tok)
    first_cls = data.train[data.tasks.index("sentiment")]
    text = tok.decode(first_cls.input_ids)
    assert "Sentiment of: red blue 0" in text
    assert tok.decode([t for t in first_cls.labels if t != -100]) == "no<|im_end|>"
    first_sum = data.train[0]
    assert "Answer briefly.\n\nAdd 0 and 1." in tok.decode(first_sum.input_ids)


@pytest.mark.parametrize("change, needle", [
    ({"task": "dpo"}, "data.mixture works with task sft"),
    ({"data": {"train": "x.jsonl"}}, "replaces data.train"),
])
def test_bad_mixture_configs(tiny_model_dir: Path, tmp_path: Path, files: dict[str, Path],
                             change: dict[str, Any], needle: str) -> None:
    cfg = _mixture_cfg(tmp_path, tiny_model_dir, files).model_dump()
    for k, v in change.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    with pytest.raises(ConfigError) as err:
        validate_dict(cfg)
    assert needle in str(err.value)


def test_validation_of_a_mixture_counts_for_early_stopping(tiny_model_dir: Path, tmp_path: Path,
                                                           files: dict[str, Path]) -> None:
    cfg = _mixture_cfg(tmp_path, tiny_model_dir, files)
    assert cfg.data.has_validation
    raw = cfg.model_dump()
    raw["train"]["early_stopping"]["patience"] = 2
    assert validate_dict(raw).train.early_stopping.patience == 2
    for d in raw["data"]["mixture"]["datasets"]:
        d["validation"] = None
    with pytest.raises(ConfigError, match="patience needs data.validation"):
        validate_dict(raw)
    raw["data"]["val_split"] = 0.2
    assert validate_dict(raw).data.has_validation
