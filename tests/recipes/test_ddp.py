"""Data-parallel training on CPU: ``accelerate launch`` with 2 gloo processes matches one
process at the same global batch (each process takes half of every batch; gradients are
averaged over the labelled tokens of the whole global batch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.sft_support import raw_cfg, write_config

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNESMITH_HOME": str(home), "OMP_NUM_THREADS": "1",
           "TUNESMITH_NO_REEXEC": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.timeout(900)
def test_two_gloo_processes_match_one_process(tiny_model_dir: Path, alpaca_file: Path,
                                              tmp_path: Path) -> None:
    raw = raw_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs", method={"type": "full"},
                  train={"max_steps": 4, "batch_size": 8, "lr": 5e-3, "group_by_length": False})
    results: dict[str, dict[int, float]] = {}
    for name, launcher in {
        "one": [sys.executable, "-m", "tunesmith"],
        "two": [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "configs/accelerate/cpu-2proc.yaml"), "--main_process_port", "0",
                "-m", "tunesmith"],
    }.items():
        cfg = write_config(tmp_path / f"{name}.yaml", {**raw, "name": name})
        proc = _run([*launcher, "train", str(cfg)], tmp_path / f"home-{name}")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        results[name] = _losses(tmp_path / "runs" / name)
        assert (tmp_path / "runs" / name / "final" / "model.safetensors").exists()
    one, two = results["one"], results["two"]
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]  # each step logged once, by rank 0
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-3, abs=1e-4), step
    assert one[4] < one[1]  # and it learns

