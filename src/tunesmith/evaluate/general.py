"""The general-ability suite: did fine-tuning cost the model what it knew?

Three small multiple-choice sets ship inside the package (``general_suite/``: HellaSwag,
MMLU, PIQA; 200 items each; licenses and attribution in ``general_suite/ATTRIBUTION.md``).
Each item is scored as lm-evaluation-harness scores a ``multiple_choice`` task, so the
figures can be checked against lm-eval's on the same items (:func:`write_lm_eval_tasks`
writes the local task files):

    context  = the set's prompt filled with the question (``SETS``; no chat template)
    ll(c)    = Σ log p(token) over the tokens of " " + choice c, given the context, where
               the continuation's tokens are tok(context + " " + c)[len(tok(context)):]
    acc      = [argmax_c ll(c) == answer]
    acc_norm = [argmax_c ll(c) / len(" " + c in bytes) == answer]

The suite score is the mean ``acc`` over all items (the three sets pooled), with a 95%
bootstrap CI over items; before/after comparisons use the paired bootstrap of
``metrics.py`` on the same items. A model should not be trained on these items.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.errors import ConfigError
from tunesmith.evaluate.metrics import aggregator, bootstrap_ci, paired_bootstrap
from tunesmith.io import atomic_write_text

SUITE_DIR = Path(__file__).parent / "general_suite"


@dataclass(frozen=True)
class McSet:
    name: str
    file: str
    template: str  # str.format over the row; lm-eval's doc_to_text in Jinja below
    jinja: str
    license: str


SETS = {s.name: s for s in [
    McSet("hellaswag", "hellaswag.jsonl", "{question}", "{{question}}", "MIT"),
    McSet("mmlu", "mmlu.jsonl", "Question: {question}\nAnswer:",
          "Question: {{question}}\nAnswer:", "MIT"),
    McSet("piqa", "piqa.jsonl", "Question: {question}\nAnswer:",
          "Question: {{question}}\nAnswer:", "AFL-3.0"),
]}


@dataclass(frozen=True)
class McItem:
    set: str
    id: str
    context: str
    choices: tuple[str, ...]
    answer: int


def load_suite(sets: Sequence[str] | None = None, limit: int | None = None) -> list[McItem]:
    """The suite's items (``limit`` per set: the first N, for quick checks)."""
    names = list(sets or SETS)
    unknown = [n for n in names if n not in SETS]
    if unknown:
        raise ConfigError("unknown general-ability set", where="--general-sets", got=unknown,
                          fix=f"use some of {', '.join(SETS)}")
    items = []
    for name in names:
        spec = SETS[name]
        lines = (SUITE_DIR / spec.file).read_text(encoding="utf-8").split("\n")
        rows = [json.loads(line) for line in lines if line.strip()][:limit]
        items += [McItem(name, r["id"], spec.template.format(question=r["question"]),
                         tuple(r["choices"]), int(r["answer"])) for r in rows]
    return items


def _encode_pair(tok: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing spaces move to the continuation; the continuation's tokens
    are what the whole string adds after the context's tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


@torch.inference_mode()
def loglikelihoods(model: Any, tok: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 16,
                   max_length: int = 2048) -> list[float]:
    """Σ log p(continuation | context) per (context, continuation) pair, in order."""
    device = next(model.parameters()).device
    encoded = [_encode_pair(tok, c, x) for c, x in pairs]
    order = sorted(range(len(encoded)), key=lambda i: -sum(map(len, encoded[i])))
    out = [0.0] * len(encoded)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        seqs = [(encoded[i][0] + encoded[i][1])[-(max_length + 1):][:-1] for i in idx]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):  # right padding: positions stay those of one sequence
            ids[row, :len(s)] = torch.tensor(s)
            mask[row, :len(s)] = 1
        logp = torch.log_softmax(model(input_ids=ids.to(device),
                                       attention_mask=mask.to(device)).logits.float(), -1)
        for row, i in enumerate(idx):
            cont = encoded[i][1]
            end = len(seqs[row])
            scores = logp[row, end - len(cont):end].gather(
                -1, torch.tensor(cont, device=logp.device)[:, None])
            out[i] = float(scores.sum())
    return out


def score_items(model: Any, tok: Any, items: Sequence[McItem], batch_size: int = 16,
                progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """One record per item: per-choice log-likelihoods, predictions, acc and acc_norm."""
    records, step = [], max(1, batch_size * 4)
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        pairs = [(it.context, " " + c) for it in chunk for c in it.choices]
        ll = loglikelihoods(model, tok, pairs, batch_size)
        k = 0
        for it in chunk:
            lls = ll[k:k + len(it.choices)]
            k += len(it.choices)
            norm = [v / len((" " + c).encode("utf-8")) for v, c in zip(lls, it.choices)]
            pred, pred_norm = int(np.argmax(lls)), int(np.argmax(norm))
            records.append({"set": it.set, "id": it.id, "answer": it.answer,
                            "loglikelihoods": lls, "prediction": pred,
                            "acc": float(pred == it.answer),
                            "acc_norm": float(pred_norm == it.answer)})
        if progress:
            progress(min(start + step, len(items)), len(items))
    return records


def _stats(records: Sequence[dict[str, Any]], key: str = "acc") -> np.ndarray:
    return np.asarray([[r[key], 1.0] for r in records], dtype=np.float64)


def summarize(records: Sequence[dict[str, Any]], n_boot: int = 1000, seed: int = 0
              ) -> dict[str, Any]:
    """Suite accuracy with a 95% CI, and each set's acc / acc_norm."""
    agg = aggregator("accuracy")
    value, lo, hi = bootstrap_ci(_stats(records), agg, n_boot, seed)
    sets = {}
    for name in dict.fromkeys(r["set"] for r in records):
        part = [r for r in records if r["set"] == name]
        v, a, b = bootstrap_ci(_stats(part), agg, n_boot, seed)
        sets[name] = {"acc": v, "ci95": [a, b], "acc_norm": agg(_stats(part, "acc_norm")
                                                                  .sum(0)), "items": len(part)}
    return {"score": value, "ci95": [lo, hi], "items": len(records), "sets": sets}


def compare(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]],
            n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """after − before on the same items: the paired-bootstrap difference and its CI."""
    if [r["id"] for r in before] != [r["id"] for r in after]:
        raise ValueError("general-ability records of different items cannot be paired")
    res = paired_bootstrap(_stats(before), _stats(after), aggregator("accuracy"), n_boot, seed)
    return {"before": res["a"], "after": res["b"], "delta": res["delta"],
            "ci95": [res["low"], res["high"]], "p_value": res["p_value"]}


def run_general(model: Any, tok: Any, out: Path | None = None, sets: Sequence[str] | None = None,
                limit: int | None = None, batch_size: int = 16, n_boot: int = 1000,
                seed: int = 0, progress: Callable[[int, int], None] | None = None
                ) -> dict[str, Any]:
    """Score a loaded model on the suite; ``out`` gets ``general.json`` and the records."""
    items = load_suite(sets, limit)
    started = time.perf_counter()
    records = score_items(model, tok, items, batch_size, progress)
    result = {**summarize(records, n_boot, seed), "seconds": time.perf_counter() - started,
              "scoring": "lm-eval multiple_choice log-likelihood (acc, acc_norm)",
              "records": records}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "general.json", json.dumps(
            {k: v for k, v in result.items() if k != "records"}, indent=1))
        atomic_write_text(out / "general_records.jsonl",
                          "".join(json.dumps(r) + "\n" for r in records))
    return result


TASK_YAML = """task: tunesmith_general_{name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: {text}
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def write_lm_eval_tasks(directory: Path, sets: Sequence[str] | None = None,
                        limit: int | None = None) -> list[str]:
    """lm-eval task YAMLs over the shipped files (``--include_path DIRECTORY``); with
    ``limit``, the first N items of each set are copied beside them. Returns task names."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for name in sets or SETS:
        spec = SETS[name]
        path = SUITE_DIR / spec.file
        if limit is not None:
            lines = path.read_text(encoding="utf-8").split("\n")
            path = directory / spec.file
            atomic_write_text(path, "".join(line + "\n" for line in
                                            [x for x in lines if x.strip()][:limit]))
        atomic_write_text(directory / f"tunesmith_general_{name}.yaml", TASK_YAML.format(
            name=name, path=path.resolve(), text=json.dumps(spec.jinja)))
        names.append(f"tunesmith_general_{name}")
    return names
