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
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import peak_rss_mib, scratch_dir
from bench.spans_common import (
    main,
    parser,
    shared_rows,
    split_files,
    trainer_arguments,
    tunesmith_config,
)


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
    from tunesmith.inference.spans import load_span_predictor
    from tunesmith.inference.spans_file import predict_answers_file
    from tunesmith.recipes.qa import run

    out = scratch_dir("bench-qa-")
    train, test = split_files("squad_v1", args, out)
    cfg = tunesmith_config(args, "extractive_qa", {"max_length": args.max_length,
                                                   "doc_stride": args.stride}, train, out)
    t0 = time.perf_counter()
    result = run(cfg, overwrite=True, progress=False)
    train_s = time.perf_counter() - t0
    _, m = predict_answers_file(load_span_predictor(str(result.run_dir), "fp32"), test, 32)
    assert m is not None
    return {"contender": "tunesmith", "exact_match": round(m["exact_match"], 2),
            "f1": round(m["f1"], 2), "windows_per_s": round(result.loop.units_per_s, 2),
            "train_s": round(train_s, 1), "peak_rss_mib": round(peak_rss_mib(), 0)}


def worker_trainer(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoTokenizer,
        Trainer,
        default_data_collator,
    )

    from tunesmith.models.registry import resolve_model_dir

    src = str(resolve_model_dir(args.model))
    out = scratch_dir("bench-qa-hf-")
    _, test = split_files("squad_v1", args, out)
    rows = shared_rows("squad_v1", "train", args.train_rows)
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
    targs = trainer_arguments(args, out / "hf")
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


def cli() -> None:
    ap = parser(__doc__, train_rows=8017, test_rows=1979, max_length=384)
    ap.add_argument("--stride", type=int, default=128)
    main(__file__, ap.parse_args(), {"tunesmith": worker_tunesmith, "trainer": worker_trainer},
         ["exact_match", "f1", "windows_per_s"], quality=["f1", "exact_match"],
         speed="windows_per_s")


if __name__ == "__main__":
    cli()
