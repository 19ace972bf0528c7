"""``tunesmith analyze``: where a model fails, and a queue of its errors to fix.

From an eval directory's predictions, per model:

- **worst examples** by per-example loss (language modelling, labels) or by the main text
  metric (generation: sentence chrF, else token F1, ROUGE-L, sentence BLEU, exact match);
- **confusion pairs**: the most frequent (expected → predicted) mistakes; for multi-label
  classifiers the most often missed and extra (wrongly predicted) labels instead, and the
  worst examples by per-example F1 of the label set;
- **slices**: every metric per input-length quartile, per label and per metadata field (a
  field with 2-30 short values, e.g. ``category``), each compared with the rest of the data
  by bootstrap; a slice is *flagged* when it is worse than the rest with a Holm-corrected
  one-sided p below ``alpha``. Corpus metrics (BLEU, chrF, perplexity) are recomputed
  exactly per slice from the stored statistics;
- **relabel queue** (``errors.jsonl``): the errors as training-format rows (the original
  row, or ``prompt``/``completion`` when the prompt came from a template) with a ``review``
  object (where it came from, the model's output, why it is queued). Fix the label or answer
  and feed the file to ``tunesmith data prepare`` or ``train``; extra fields are ignored.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.formats import detect_format
from tunesmith.errors import ConfigError
from tunesmith.evaluate.examples import (
    LABEL_TASKS,
    MULTI,
    example_card,
    is_error,
    primary,
    primary_metric,
    value_of,
    worst_examples,
)
from tunesmith.evaluate.metrics import (
    INFO,
    aggregator,
    normalize_answer,
    resample_sums,
    stats_matrix,
)
from tunesmith.evaluate.report import (
    Report,
    Section,
    bars_png,
    confusion_png,
    fmt,
    training_section,
    write_report,
)
from tunesmith.evaluate.results import load_eval_dir
from tunesmith.evaluate.spans_eval import is_span_eval, run_span_analyze
from tunesmith.io import atomic_directory

SKIP_FIELDS = {"index", "id", "idx", "row", "url", "messages", "prompt", "completion",
               "instruction", "input", "output", "text", "source", "target", "chosen",
               "rejected"}


def confusion_pairs(records: Sequence[dict[str, Any]], task: str, k: int = 15
                    ) -> list[dict[str, Any]]:
    """Most frequent (expected → predicted) mistakes; for generation, short answers only."""
    pairs: Counter[tuple[str, str]] = Counter()
    if task == MULTI:
        return []  # see label_errors
    for r in records:
        if task in LABEL_TASKS:
            if r["label"] != r["prediction"]:
                pairs[(r["label"], r["prediction"])] += 1
        elif task == "generation":
            ref = normalize_answer(r["reference"][0])
            pred = normalize_answer(r["prediction"])
            if ref != pred and len(ref.split()) <= 5 and len(pred.split()) <= 5:
                pairs[(ref, pred)] += 1
    errors = sum(pairs.values())
    out = [{"expected": a, "predicted": b, "count": n, "share_of_errors": n / errors}
           for (a, b), n in pairs.most_common(k) if task in LABEL_TASKS or n >= 2]
    return out


def label_errors(records: Sequence[dict[str, Any]], k: int = 15) -> list[dict[str, Any]]:
    """Multi-label: per class, how often it was missed (gold, not predicted) and predicted
    without being gold, most frequent first."""
    missed: Counter[str] = Counter(n for r in records for n in r["missed"])
    extra: Counter[str] = Counter(n for r in records for n in r["extra"])
    support: Counter[str] = Counter(n for r in records for n in r["label"])
    total = sum(missed.values()) + sum(extra.values())
    rows = [{"label": n, "missed": missed[n], "extra": extra[n], "support": support[n],
             "share_of_errors": (missed[n] + extra[n]) / total}
            for n in set(missed) | set(extra)]
    rows.sort(key=lambda r: (-(r["missed"] + r["extra"]), r["label"]))
    return rows[:k]


# -- slices -------------------------------------------------------------------------------------
def _words(rec: dict[str, Any]) -> int:
    return len(str(rec.get("input", "")).split())


def slice_groups(records: Sequence[dict[str, Any]], task: str, fields: Sequence[str] | None,
                 label_field: str = "label") -> dict[str, dict[str, list[int]]]:
    """{dimension: {slice name: record indices}} for length, label and metadata fields."""
    dims: dict[str, dict[str, list[int]]] = {}
    lengths = np.array([_words(r) for r in records])
    edges = sorted(set(np.quantile(lengths, [.25, .5, .75]).round().astype(int).tolist()))
    if len(records) >= 8 and edges:
        bounds = [-1, *edges, int(lengths.max())]
        groups = {f"{lo + 1}-{hi} words": [i for i, n in enumerate(lengths) if lo < n <= hi]
                  for lo, hi in zip(bounds, bounds[1:])}
        dims["input length"] = {k: v for k, v in groups.items() if v}
    if task == MULTI:  # overlapping slices: the rows whose gold set holds the label
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            for n in r["label"] or ["(none)"]:
                groups[n].append(i)
        dims["label"] = dict(groups)
    elif task in LABEL_TASKS:
        dims["label"] = _group(records, lambda r: r["label"])
    chosen = list(fields) if fields else _metadata_fields(records, label_field)
    for f in chosen:
        present = [r for r in records if f in r.get("row", {})]
        if fields and not present:
            raise ConfigError("no prediction record has this field", where="--slice-by", got=f,
                              fix=f"choose among {sorted(records[0].get('row', {}))}")
        dims[f] = _group(records, lambda r, f=f: _scalar(r.get("row", {}).get(f)))
    return {d: g for d, g in dims.items() if len(g) >= 2}


def _scalar(v: Any) -> str:
    return "(missing)" if v is None else v if isinstance(v, str) else json.dumps(v)


def _group(records: Sequence[dict[str, Any]], key: Any) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[str(key(r))].append(i)
    return dict(groups)


def _metadata_fields(records: Sequence[dict[str, Any]], label_field: str) -> list[str]:
    """Row fields that look like categories: 2-30 short values, most rows have them."""
    n = len(records)
    values: dict[str, list[Any]] = defaultdict(list)
    for r in records:
        for k, v in r.get("row", {}).items():
            if isinstance(v, (str, int, bool)) and (not isinstance(v, str) or len(v) <= 60):
                values[k].append(v)
    out = []
    for k, vs in values.items():
        if k in SKIP_FIELDS or k == label_field or len(vs) < 0.8 * n:
            continue
        distinct = len(set(vs))
        if 2 <= distinct <= min(30, max(2, n // 3)):
            out.append(k)
    return out


def _holm(pvalues: list[float]) -> list[float]:
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def slice_metrics(records: Sequence[dict[str, Any]], task: str, metrics: Sequence[str],
                  groups: dict[str, dict[str, list[int]]], n_labels: int = 0,
                  n_boot: int = 1000, alpha: float = 0.05, min_size: int = 5, seed: int = 0
                  ) -> list[dict[str, Any]]:
    """One row per (dimension, slice, metric): value, rest, difference, p and the flag."""
    if task in LABEL_TASKS:
        metrics = [m for m in metrics if m != "macro_f1"]  # degenerate inside a label slice
    rows: list[dict[str, Any]] = []
    for metric in metrics:
        stats = stats_matrix(metric, records, n_labels)
        agg = aggregator(metric, n_labels, task == MULTI)
        higher = INFO[metric].higher_is_better
        overall = agg(stats.sum(0))
        batch: list[dict[str, Any]] = []
        for dim, slices in groups.items():
            for name, idx in slices.items():
                mask = np.zeros(len(records), dtype=bool)
                mask[idx] = True
                inside, rest = stats[mask], stats[~mask]
                value = agg(inside.sum(0))
                row = {"dimension": dim, "slice": name, "metric": metric, "n": int(mask.sum()),
                       "value": value, "overall": overall,
                       "rest": agg(rest.sum(0)) if rest.size else float("nan"),
                       "p_value": 1.0, "flagged": False}
                if row["n"] >= min_size and rest.shape[0] >= min_size:
                    (si,) = resample_sums([inside], n_boot, seed)
                    (sr,) = resample_sums([rest], n_boot, seed + 1)
                    diff = np.array([agg(a) - agg(b) for a, b in zip(si, sr)])
                    diff = diff[np.isfinite(diff)]
                    row["low"], row["high"] = (float(q) for q in
                                               np.quantile(diff, [alpha / 2, 1 - alpha / 2]))
                    # one-sided: H0 "the slice is not worse than the rest"
                    not_worse = diff >= 0 if higher else diff <= 0
                    row["p_value"] = float((np.sum(not_worse) + 1) / (diff.size + 1))
                batch.append(row)
        adjusted = _holm([r["p_value"] for r in batch])
        for r, p in zip(batch, adjusted):
            worse = (r["value"] < r["rest"]) if higher else (r["value"] > r["rest"])
            r["p_holm"] = p
            r["flagged"] = bool(worse and p < alpha)
        rows += batch
    return rows


# -- relabel queue --------------------------------------------------------------------------
def queue_row(rec: dict[str, Any], task: str, settings: dict[str, Any], rank: int
              ) -> dict[str, Any]:
    """A training-format row for a reviewer: the original row plus a ``review`` object."""
    row = dict(rec.get("row", {}))
    review: dict[str, Any] = {"rank": rank, "where": rec["where"]}
    if task in LABEL_TASKS:
        text_field = settings.get("text_field") or "text"
        label_field = settings.get("label_field") or "label"
        if "text" not in row:  # classification rows need `text` (prepare and train)
            row["text"] = row.get(text_field) if isinstance(row.get(text_field), str) \
                else rec["input"]
        row.setdefault(label_field, rec["label"])
        if task == MULTI:
            review.update(reason="predicted label set differs from the gold set",
                          gold=rec["label"], predicted=rec["prediction"],
                          missed=rec["missed"], extra=rec["extra"],
                          example_f1=round(rec["scores"]["example_f1"], 4),
                          probabilities=rec["probs"])
        else:
            review.update(reason="predicted label differs from the gold label",
                          gold=rec["label"], predicted=rec["prediction"],
                          confidence=round(rec["confidence"], 4))
    elif task == "generation":
        if detect_format(row) not in ("messages", "alpaca", "prompt_completion"):
            row = {"prompt": rec["input"], "completion": rec["reference"][0], **row}
        review.update(reason="output differs from the reference", model_output=rec["prediction"],
                      scores={k: round(v, 4) for k, v in rec["scores"].items()})
    else:
        review.update(reason="high loss", loss=round(rec["loss"], 4), tokens=rec["tokens"])
    row["review"] = review
    return row


def relabel_queue(records: Sequence[dict[str, Any]], task: str, settings: dict[str, Any],
                  size: int = 200) -> list[dict[str, Any]]:
    """Errors worst first: confident label mistakes, lowest-scoring outputs, highest losses."""
    errors = [r for r in records if is_error(r, task)]
    if task in LABEL_TASKS:
        errors.sort(key=lambda r: -r["confidence"])
    else:
        name, higher = primary(records, task)
        errors.sort(key=lambda r: value_of(r, name), reverse=not higher)
    return [queue_row(r, task, settings, i + 1) for i, r in enumerate(errors[:size])]


def analyze_model(records: list[dict[str, Any]], task: str, metrics: list[str],
                  settings: dict[str, Any], n_labels: int, fields: Sequence[str] | None,
                  top: int, queue_size: int, alpha: float, n_boot: int) -> dict[str, Any]:
    groups = slice_groups(records, task, fields, settings.get("label_field") or "label")
    return {"worst": worst_examples(records, task, metrics, top),
            "confusion_pairs": confusion_pairs(records, task),
            **({"label_errors": label_errors(records)} if task == MULTI else {}),
            "errors": sum(is_error(r, task) for r in records),
            "slices": slice_metrics(records, task, metrics, groups, n_labels, n_boot, alpha,
                                    seed=int(settings.get("seed", 0))),
            "queue": relabel_queue(records, task, settings, queue_size)}


def run_analyze(eval_dir: Path, out: Path | None = None, fields: Sequence[str] | None = None,
                top: int = 20, queue_size: int = 200, alpha: float = 0.05, n_boot: int = 1000
                ) -> dict[str, Any]:
    """Analyse every model of ``eval_dir``; writes analysis.json, errors*.jsonl and reports."""
    summary, records = load_eval_dir(eval_dir)
    if is_span_eval(summary):  # entities / answers: their own analysis
        return run_span_analyze(eval_dir, summary, out, top)
    out = out or eval_dir / "analysis"
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / "analysis.json").exists())):
        raise ConfigError("the output directory exists and is not an analysis directory",
                          where="-o/--output", got=str(out),
                          fix="choose a new directory (an old analysis directory is replaced)")
    settings = summary.get("settings") or {}
    result: dict[str, Any] = {"eval_dir": str(eval_dir), "data": summary.get("data"),
                              "models": {}}
    for m in summary["models"]:
        task = m["task"]
        metrics = list(m["metrics"])
        n_labels = len((m.get("classification") or {}).get("labels", []))
        result["models"][m["name"]] = {"task": task, "dir": m.get("dir", "model"),
                                       "metrics": m["metrics"], **analyze_model(
            records[m["name"]], task, metrics, settings, n_labels, fields, top, queue_size,
            alpha, n_boot)}
    with atomic_directory(out) as tmp:
        single = len(result["models"]) == 1
        for name, a in result["models"].items():
            fname = "errors.jsonl" if single else f"errors-{a['dir']}.jsonl"
            a["queue_file"] = fname
            (tmp / fname).write_text("".join(json.dumps(r, ensure_ascii=False, default=str)
                                             + "\n" for r in a["queue"]), encoding="utf-8")
        slim = {**result, "models": {n: {**a, "queue": len(a["queue"]),
                                         "worst": {"by": a["worst"]["by"], "items": [
                                             {k: v for k, v in r.items() if k != "row"}
                                             for r in a["worst"]["items"]]}}
                                     for n, a in result["models"].items()}}
        (tmp / "analysis.json").write_text(json.dumps(slim, indent=1, default=str),
                                           encoding="utf-8")
        write_report(tmp, analysis_report(result, summary))
    result["out_dir"] = str(out)
    return result


def analysis_report(result: dict[str, Any], summary: dict[str, Any]) -> Any:
    """Report sections: summary, curves, confusion, worst examples, pairs, slices, queue."""
    models = result["models"]
    rep = Report(f"Error analysis: {', '.join(models)}", f"{summary.get('task', '')} on "
                 f"{result['data']} — from {result['eval_dir']}")
    rows = []
    for name, a in models.items():
        metrics = ", ".join(f"{k} {fmt(v)}" for k, v in a["metrics"].items())
        flagged = sum(r["flagged"] for r in a["slices"])
        rows.append([name, a["task"], len(a["worst"]["items"]), a["errors"], flagged,
                     a.get("queue_file", ""), metrics])
    rep.add(Section("summary", "Summary").table(
        ["model", "task", "worst shown", "errors", "flagged slices", "relabel queue", "metrics"],
        rows))
    rep.add(training_section(summary.get("models", [])))
    conf = Section("confusion-matrix", "Confusion matrix")
    for m in summary.get("models", []):
        c = m.get("classification")
        if c and m.get("task") == MULTI:  # no matrix: one row per class
            conf.heading(m["name"]).table(
                ["class", "precision", "recall", "f1", "support", "predicted"],
                [[n, v["precision"], v["recall"], v["f1"], v["support"], v["predicted"]]
                 for n, v in c["per_class"].items()])
        elif c:
            conf.heading(m["name"]).image(f"confusion-{m['dir']}", confusion_png(
                c["confusion_matrix"], c["labels"]), m["name"])
    rep.add(conf)
    worst = Section("worst-examples", "Worst examples")
    for name, a in models.items():
        worst.heading(f"{name} — by {a['worst']['by']}")
        worst.examples([example_card(r, a["task"], is_error(r, a["task"]))
                        for r in a["worst"]["items"]])
    rep.add(worst)
    pairs = Section("confusion-pairs", "Most frequent confusions")
    for name, a in models.items():
        if a["confusion_pairs"]:
            pairs.heading(name).table(["expected", "predicted", "count", "share of errors"],
                                      [[p["expected"], p["predicted"], p["count"],
                                        p["share_of_errors"]] for p in a["confusion_pairs"]])
    for name, a in models.items():
        if a.get("label_errors"):
            pairs.heading(f"{name} — most often missed and extra labels").table(
                ["label", "missed (gold, not predicted)", "extra (predicted, not gold)",
                 "gold support", "share of errors"],
                [[r["label"], r["missed"], r["extra"], r["support"], r["share_of_errors"]]
                 for r in a["label_errors"]])
    if not pairs.blocks:
        pairs.text("No repeated (expected → predicted) pair: confusion pairs are counted for "
                   "label tasks and for short generated answers.", "note")
    rep.add(pairs)
    sl = Section("slices", "Slices")
    sl.text("Each slice is compared with the rest of the data (bootstrap); ⚑ / red: worse than "
            "the rest with a Holm-corrected one-sided p < alpha.", "note")
    for name, a in models.items():
        by_metric: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in a["slices"]:
            by_metric[r["metric"]].append(r)
        chart = primary_metric(a["task"], list(by_metric))
        for metric, rs in by_metric.items():
            sl.heading(f"{name} — {metric}")
            if metric == chart:  # one chart per model; every metric gets its table
                labels = [f"{r['dimension']}: {r['slice']} (n={r['n']})" for r in rs]
                sl.image(f"slices-{a['dir']}-{metric}", bars_png(
                    labels, [r["value"] for r in rs], flags=[r["flagged"] for r in rs],
                    reference=rs[0]["overall"],
                    reference_label=f"overall {fmt(rs[0]['overall'])}",
                    title=f"{metric} by slice", xlabel=metric), f"{metric} by slice")
            sl.table(["dimension", "slice", "n", metric, "rest", "difference 95% CI", "p (Holm)"],
                     [[r["dimension"], r["slice"], r["n"], r["value"], r["rest"],
                       f"[{fmt(r.get('low', float('nan')))}, {fmt(r.get('high', float('nan')))}]",
                       r["p_holm"]] for r in rs], flags=[r["flagged"] for r in rs])
    rep.add(sl)
    q = Section("errors", "Relabel queue")
    for name, a in models.items():
        q.text(f"{name}: {a['queue'] if isinstance(a['queue'], int) else len(a['queue'])} rows "
               f"in {a.get('queue_file', 'errors.jsonl')} (worst first). Each row keeps its "
               "training format; correct the label or answer, delete the `review` object if "
               "you like, and pass the file to `tunesmith data prepare` or `tunesmith train`.")
    rep.add(q)
    return rep
