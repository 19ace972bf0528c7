"""Before/after on the general-ability suite: how much did fine-tuning forget?

Scores two models (the base and the fine-tuned one) on the same suite items, one at a
time (only one model is in memory), and compares them with the paired bootstrap:
``delta = after − before`` with its 95% CI. Used by ``train.general_eval`` (recorded in
the run's manifest and ``eval/general/``), ``tunesmith promote --general-tolerance`` and
``tunesmith baseline``. ``forgot`` is True when the whole CI lies below −tolerance, i.e.
the data rule out (at 97.5% one-sided) a drop smaller than the tolerance.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.device import inference_dtype
from tunesmith.evaluate import general as G
from tunesmith.evaluate.report import Report, Section, fmt, write_report
from tunesmith.io import atomic_directory, atomic_write_text
from tunesmith.models.artifacts import resolve_artifact
from tunesmith.models.load import load_causal_lm, load_tokenizer


def score_model(name: str | Path, sets: Sequence[str] | None = None, limit: int | None = None,
                n_boot: int = 1000, seed: int = 0, dtype: str = "auto") -> dict[str, Any]:
    """Load a causal LM by name or directory, score the suite, free the model."""
    src = resolve_artifact(str(name))
    model = load_causal_lm(src, dtype=inference_dtype(dtype)).eval()
    try:
        return G.run_general(model, load_tokenizer(src), sets=sets, limit=limit,
                             n_boot=n_boot, seed=seed)
    finally:
        del model
        gc.collect()


def before_after(before: str | Path, after: str | Path, out: Path | None = None,
                 sets: Sequence[str] | None = None, limit: int | None = None,
                 tolerance: float = 0.0, n_boot: int = 1000, seed: int = 0,
                 dtype: str = "auto") -> dict[str, Any]:
    """Score both, compare, and (with ``out``) write ``general.json`` and a report."""
    a = score_model(before, sets, limit, n_boot, seed, dtype)
    b = score_model(after, sets, limit, n_boot, seed, dtype)
    cmp = G.compare(a["records"], b["records"], n_boot, seed)
    result = {"before_model": str(before), "after_model": str(after),
              "items": a["items"], "tolerance": tolerance, **cmp,
              "forgot": bool(cmp["ci95"][1] < -tolerance),
              "before_sets": a["sets"], "after_sets": b["sets"],
              "before_ci95": a["ci95"], "after_ci95": b["ci95"],
              "scoring": a["scoring"]}
    if out is not None:
        with atomic_directory(out) as tmp:
            (tmp / "general.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
            for tag, rec in (("before", a), ("after", b)):
                (tmp / f"{tag}_records.jsonl").write_text(
                    "".join(json.dumps(r) + "\n" for r in rec["records"]), encoding="utf-8")
            write_report(tmp, report(result))
    return result


def report(r: dict[str, Any]) -> Report:
    rep = Report("General-ability check (forgetting)",
                 f"{r['before_model']} → {r['after_model']}, {r['items']} items")
    verdict = "fail" if r["forgot"] else "pass"
    rep.add(Section("verdict", "Verdict").verdicts([{"status": verdict, "text": (
        f"accuracy {fmt(r['before'])} → {fmt(r['after'])}: {r['delta']:+.4f}, 95% CI "
        f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] (paired bootstrap); "
        + ("a drop beyond the tolerance" if r["forgot"] else "no drop beyond the tolerance")
        + f" ({r['tolerance']:g})")}]))
    rows = [[name, fmt(r["before_sets"][name]["acc"]), fmt(r["after_sets"][name]["acc"]),
             fmt(r["after_sets"][name]["acc"] - r["before_sets"][name]["acc"]),
             r["before_sets"][name]["items"]] for name in r["before_sets"]]
    rep.add(Section("sets", "Per set").table(
        ["set", "before acc", "after acc", "difference", "items"], rows,
        caption=r["scoring"] + "; the packaged suite (see general_suite/ATTRIBUTION.md)"))
    return rep


GATE_RULE = "refuse iff the upper bound of the 95% paired-bootstrap CI of (candidate − " \
    "current) general-suite accuracy < −tolerance"


def general_gate(tolerance: float = 0.02, limit: int | None = None, n_boot: int = 1000,
                 seed: int = 0, dtype: str = "auto"):  # noqa: ANN201 (a gate callable)
    """A promotion gate (``tunesmith promote --general-tolerance``): called with the
    candidate's and the current model's sources, it scores both on the suite and refuses
    the candidate only when the data show a drop larger than ``tolerance`` (accuracy
    points, e.g. 0.02); a candidate as good, or not measurably worse, passes."""
    def gate(candidate: str, current: str) -> dict[str, Any]:
        r = before_after(current, candidate, None, None, limit, tolerance, n_boot, seed, dtype)
        ok = not r["forgot"]
        why = (f"general-ability suite ({r['items']} items): candidate {r['after']:.4f} vs "
               f"current {r['before']:.4f}; difference {r['delta']:+.4f}, 95% CI "
               f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] (paired bootstrap); upper bound "
               f"{r['ci95'][1]:+.4f} {'≥' if ok else '<'} {-tolerance:+.4g} (−tolerance)")
        return {"metric": "general_accuracy", "higher_is_better": True,
                "candidate_value": r["after"], "current_value": r["before"],
                "improvement": r["delta"], "ci95": r["ci95"], "p_value": r["p_value"],
                "tolerance": tolerance, "rule": GATE_RULE, "promote": ok, "reason": why}
    return gate


def run_general_eval(models: Sequence[str], out: Path, sets: Sequence[str] | None = None,
                     limit: int | None = None, n_boot: int = 1000, seed: int = 0,
                     dtype: str = "auto") -> dict[str, Any]:
    """``tunesmith eval MODEL [MORE...] --general``: each model's suite score with its CI;
    with two or more, each against the first (paired) and the before/after report."""
    if len(models) >= 2:
        results = [before_after(models[0], m, out / f"vs-{k}", sets, limit, 0.0, n_boot, seed,
                                dtype) for k, m in enumerate(models[1:], 1)]
        summary = {"models": list(models), "comparisons": results}
    else:
        r = score_model(models[0], sets, limit, n_boot, seed, dtype)
        summary = {"models": list(models), "score": r["score"], "ci95": r["ci95"],
                   "sets": r["sets"], "items": r["items"], "scoring": r["scoring"]}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "general.json", json.dumps(summary, indent=1))
    summary["out_dir"] = str(out)
    return summary
