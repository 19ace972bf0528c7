"""How far is ``tunesmith plan`` from the run it predicts? Predicted vs measured peak RSS and
training time, for a LoRA, a full and a classification run.

Each case: ``tunesmith plan CONFIG --json`` in one subprocess, then ``tunesmith train CONFIG``
in another (its own peak RSS from ``getrusage(RUSAGE_CHILDREN)``, its training time from
``metrics.jsonl``'s timestamps). Both with the allocator setting ``tunesmith train`` uses.
The default models are the tiny in-process ones of the tests (fast; RSS dominated by Python
and torch); ``--model DIR`` (e.g. SmolLM2's converted directory) for a real-sized one.

    python bench/plan_accuracy.py [--steps 30] [--plan-steps 4] [--model DIR] [--quick]

The activation term is sized at the largest micro-batch the run really forms from the
tokenised data (the rows here are short: ~20 tokens against max_length 128), which is what
this measures against a bound from max_length.

Timing figures are only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import MALLOC_ENV
from tests.helpers.tiny import build_tiny_model_dir, write_jsonl
from tests.helpers.tiny_cls import build_tiny_llama_cls_dir, write_sentiment


def configs(tmp: Path, steps: int, model: Path | None) -> dict[str, dict[str, Any]]:
    lm = model or build_tiny_model_dir(tmp / "tiny-llama")
    cls_model = model or build_tiny_llama_cls_dir(tmp / "tiny-cls")
    rows = [{"instruction": f"Add {i} and {i + 1}.", "input": "",
             "output": f"The sum is {2 * i + 1}."} for i in range(256)]
    sft_data = write_jsonl(tmp / "alpaca.jsonl", rows)
    cls_train, _ = write_sentiment(tmp, n_train=256, n_val=8)
    train = {"max_steps": steps, "batch_size": 8, "lr": 1e-3, "precision": "fp32",
             "scheduler": "constant", "seed": 0}
    base = {"data": {"train": str(sft_data), "max_length": 128}, "train": train,
            "output": {"dir": str(tmp / "runs"), "trackers": []}, "model": {"name": str(lm)}}
    return {
        "lora": {**base, "name": "lora", "method": {"type": "lora", "r": 8, "alpha": 16}},
        "full": {**base, "name": "full", "method": {"type": "full"}},
        "classification": {**base, "name": "cls", "task": "classification",
                           "model": {"name": str(cls_model)}, "method": {"type": "full"},
                           "data": {"train": str(cls_train)}},
    }


WRAP = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(p.returncode)")


def run(cmd: list[str]) -> tuple[str, int]:
    """stdout and peak RSS (bytes) of one command, measured by a fresh parent of its own
    (``ru_maxrss`` of children is a maximum over all of them)."""
    env = {**os.environ, **MALLOC_ENV, "TUNESMITH_NO_REEXEC": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", WRAP, *cmd], env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout, int(proc.stderr.strip().splitlines()[-1]) * 1024


def train_seconds(run_dir: Path) -> float:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows if "loss" in r]
    return (times[-1] - times[0]) * len(times) / max(len(times) - 1, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--plan-steps", type=int, default=4)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--only", choices=["lora", "full", "classification"])
    ap.add_argument("--quick", action="store_true", help="smoke settings: 8 steps, plan 2")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.plan_steps = 8, 2
    table = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for name, raw in configs(tmp, args.steps, args.model).items():
            if args.only and name != args.only:
                continue
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(raw))
            tm = [sys.executable, "-m", "tunesmith"]
            out, _ = run([*tm, "plan", str(path), "--steps", str(args.plan_steps), "--json"])
            plan = json.loads(out)
            _, peak = run([*tm, "train", str(path)])
            secs = train_seconds(tmp / "runs" / raw["name"])
            table.append((name, plan["peak"] / 2**20, peak / 2**20, plan["seconds"], secs))
    print(f"{'case':16} {'pred MiB':>9} {'meas MiB':>9} {'err':>7} {'pred s':>8} "
          f"{'meas s':>8} {'err':>7}")
    for name, pp, mp, ps, ms in table:
        print(f"{name:16} {pp:9.0f} {mp:9.0f} {(pp - mp) / mp:+7.1%} {ps:8.2f} {ms:8.2f} "
              f"{(ps - ms) / ms:+7.1%}")


if __name__ == "__main__":
    main()
