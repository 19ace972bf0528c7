"""torchrun: ``torchrun --nproc_per_node 2 -m tunesmith train CONFIG`` trains data-parallel
(2 gloo processes on CPU) with the same losses as one process at the same global batch, as
``accelerate launch`` does (tests/recipes/test_ddp.py); an environment that asks for more
processes than the group that forms is an error, not a silent run at world size 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.sft_support import raw_cfg, write_config
from tunesmith.errors import TrainingError
from tunesmith.train.distributed import check_world_size, expected_world_size


def _run(cmd: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "TUNESMITH_HOME": str(home), "OMP_NUM_THREADS": "1",
            "TUNESMITH_NO_REEXEC": "1", "HF_HUB_OFFLINE": "1", **env}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in env:
            full.pop(var, None)
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=600)


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.timeout(900)
def test_torchrun_two_processes_match_one_process(tiny_model_dir: Path, alpaca_file: Path,
                                                  tmp_path: Path) -> None:
    """The same global batch: one process accumulates 2 micro-batches per step, each of two
    processes takes one. 24 rows in batches of 8: step 2 ends the epoch with one micro-batch,
    so one process is idle in it (it must still join the all-reduce)."""
    raw = raw_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs", method={"type": "full"},
                  train={"max_steps": 3, "batch_size": 8, "lr": 5e-3, "group_by_length": False})
    results = {}
    for name, accum, launcher in [
        ("one", 2, [sys.executable, "-m", "tunesmith"]),
        ("two", 1, [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--standalone", "-m", "tunesmith"]),
    ]:
        cfg = write_config(tmp_path / f"{name}.yaml", {
            **raw, "name": name, "train": {**raw["train"], "grad_accum": accum}})
        proc = _run([*launcher, "train", str(cfg)], tmp_path / f"home-{name}")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        results[name] = _losses(tmp_path / "runs" / name)
    one, two = results["one"], results["two"]
    assert sorted(one) == sorted(two) == [1, 2, 3]  # each step logged once, by rank 0
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-3, abs=1e-4), step
    assert json.loads((tmp_path / "runs/two/manifest.json").read_text())  # rank 0 wrote it


class _Acc:
    def __init__(self, n: int) -> None:
        self.num_processes = n


def test_a_world_size_that_falls_back_to_one_process_is_an_error() -> None:
    assert expected_world_size({"WORLD_SIZE": "4"}) == 4 and expected_world_size({}) is None
    check_world_size(_Acc(2), {"WORLD_SIZE": "2"})
    check_world_size(_Acc(1), {"WORLD_SIZE": "1"})
    with pytest.raises(TrainingError) as info:
        check_world_size(_Acc(1), {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "head"})
    text = info.value.render()
    assert "asks for 2 processes but the process group has 1" in text and "torchrun" in text
    with pytest.raises(TrainingError, match="not started by torchrun"):
        check_world_size(_Acc(1), {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "1"})
    check_world_size(_Acc(1), {"PET_NNODES": "1"})


def test_world_size_without_a_reachable_group_fails_with_one_message(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path) -> None:
    """A pod told WORLD_SIZE=2 whose peer never comes: no silent single-process run."""
    cfg = write_config(tmp_path / "c.yaml", raw_cfg(tiny_model_dir, alpaca_file,
                                                    tmp_path / "runs"))
    proc = _run([sys.executable, "-m", "tunesmith", "train", str(cfg)], tmp_path / "home",
                PET_NNODES="2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "not started by torchrun" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs" / "t" / "metrics.jsonl").exists()
