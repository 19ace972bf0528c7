"""Extractive QA: tunesmith's extractive_qa against a transformers Trainer run (run_qa.py's
recipe: doc-stride features, start/end positions, position 0 for "not in this window"),
same model, data, steps, batch size, learning rate, max length and stride, each in its own
subprocess (peak RSS is its own), in one invocation.

Data: ``../shared/data/squad_v1`` (the official dev set split by article: report figures
as "dev-derived"): the first ``--train-rows`` questions of its train split, scored on the
first ``--test-rows`` of its test split. Both models' logits go through the same best-span
search (n-best 20, at most 30 tokens: run_qa.py's defaults) and the same official-SQuAD
EM/F1, so the figures compare training, not post-processing. Speed: training windows
(features) per second; memory: peak RSS.

    python bench/qa.py                                   # MiniLM, 600 steps (run it alone)
    python bench/qa.py --steps 20 --train-rows 200 --test-rows 100    # a quick check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SHARED, peak_rss_mib, print_table, run_worker, scratch_dir


def _rows(path: Path, n: int) -> list[dict[str, Any]]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line))
            if len(out) >= n:
                break
    return out


def _files(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    train, test = out / "train.jsonl", out / "test.jsonl"
    for path, split, n in ((train, "train", args.train_rows), (test, "test", args.test_rows)):
        path.write_text("".join(json.dumps(r) + "\n" for r in _rows(
            SHARED / "squad_v1" / f"{split}.jsonl", n)))
    return train, test


def _score(model: Any, tok: Any, test: Path, args: argparse.Namespace) -> float:
    """F1 and EM of ``model`` on ``test`` through tunesmith's span search and metrics."""
    from tunesmith.inference.spans import SpanPredictor
    from tunesmith.inference.spans_file import predict_answers_file

    p = SpanPredictor(model.eval(), tok, "extractive_qa", {
        "max_length": args.max_length, "doc_stride": args.stride}, "fp32")
    _, metrics = predict_answers_file(p, test, batch_size=32)
    assert metrics is not None
    return metrics


def worker_tunesmith(args: argparse.Namespace) -> dict[str, Any]:
    from tunesmith.config import validate_dict
    from tunesmith.inference.spans import load_span_predictor
    from tunesmith.inference.spans_file import predict_answers_file
    from tunesmith.recipes.qa import run

    out = scratch_dir("bench-qa-")
    train, test = _files(args, out)
    cfg = validate_dict({
        "name": "qa", "task": "extractive_qa", "model": {"name": args.model},
        "method": {"type": args.method}, "data": {"train": str(train)},
        "extractive_qa": {"max_length": args.max_length, "doc_stride": args.stride},
        "train": {"max_steps": args.steps, "batch_size": args.batch, "lr": args.lr,
                  "scheduler": "linear", "save_every": 10**6, "seed": 42},
        "output": {"dir": str(out), "tensorboard": False}})
    t0 = time.perf_counter()
    result = run(cfg, overwrite=True, progress=False)
    train_s = time.perf_counter() - t0
    _, m = predict_answers_file(load_span_predictor(str(result.run_dir), "fp32"), test, 32)
    assert m is not None
    return {"contender": "tunesmith", "exact_match": round(m["exact_match"], 2),
            "f1": round(m["f1"], 2), "windows_per_s": round(result.loop.units_per_s, 2),
            "train_s": round(train_s, 1), "peak_rss_mib": round(peak_rss_mib(), 0)}


def worker_trainer(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from tunesmith.models.registry import resolve_model_dir

    src = str(resolve_model_dir(args.model))
    out = scratch_dir("bench-qa-hf-")
    train, test = _files(args, out)
    rows = _rows(train, args.train_rows)
    tok = AutoTokenizer.from_pretrained(src)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # run_qa.py's prepare_train_features, padded to max_length as its default does
    enc = tok([r["question"].lstrip() for r in rows], [r["context"] for r in rows],
              truncation="only_second", max_length=args.max_length, stride=args.stride,
              return_overflowing_tokens=True, return_offsets_mapping=True,
              padding="max_length")
    feats = []
    for i, k in enumerate(enc["overflow_to_sample_mapping"]):
        ans = rows[k]["answers"]
        seq, offs = enc.sequence_ids(i), enc["offset_mapping"][i]
        s_char = ans["answer_start"][0]
        e_char = s_char + len(ans["text"][0])
        ts = seq.index(1)
        te = len(seq) - 1 - seq[::-1].index(1)
        if offs[ts][0] > s_char or offs[te][1] < e_char:
            sp = ep = 0
        else:
            while ts < len(offs) and offs[ts][0] <= s_char:
                ts += 1
            sp = ts - 1
            while offs[te][1] >= e_char:
                te -= 1
            ep = te + 1
        feat = {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                "start_positions": sp, "end_positions": ep}
        if "token_type_ids" in enc:
            feat["token_type_ids"] = enc["token_type_ids"][i]
        feats.append(feat)
    model = AutoModelForQuestionAnswering.from_pretrained(src)
    model.config.pad_token_id = tok.pad_token_id
    targs = TrainingArguments(output_dir=str(out / "hf"), max_steps=args.steps,
                              per_device_train_batch_size=args.batch, learning_rate=args.lr,
                              lr_scheduler_type="linear", save_strategy="no", report_to=[],
                              logging_steps=50, seed=42, use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=targs, train_dataset=feats,
                      data_collator=default_data_collator)
    t0 = time.perf_counter()
    metrics = trainer.train().metrics
    train_s = time.perf_counter() - t0
    m = _score(model, tok, test, args)
    return {"contender": "trainer", "exact_match": round(m["exact_match"], 2),
            "f1": round(m["f1"], 2),
            "windows_per_s": round(args.steps * args.batch / metrics["train_runtime"], 2),
            "train_s": round(train_s, 1), "peak_rss_mib": round(peak_rss_mib(), 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=["tunesmith", "trainer"])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--method", default="full")
    ap.add_argument("--train-rows", type=int, default=8017)
    ap.add_argument("--test-rows", type=int, default=1979)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--json", help="Also write the rows here.")
    args = ap.parse_args()
    if args.worker:
        fn = worker_tunesmith if args.worker == "tunesmith" else worker_trainer
        print(json.dumps(fn(args)))
        return
    passed = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
              if k not in ("worker", "json")]
    rows = [run_worker(__file__, name, passed) for name in ("trainer", "tunesmith")]
    print_table(rows, ["contender", "exact_match", "f1", "windows_per_s", "train_s",
                       "peak_rss_mib", "wall_s"])
    t, p = rows[1], rows[0]
    print(f"tunesmith vs Trainer: F1 {t['f1'] - p['f1']:+.2f} points, EM "
          f"{t['exact_match'] - p['exact_match']:+.2f}, speed "
          f"x{t['windows_per_s'] / p['windows_per_s']:.2f}, peak RSS "
          f"x{t['peak_rss_mib'] / p['peak_rss_mib']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
