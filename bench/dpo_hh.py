"""DPO with LoRA on SmolLM2 over HH-RLHF harmless: reward accuracy on the 300 test pairs.

Runs ``configs/dpo/hh-lora.yaml`` (train pairs from ``../shared/data/hh_rlhf_harmless``,
test pairs as validation) and prints the test reward accuracy and margin before training
(policy == reference: every pair ties, 0.5) and at each evaluation, plus the speed.

    taskset -c 0 env OMP_NUM_THREADS=1 .venv/bin/python bench/dpo_hh.py [key=value ...]

Defaults sized for a short run on one shared CPU core: pairs whose prompt + longer response
fit in 128 tokens (618 of 2,003 train pairs, 87 of 300 test pairs), 40 steps of 4 pairs,
LoRA lr 1e-3, evaluation at the end. Override any key, e.g. ``data.max_length=192``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, SHARED, peak_rss_mib

DEFAULTS = ["data.max_length=128", "data.truncation=drop", "data.max_examples=null",
            "train.max_steps=40", "train.batch_size=4", "train.grad_accum=1", "train.lr=1e-3",
            "train.eval_every=40", "train.warmup_steps=3"]


def main(overrides: list[str]) -> dict:
    from tunesmith.config.load import load_config
    from tunesmith.recipes import dpo

    data = SHARED / "hh_rlhf_harmless"
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(ROOT / "configs/dpo/hh-lora.yaml", [
            f"data.train={data / 'train.jsonl'}", f"data.validation={data / 'test.jsonl'}",
            f"output.dir={out}", "output.tensorboard=false", *DEFAULTS, *overrides])
        t0 = time.time()
        res = dpo.run(cfg, progress=True)
        wall = time.time() - t0
        rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
        pairs = json.loads((res.run_dir / "manifest.json").read_text())["examples"]
    evals = [{k: round(v, 4) for k, v in r.items() if k.startswith("val_") or k == "step"}
             for r in rows if "val_loss" in r]
    out = {"pairs": pairs, "untrained_test_reward_accuracy": 0.5, "evals": evals,
           "final": evals[-1] if evals else None, "steps": res.loop.steps,
           "tokens_per_s": round(res.loop.tokens_per_s, 1), "wall_s": round(wall, 1),
           "peak_rss_mib": round(peak_rss_mib())}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
