"""Multitask instruction tuning of SmolLM2 (LoRA) on SST-2 and TREC phrased as instructions.

Runs ``configs/multitask/sst2-trec-smollm2.yaml`` (temperature sampling, one task per batch)
and reports, per task and overall, validation loss, token accuracy and exact match (every
answer token is the argmax, i.e. what greedy decoding answers) before training (the base
model with the prompt) and after. Held-out sets, sized for a short CPU run: the first
``--eval`` SST-2 validation sentences and the first ``--eval`` TREC *test* questions (TREC
has no validation split; nothing here selects a model, so the test questions stay unseen).

    taskset -c 0 env OMP_NUM_THREADS=1 .venv/bin/python bench/multitask.py [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, SHARED, peak_rss_mib


def _head(src: Path, out: Path, n: int) -> str:
    out.write_text("".join(src.read_text(encoding="utf-8").splitlines(True)[:n]),
                   encoding="utf-8")
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval", type=int, default=60)
    ap.add_argument("--train-examples", type=int, default=1000)
    args = ap.parse_args()
    from tunesmith.config import validate_dict
    from tunesmith.data.mixture import prepare_mixture
    from tunesmith.device import resolve_precision
    from tunesmith.recipes import common, sft
    from tunesmith.train.engine import TrainLoop, make_accelerator
    from tunesmith.train.objectives.sft import SFTObjective

    raw = yaml.safe_load((ROOT / "configs/multitask/sst2-trec-smollm2.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        sst2, trec = raw["data"]["mixture"]["datasets"]
        sst2.update(train=str(SHARED / "sst2/train.jsonl"), max_examples=args.train_examples,
                    validation=_head(SHARED / "sst2/validation.jsonl", t / "sst2_val.jsonl",
                                     args.eval))
        trec.update(train=str(SHARED / "trec/train.jsonl"), max_examples=args.train_examples,
                    validation=_head(SHARED / "trec/test.jsonl", t / "trec_test.jsonl",
                                     args.eval))
        raw["data"]["val_split"] = 0.0
        raw["train"].update(max_steps=args.steps, eval_every=args.steps, warmup_steps=5)
        raw["output"] = {"dir": str(t / "runs"), "tensorboard": False}
        cfg = validate_dict(raw)

        precision = resolve_precision(cfg.train.precision)
        tok = common.build_tokenizer(cfg)
        data = prepare_mixture(cfg.data, cfg.data.mixture, tok, cfg.train.seed)
        model, tok, _ = common.build_causal_lm(cfg, tok)
        (t / "base").mkdir()
        obj = SFTObjective(model, tok, data.train, data.validation, cfg, precision,
                           data.tasks, data.val_tasks, data.batch_plan)
        t0 = time.time()
        before = TrainLoop(obj, tok, cfg, t / "base", make_accelerator(precision),
                           show_progress=False).evaluate()  # LoRA B = 0: the base model
        eval_wall = time.time() - t0
        del model, obj
        t0 = time.time()
        res = sft.run(cfg, progress=True)
        wall = time.time() - t0
        rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
        manifest = json.loads((res.run_dir / "manifest.json").read_text())
    after = res.loop.last_eval
    keys = ("val_loss", "val_token_accuracy", "val_exact_match")
    table = {task: {k: {"before": round(before[f"{k}/{task}"], 4),
                        "after": round(after[f"{k}/{task}"], 4)} for k in keys}
             for task in ("sst2", "trec")}
    table["overall"] = {k: {"before": round(before[k], 4), "after": round(after[k], 4)}
                        for k in keys}
    task_steps = {task: sum(1 for r in rows if f"loss/{task}" in r) for task in ("sst2", "trec")}
    print(json.dumps({"metrics": table, "mixture": manifest["mixture"],
                      "steps_with_task": task_steps, "steps": res.loop.steps,
                      "train_wall_s": round(wall, 1), "eval_wall_s": round(eval_wall, 1),
                      "tokens_per_s": round(res.loop.tokens_per_s, 1),
                      "peak_rss_mib": round(peak_rss_mib())}))


if __name__ == "__main__":
    main()
