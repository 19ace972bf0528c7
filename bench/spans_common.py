"""What ``bench/ner.py`` and ``bench/qa.py`` share: the first rows of a shared split, the
training settings both contenders get, the arguments, and the parent's table and ratios.

Each script keeps only what differs: its data encoding, its Trainer model and how each
contender is scored. The parent runs the Trainer worker, then tunesmith's, each in its own
subprocess (``bench.common.run_worker``), and prints one table and one comparison line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import SHARED, print_table, run_worker

Worker = Callable[[argparse.Namespace], dict[str, Any]]


def first_rows(path: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` JSONL records of ``path``."""
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line))
            if len(out) >= n:
                break
    return out


def shared_rows(dataset: str, split: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows of ``../shared/data/DATASET/SPLIT.jsonl``."""
    return first_rows(SHARED / dataset / f"{split}.jsonl", n)


def split_files(dataset: str, args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """``out/train.jsonl`` and ``out/test.jsonl``: the first ``--train-rows`` and
    ``--test-rows`` of the shared ``dataset``'s train and test splits."""
    train, test = out / "train.jsonl", out / "test.jsonl"
    for path, split, n in ((train, "train", args.train_rows), (test, "test", args.test_rows)):
        path.write_text("".join(json.dumps(r) + "\n" for r in shared_rows(dataset, split, n)))
    return train, test


def tunesmith_config(args: argparse.Namespace, task: str, section: dict[str, Any],
                     train: Path, out: Path, **extra_train: Any) -> Any:
    """The run configuration of tunesmith's contender: a fixed number of steps (no model
    selection), the same batch size, learning rate and linear schedule as the Trainer's."""
    from tunesmith.config import validate_dict

    return validate_dict({
        "name": task, "task": task, "model": {"name": args.model},
        "method": {"type": args.method}, "data": {"train": str(train)}, task: section,
        "train": {"max_steps": args.steps, "batch_size": args.batch, "lr": args.lr,
                  "scheduler": "linear", "save_every": 10**6, "seed": 42, **extra_train},
        "output": {"dir": str(out), "tensorboard": False}})


def trainer_arguments(args: argparse.Namespace, out: Path) -> Any:
    """The Trainer's settings matching :func:`tunesmith_config` (its own defaults otherwise:
    no warm-up, AdamW, fp32 on CPU)."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(out), max_steps=args.steps,
                             per_device_train_batch_size=args.batch, learning_rate=args.lr,
                             lr_scheduler_type="linear", save_strategy="no", report_to=[],
                             logging_steps=50, seed=42, use_cpu=not torch.cuda.is_available())


def parser(doc: str, train_rows: int, test_rows: int, max_length: int) -> argparse.ArgumentParser:
    """The arguments both scripts take, with their own default data sizes and max length."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--worker", choices=["tunesmith", "trainer"])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--method", default="full")
    ap.add_argument("--train-rows", type=int, default=train_rows)
    ap.add_argument("--test-rows", type=int, default=test_rows)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=max_length)
    ap.add_argument("--json", help="Also write the rows here.")
    return ap


def main(script: str, args: argparse.Namespace, workers: dict[str, Worker],
         columns: list[str], quality: list[str], speed: str) -> None:
    """As a worker: run one contender and print its JSON row. As the parent: run the
    Trainer, then tunesmith, each in its own process; print the table, the differences in
    the ``quality`` columns (points) and the ratios of ``speed`` and peak RSS."""
    if args.worker:
        print(json.dumps(workers[args.worker](args)))
        return
    passed = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
              if k not in ("worker", "json")]
    rows = [run_worker(script, name, passed) for name in ("trainer", "tunesmith")]
    print_table(rows, ["contender", *columns, "train_s", "peak_rss_mib", "wall_s"])
    p, t = rows
    diffs = ", ".join(f"{k} {t[k] - p[k]:+.2f} points" for k in quality)
    print(f"tunesmith vs Trainer: {diffs}, speed x{t[speed] / p[speed]:.2f}, "
          f"peak RSS x{t['peak_rss_mib'] / p['peak_rss_mib']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
