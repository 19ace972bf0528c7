"""Classification: quality of the shipped example configs, and speed against HF Trainer.

Quality (each run in its own subprocess, configs from ``configs/classification/``, test sets
never seen in training or model selection):

  sst2-full     MiniLM-L6 full fine-tuning on SST-2 (train / validation → test accuracy)
  sst2-lora     MiniLM-L6 LoRA (all block linears) + trained head, same data
  sst2-smollm2  SmolLM2-135M with a classification head (LoRA on attention + head)
  trec          MiniLM-L6 full fine-tuning on TREC-6 (all of train, 10 epochs → test)
  trec-smollm2  SmolLM2-135M with a classification head on TREC-6 (LoRA + head, all of
                train, 3 epochs; 0.966-0.974, mean 0.970 over four runs, 14-20 min on 2 cores)

For each: test accuracy and macro-F1 of ``best/`` (chosen on validation) and ``final/``,
steps, training examples/s, wall time and peak RSS.

Speed (shared/research/peer-performance.md, section D): MiniLM-L6 full fine-tuning, SST-2,
batch 32, LR 5e-5 constant, max length 128, dynamic padding, 150 steps over the same 4,800
training rows, then accuracy on the full validation set. tunesmith (defaults: bf16 autocast
where the CPU has it, length-grouped batches; and in fp32) against transformers' Trainer
(fp32 defaults; and with ``bf16=True``). Examples/s are steady state (step 1 excluded, as in
the peer measurements); each contender runs in its own subprocess with the same allocator
environment, so peak RSS is its own.

    python bench/classify.py                       # everything (about an hour on 2 idle cores)
    python bench/classify.py --only speed          # the Trainer comparison only
    python bench/classify.py --only sst2-full,trec --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (
    MALLOC_ENV,
    ROOT,
    SHARED,
    peak_rss_mib,
    print_table,
    run_worker,
    scratch_dir,
)

CONFIGS = ROOT / "configs" / "classification"
QUALITY = {
    "sst2-full": ("sentiment.yaml", "sst2", True),
    "sst2-lora": ("sentiment-lora.yaml", "sst2", True),
    "sst2-smollm2": ("sentiment-smollm2.yaml", "sst2", True),
    "trec": ("question-type.yaml", "trec", False),
    "trec-smollm2": ("question-type-smollm2.yaml", "trec", False),
}
SPEED = ["trainer-fp32", "trainer-bf16", "tunesmith-auto", "tunesmith-fp32"]
SPEED_BATCH, SPEED_LR, SPEED_MAXLEN = 32, 5e-5, 128


# -- workers (run in subprocesses) ------------------------------------------------------------
def worker_quality(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from tunesmith.config import load_config
    from tunesmith.inference.predict import load_predictor, predict_file
    from tunesmith.recipes.classify import run

    config, data_dir, has_val = QUALITY[name]
    data = Path(args.data) / data_dir
    out = Path(args.out) if args.out else scratch_dir("bench-cls-")
    overrides = [f"data.train={data / 'train.jsonl'}", f"output.dir={out}", f"name={name}",
                 "output.tensorboard=false"]
    if has_val:
        overrides.append(f"data.validation={data / 'validation.jsonl'}")
    overrides += args.set or []
    cfg = load_config(CONFIGS / config, overrides)
    t0 = time.perf_counter()
    result = run(cfg, overwrite=True, progress=args.verbose)
    train_s = time.perf_counter() - t0
    row: dict[str, Any] = {
        "name": name, "model": cfg.model.name, "method": cfg.method.type,
        "steps": result.loop.steps, "stopped_early": result.loop.stopped_early,
        "best_step": result.loop.best_step,
        f"best_{cfg.train.early_stopping.metric}": result.loop.best_metric,
        "train_examples_per_s": result.loop.examples_per_s, "train_s": train_s}
    for which in ("best", "final"):
        if not (result.run_dir / which).is_dir():  # no validation data → no best/
            row[f"test_acc_{which}"] = row[f"test_macro_f1_{which}"] = None
            continue
        predictor = load_predictor(str(result.run_dir / which))
        t = time.perf_counter()
        _, metrics = predict_file(predictor, data / "test.jsonl", batch_size=64)
        assert metrics is not None
        row[f"test_acc_{which}"] = metrics["accuracy"]
        row[f"test_macro_f1_{which}"] = metrics["macro_f1"]
        row["predict_examples_per_s"] = metrics["examples"] / (time.perf_counter() - t)
    row["peak_rss_mib"] = peak_rss_mib()
    return row


def _speed_rows(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    return rows


def worker_tunesmith_speed(precision: str, args: argparse.Namespace) -> dict[str, Any]:
    from tunesmith.config import validate_dict
    from tunesmith.inference.predict import load_predictor, predict_file
    from tunesmith.recipes.classify import run

    sst2 = Path(args.data) / "sst2"
    tmp = scratch_dir("bench-cls-speed-")
    train = tmp / "train.jsonl"
    rows = _speed_rows(sst2 / "train.jsonl")[:args.speed_steps * SPEED_BATCH]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = validate_dict({
        "name": "speed", "task": "classification", "model": {"name": "minilm-l6"},
        "method": {"type": "full"}, "data": {"train": str(train)},
        "classification": {"max_length": SPEED_MAXLEN},
        "train": {"max_steps": args.speed_steps, "batch_size": SPEED_BATCH, "lr": SPEED_LR,
                  "scheduler": "constant", "seed": 0, "precision": precision},
        "output": {"dir": str(tmp / "runs"), "tensorboard": False}})
    stamps: list[tuple[float, int, int]] = []
    t0 = time.perf_counter()
    result = run(cfg, progress=False, callbacks=[
        lambda step, v: stamps.append((time.perf_counter(), v["step_examples"],
                                       v["step_tokens"]))])
    wall_train = time.perf_counter() - t0
    predictor = load_predictor(str(result.run_dir), precision=precision)
    t = time.perf_counter()
    _, metrics = predict_file(predictor, sst2 / "validation.jsonl", batch_size=64)
    eval_s = time.perf_counter() - t
    assert metrics is not None
    return {**_steady(stamps), "val_accuracy": metrics["accuracy"],
            "eval_examples_per_s": metrics["examples"] / eval_s, "train_wall_s": wall_train,
            "peak_rss_mib": peak_rss_mib()}


def worker_trainer_speed(bf16: bool, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from tunesmith.models.registry import pull

    path = str(pull("minilm-l6"))
    sst2 = Path(args.data) / "sst2"
    tok = AutoTokenizer.from_pretrained(path)
    rows = _speed_rows(sst2 / "train.jsonl")[:args.speed_steps * SPEED_BATCH]
    val = _speed_rows(sst2 / "validation.jsonl")

    def encode(rs: list[dict[str, Any]]) -> Dataset:
        enc = tok([r["text"] for r in rs], truncation=True, max_length=SPEED_MAXLEN)
        return Dataset.from_dict({**enc, "labels": [r["label"] for r in rs]})

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    conf = TrainingArguments(
        output_dir=str(scratch_dir("bench-trainer-")), per_device_train_batch_size=SPEED_BATCH,
        per_device_eval_batch_size=64, learning_rate=SPEED_LR, lr_scheduler_type="constant",
        max_steps=args.speed_steps, logging_steps=50, save_strategy="no", eval_strategy="no",
        report_to=[], seed=0, disable_tqdm=True, bf16=bf16, use_cpu=True)
    train_ds = encode(rows)
    lengths = [len(x) for x in train_ds["input_ids"]]
    stamps: list[tuple[float, int, int]] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            stamps.append((time.perf_counter(), SPEED_BATCH, 0))

    def accuracy(pred: Any) -> dict[str, float]:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    trainer = Trainer(model=model, args=conf, train_dataset=train_ds,
                      data_collator=DataCollatorWithPadding(tok), callbacks=[Stamp()],
                      compute_metrics=accuracy)
    t0 = time.perf_counter()
    trainer.train()
    wall_train = time.perf_counter() - t0
    val_ds = encode(val)
    t = time.perf_counter()
    ev = trainer.evaluate(val_ds)
    eval_s = time.perf_counter() - t
    steady = _steady(stamps)
    # Trainer's batches are random, so its non-pad tokens per step average out to the mean
    steady["tokens_per_s"] = steady["examples_per_s"] * float(np.mean(lengths))
    return {**steady, "val_accuracy": ev["eval_accuracy"],
            "eval_examples_per_s": len(val) / eval_s, "train_wall_s": wall_train,
            "peak_rss_mib": peak_rss_mib()}


def _steady(stamps: list[tuple[float, int, int]]) -> dict[str, Any]:
    """Examples (and non-pad tokens) of steps 2..N over the time from the end of step 1."""
    seconds = stamps[-1][0] - stamps[0][0]
    examples = sum(s[1] for s in stamps[1:])
    tokens = sum(s[2] for s in stamps[1:])
    return {"examples_per_s": examples / seconds, "tokens_per_s": tokens / seconds,
            "step_s": seconds / max(len(stamps) - 1, 1), "steady_steps": len(stamps) - 1}


# -- parent ----------------------------------------------------------------------------------
def run_speed(args: argparse.Namespace, passthrough: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in SPEED:
        r = run_worker(__file__, name, passthrough, MALLOC_ENV)
        r["name"] = name
        rows.append(r)
        print(f"  {name}: {r['examples_per_s']:.1f} examples/s, val acc "
              f"{r['val_accuracy']:.4f}, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    by = {r["name"]: r for r in rows}
    print(f"\nspeed: MiniLM-L6 full FT, SST-2, batch {SPEED_BATCH}, max_len {SPEED_MAXLEN}, "
          f"{args.speed_steps} steps (step 1 excluded), then validation accuracy")
    print_table(rows, ["name", "examples_per_s", "tokens_per_s", "step_s", "val_accuracy",
                       "eval_examples_per_s", "peak_rss_mib", "wall_s"])
    base = by["trainer-fp32"]
    print()
    for name in ("tunesmith-auto", "tunesmith-fp32", "trainer-bf16"):
        r = by[name]
        print(f"ratio {name} / trainer-fp32: examples/s "
              f"x{r['examples_per_s'] / base['examples_per_s']:.2f}, peak RSS "
              f"x{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}")
    r, t = by["tunesmith-auto"], by["trainer-bf16"]
    print(f"ratio tunesmith-auto / trainer-bf16 (same precision): examples/s "
          f"x{r['examples_per_s'] / t['examples_per_s']:.2f}, peak RSS "
          f"x{r['peak_rss_mib'] / t['peak_rss_mib']:.2f}")
    return rows


def run_quality(names: list[str], passthrough: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        r = run_worker(__file__, name, passthrough, MALLOC_ENV)
        rows.append(r)
        accs = ", ".join(f"{r[f'test_acc_{w}']:.4f} ({w}/)" for w in ("best", "final")
                         if r[f"test_acc_{w}"] is not None)
        print(f"  {name}: test acc {accs}, {r['steps']} steps, {r['train_s']:.0f} s, "
              f"{r['train_examples_per_s']:.1f} ex/s", flush=True)
    print("\nquality: test sets (SST-2 test 1,821 rows; TREC test 500 rows)")
    print_table(rows, ["name", "model", "method", "steps", "best_step", "test_acc_best",
                       "test_macro_f1_best", "test_acc_final", "train_examples_per_s",
                       "train_s", "peak_rss_mib", "wall_s"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=[*QUALITY, *SPEED])
    ap.add_argument("--only", help="comma-separated: speed and/or " + ", ".join(QUALITY))
    ap.add_argument("--data", default=str(SHARED), help="shared/data directory")
    ap.add_argument("--out", help="run directories go here (default: a temporary dir)")
    ap.add_argument("--speed-steps", type=int, default=150)
    ap.add_argument("--set", action="append", help="extra config override for quality runs")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--verbose", action="store_true", help="show training progress")
    args = ap.parse_args()
    if args.worker:
        if args.worker in QUALITY:
            result = worker_quality(args.worker, args)
        elif args.worker.startswith("trainer"):
            result = worker_trainer_speed(args.worker.endswith("bf16"), args)
        else:
            result = worker_tunesmith_speed(args.worker.split("-")[1], args)
        print(json.dumps(result))
        return
    chosen = args.only.split(",") if args.only else ["speed", *QUALITY]
    passthrough = ["--data", args.data, "--speed-steps", str(args.speed_steps)]
    passthrough += ["--out", args.out] if args.out else []
    passthrough += [x for s in args.set or [] for x in ("--set", s)]
    passthrough += ["--verbose"] if args.verbose else []
    results: dict[str, Any] = {}
    if "speed" in chosen:
        results["speed"] = run_speed(args, passthrough)
    names = [n for n in chosen if n in QUALITY]
    if names:
        results["quality"] = run_quality(names, passthrough)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
