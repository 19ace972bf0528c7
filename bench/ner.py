"""NER: tunesmith's token_classification against a transformers Trainer run (run_ner.py's
recipe), same model, data, steps, batch size, learning rate and max length, each in its
own subprocess (peak RSS is its own), in one invocation.

Data: ``../shared/data/conll2003`` (or ``--dataset wnut17``): the first ``--train-rows`` of
train, validation for tunesmith's model selection is off (both train a fixed number of
steps), scored on the first ``--test-rows`` of test. Both models are scored by the same
code: strict entity F1 (equal to seqeval's strict IOB2), words read at their first
sub-token; the Trainer's is also given with seqeval's default (conlleval) reading, which
run_ner.py reports. Speed: training examples (sentences) per second; memory: peak RSS.

    python bench/ner.py                                 # MiniLM, 600 steps (run it alone)
    python bench/ner.py --steps 20 --train-rows 200 --test-rows 100   # a quick check
    python bench/ner.py --model smollm2-135m-instruct   # a decoder with a token head
"""

from __future__ import annotations

import argparse
import json
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


def worker_tunesmith(args: argparse.Namespace) -> dict[str, Any]:
    from tunesmith.evaluate.spans_eval import run_span_eval
    from tunesmith.recipes.token_classify import run

    out = scratch_dir("bench-ner-")
    train, test = split_files(args.dataset, args, out)
    cfg = tunesmith_config(args, "token_classification", {"max_length": args.max_length},
                           train, out, warmup_steps=0)
    t0 = time.perf_counter()
    result = run(cfg, overwrite=True, progress=False)
    train_s = time.perf_counter() - t0
    # the loop's rate is in labelled tokens (its loss unit); sentences/s from the step log
    steps = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    sentences = sum(r.get("step_examples", 0) for r in steps)
    tokens = sum(r.get("step_labelled_tokens", 0) for r in steps)
    per_s = sentences / (tokens / result.loop.units_per_s) if tokens else 0.0
    ev = run_span_eval(str(result.run_dir), "token_classification", str(test), out / "eval",
                       batch_size=32)
    m = ev["models"][0]["metrics"]
    return {"contender": "tunesmith", "entity_f1": round(100 * m["entity_f1"], 2),
            "examples_per_s": round(per_s, 2), "train_s": round(train_s, 1),
            "peak_rss_mib": round(peak_rss_mib(), 0)}


def worker_trainer(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
    )

    from tunesmith.data.tags import entity_types, iob2_labels, to_iob2
    from tunesmith.metrics.entities import EntityCounts
    from tunesmith.models.registry import resolve_model_dir

    src = str(resolve_model_dir(args.model))
    train = shared_rows(args.dataset, "train", args.train_rows)
    test = shared_rows(args.dataset, "test", args.test_rows)
    labels = iob2_labels(entity_types(t for r in train for t in r["ner_tags"]))
    l2i = {n: i for i, n in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(src, add_prefix_space=True) \
        if "smollm" in args.model else AutoTokenizer.from_pretrained(src)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def encode(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            enc = tok(r["tokens"], is_split_into_words=True, truncation=True,
                      max_length=args.max_length)
            prev, lab = None, []
            for w in enc.word_ids():  # run_ner.py: label the first sub-token only
                lab.append(-100 if w is None or w == prev else l2i.get(r["ner_tags"][w], 0))
                prev = w
            out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                        "labels": lab, "word_ids": enc.word_ids()})
        return out

    model = AutoModelForTokenClassification.from_pretrained(
        src, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=l2i)
    model.config.pad_token_id = tok.pad_token_id
    tr = encode(train)
    targs = trainer_arguments(args, scratch_dir("bench-ner-hf-"))
    collator = DataCollatorForTokenClassification(tok)
    trainer = Trainer(model=model, args=targs, train_dataset=[
        {k: v for k, v in e.items() if k != "word_ids"} for e in tr], data_collator=collator)
    t0 = time.perf_counter()
    metrics = trainer.train().metrics
    train_s = time.perf_counter() - t0
    model.eval()
    counts, lenient_gold, lenient_pred = EntityCounts(), [], []
    with torch.inference_mode():
        for r, e in zip(test, encode(test)):
            logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            firsts: dict[int, int] = {}
            for t, w in enumerate(e["word_ids"]):
                if w is not None and w not in firsts:
                    firsts[w] = t
            raw = [labels[int(logits[firsts[w]].argmax())] if w in firsts else "O"
                   for w in range(len(r["tokens"]))]
            counts.update(r["ner_tags"], to_iob2(raw, "iob2").tags)
            lenient_gold.append(r["ner_tags"])
            lenient_pred.append(raw)
    row = {"contender": "trainer", "entity_f1": round(100 * counts.compute()["entity_f1"], 2),
           "examples_per_s": round(args.steps * args.batch / metrics["train_runtime"], 2),
           "train_s": round(train_s, 1), "peak_rss_mib": round(peak_rss_mib(), 0)}
    try:
        from seqeval.metrics import f1_score

        row["seqeval_default_f1_raw"] = round(100 * f1_score(lenient_gold, lenient_pred), 2)
    except ImportError:
        pass
    return row


def cli() -> None:
    ap = parser(__doc__, train_rows=4800, test_rows=3453, max_length=128)
    ap.add_argument("--dataset", default="conll2003")
    main(__file__, ap.parse_args(), {"tunesmith": worker_tunesmith, "trainer": worker_trainer},
         ["entity_f1", "examples_per_s"], quality=["entity_f1"], speed="examples_per_s")


if __name__ == "__main__":
    cli()
