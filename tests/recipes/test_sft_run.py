"""SFT runs end to end on the tiny model: early stopping and best/, metrics.jsonl, manifest,
truncation counts, and the run directory's life cycle."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import write_jsonl
from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.errors import ConfigError
from tunesmith.recipes import sft

pytestmark = pytest.mark.usefixtures("isolated_home")


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_early_stopping_stops_and_keeps_best(tiny_model_dir: Path, alpaca_file: Path,
                                            tmp_path: Path) -> None:
    # lr 1.0 on full weights without clipping: validation loss jumps after the first step
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, method={"type": "full"},
                   data={"val_split": 0.25},
                   train={"max_steps": 12, "eval_every": 1, "lr": 1.0, "max_grad_norm": None,
                          "early_stopping": {"patience": 2}})
    res = sft.run(cfg, progress=False)
    evals = [r for r in _metrics(res.run_dir) if "val_loss" in r]
    assert res.loop.stopped_early
    assert res.loop.steps < 12
    losses = {r["step"]: r["val_loss"] for r in evals}
    best_step = min(losses, key=losses.get)
    assert res.loop.best_step == best_step
    assert res.loop.best_metric == pytest.approx(losses[best_step])
    # stopped after exactly `patience` evaluations without improvement
    assert max(losses) == best_step + 2 == res.loop.steps
    best = json.loads((res.run_dir / "best" / "tunesmith_eval.json").read_text())
    assert best["step"] == best_step and best["val_loss"] == pytest.approx(losses[best_step])
    assert (res.run_dir / "best" / "model.safetensors").exists()
    status = json.loads((res.run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["stopped_early"] is True
    assert (res.final_dir / "model.safetensors").exists()


def test_metrics_and_manifest(tiny_model_dir: Path, alpaca_file: Path, messages_file: Path,
                              tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path,
                   data={"validation": str(messages_file), "format": "auto"},
                   train={"max_steps": 4, "eval_every": 2, "lr": 2e-2})
    # alpaca train + messages validation: auto-detection runs per file
    res = sft.run(cfg, progress=False)
    rows = _metrics(res.run_dir)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 and r["tokens_per_s"] > 0
               for r in train_rows)
    assert [r["step"] for r in eval_rows] == [2, 4]
    for r in eval_rows:
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-6)
        assert 0.0 <= r["val_token_accuracy"] <= 1.0

    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    train, val = manifest["data"]["train"], manifest["data"]["validation"]
    assert train["sha256"] == hashlib.sha256(alpaca_file.read_bytes()).hexdigest()
    assert val["sha256"] == hashlib.sha256(messages_file.read_bytes()).hexdigest()
    assert (train["rows"], train["format"]) == (24, "alpaca")
    assert (val["rows"], val["format"]) == (16, "messages")
    assert train["trained_tokens"] > 0 and train["masked_tokens"] > 0
    assert "<|im_start|>" in manifest["chat_template"]
    assert manifest["special_tokens"]["eos"] == "<|im_end|>"
    for lib in ("torch", "transformers", "peft", "accelerate"):
        assert manifest["versions"][lib], lib
    assert "git_commit" in manifest
    config = (res.run_dir / "config.yaml").read_text()
    assert "lr: 0.02" in config and str(alpaca_file) in config
    final_eval = json.loads((res.final_dir / "tunesmith_eval.json").read_text())
    assert final_eval["step"] == 4 and final_eval["val_loss"] == eval_rows[-1]["val_loss"]


@pytest.mark.parametrize("mode,kept,truncated,dropped", [("truncate", 8, 3, 0),
                                                         ("drop", 5, 0, 3)])
def test_truncation_counts_in_manifest(tiny_model_dir: Path, tmp_path: Path, mode: str,
                                       kept: int, truncated: int, dropped: int) -> None:
    long = " ".join(["red blue green stop maybe"] * 12)
    rows = [{"prompt": f"Say {w}.", "completion": f" {w}"}
            for w in ["hello", "yes", "no", "red", "blue"]]
    rows += [{"prompt": f"Repeat {i}.", "completion": " " + long} for i in range(3)]
    data = write_jsonl(tmp_path / "pc.jsonl", rows)
    cfg = make_cfg(tiny_model_dir, data, tmp_path / "runs",
                   data={"max_length": 32, "truncation": mode}, train={"max_steps": 1})
    res = sft.run(cfg, progress=False)
    st = json.loads((res.run_dir / "manifest.json").read_text())["data"]["train"]
    assert (st["rows"], st["kept"], st["truncated"], st["dropped_too_long"]) == (
        8, kept, truncated, dropped)
    assert json.loads((res.run_dir / "manifest.json").read_text())["examples"]["train"] == kept


def test_existing_run_dir_needs_overwrite_or_resume(tiny_model_dir: Path, alpaca_file: Path,
                                                   tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, train={"max_steps": 1})
    sft.run(cfg, progress=False)
    with pytest.raises(ConfigError, match="already exists"):
        sft.run(cfg, progress=False)
    res = sft.run(cfg, overwrite=True, progress=False)
    assert (res.final_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (res.final_dir / "model.safetensors").exists()  # merged


def test_bf16_and_fp32_runs_in_one_process(tiny_model_dir: Path, alpaca_file: Path,
                                           tmp_path: Path) -> None:
    """accelerate's process-wide state must not pin the first run's precision."""
    for i, precision in enumerate(["bf16", "fp32", "bf16"]):
        cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path / str(i),
                       train={"max_steps": 1, "precision": precision})
        res = sft.run(cfg, progress=False)
        manifest = json.loads((res.run_dir / "manifest.json").read_text())
        assert manifest["precision"] == precision


def test_gradient_accumulation_matches_a_big_batch(tiny_model_dir: Path, alpaca_file: Path,
                                                   tmp_path: Path) -> None:
    """batch 2 x accumulation 2 trains exactly like batch 4 (token-weighted loss, same rows)."""
    from safetensors.torch import load_file

    runs = {}
    for bs, accum in ((4, 1), (2, 2)):
        cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path / f"{bs}x{accum}",
                       train={"max_steps": 3, "batch_size": bs, "grad_accum": accum,
                              "group_by_length": False, "lr": 2e-2})
        losses: dict[int, float] = {}
        res = sft.run(cfg, progress=False,
                      callbacks=[lambda s, v, losses=losses: losses.__setitem__(s, v["loss"])])
        runs[(bs, accum)] = (losses, load_file(res.final_dir / "adapter" / "adapter_model.safetensors"))
    (la, wa), (lb, wb) = runs[(4, 1)], runs[(2, 2)]
    assert sorted(la) == sorted(lb) == [1, 2, 3]
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=1e-5)
    import torch

    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)
