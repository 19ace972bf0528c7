"""``tunesmith baseline``: should I fine-tune at all? Every option on the same test set.

The options, each scored by ``tunesmith eval``'s runner on the same rows:

    zero-shot            the base model as it is
    K-shot               the base model with K demonstrations from the training file
    rag                  the base model with passages retrieved from an index
    fine-tuned           a fine-tuned run (given, or trained by ``tunesmith baseline``)
    fine-tuned + rag     both, when an index is given

The decision table has, per option: the primary metric with its 95% bootstrap CI, the
difference from zero-shot with its paired-bootstrap CI, prompt tokens and latency per
example, and the training cost (steps and seconds, fine-tuned options only). The winner is
the option with the best primary metric; it wins *with confidence* when the paired CI of
(winner − runner-up) excludes 0, else the report says the data cannot separate them and
recommends the cheapest of the tied options (fewest prompt tokens, no training first):
a fine-tune that does not beat prompting measurably is not worth its cost.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.evaluate.examples import primary_metric
from tunesmith.evaluate.metrics import INFO, aggregator, paired_bootstrap, stats_matrix
from tunesmith.evaluate.report import Report, Section, fmt, write_report
from tunesmith.evaluate.results import load_eval_dir
from tunesmith.evaluate.runner import run_eval
from tunesmith.evaluate.tasks import EvalSettings
from tunesmith.io import atomic_write_text


@dataclass
class Option:
    name: str
    model: str
    settings: EvalSettings
    trained: bool = False
    training: dict[str, Any] | None = None  # steps, seconds, tokens/s of the fine-tune


def options(model: str, s: EvalSettings, train: str | None, shots: int, rag: str | None,
            tuned: str | None, training: dict[str, Any] | None = None) -> list[Option]:
    """The options the inputs allow (zero-shot always)."""
    out = [Option("zero-shot", model, s)]
    if shots:
        if not train:
            raise ConfigError("the K-shot option needs solved examples", where="--train",
                              fix="give --train FILE, or --shots 0 to skip few-shot")
        out.append(Option(f"{shots}-shot", model, replace(s, shots=shots, shots_from=train)))
    if rag:
        out.append(Option("rag", model, replace(s, rag=rag)))
    if tuned:
        out.append(Option("fine-tuned", tuned, s, True, training))
        if rag:
            out.append(Option("fine-tuned + rag", tuned, replace(s, rag=rag), True, training))
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_baseline(opts: list[Option], test: str, out: Path, metric: str | None = None,
                 n_boot: int = 1000, seed: int = 0, progress: Any = None) -> dict[str, Any]:
    """Evaluate every option, compare, decide, write ``baseline.json`` and the report."""
    runs = []
    for o in opts:
        summary = run_eval([o.model], test, out / _slug(o.name), o.settings, progress)
        _, records = load_eval_dir(out / _slug(o.name))
        model = summary["models"][0]
        runs.append((o, summary, {**model, "records": records[model["name"]]}))
    task = runs[0][1]["task"]
    evaluated = list(runs[0][2]["metrics"])
    m = metric or primary_metric(task, evaluated) or evaluated[0]
    if m not in evaluated:
        raise ConfigError("the metric does not apply to this task", where="--metric", got=m,
                          fix=f"use one of {', '.join(evaluated)}")
    higher = INFO[m].higher_is_better
    agg = aggregator(m)
    stats = [stats_matrix(m, r["records"]) for _, _, r in runs]
    rows = []
    for (o, _, r), st in zip(runs, stats):
        vs = paired_bootstrap(stats[0], st, agg, n_boot, seed)
        rows.append({"option": o.name, "model": o.model, "value": r["metrics"][m],
                     "ci95": r["ci95"][m], "vs_zero_shot": vs["delta"],
                     "vs_zero_shot_ci95": [vs["low"], vs["high"]],
                     "prompt_tokens": r["cost"]["prompt_tokens"],
                     "latency_ms": r["cost"]["latency_ms"], "trained": o.trained,
                     "training": o.training, "eval_dir": str(out / _slug(o.name))})
    result = {"task": task, "test": test, "examples": runs[0][1]["examples"], "metric": m,
              "higher_is_better": higher, "options": rows,
              "decision": decide(rows, stats, agg, higher, n_boot, seed)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "baseline.json", json.dumps(result, indent=1, default=str))
    write_report(out, report(result))
    result["out_dir"] = str(out)
    return result


def decide(rows: list[dict[str, Any]], stats: list[Any], agg: Any, higher: bool,
           n_boot: int, seed: int) -> dict[str, Any]:
    """The best option, its paired CI against the runner-up, and the recommendation."""
    sign = 1 if higher else -1
    order = sorted(range(len(rows)), key=lambda i: -sign * rows[i]["value"])
    best = order[0]
    if len(order) == 1:
        return {"winner": rows[best]["option"], "confident": False,
                "recommendation": rows[best]["option"], "reason": "only one option"}
    second = order[1]
    d = paired_bootstrap(stats[second], stats[best], agg, n_boot, seed)
    lo, hi = sorted((sign * d["low"], sign * d["high"]))
    confident = lo > 0
    # options the data cannot tell apart from the winner: the cheapest of them is advised
    tied = [best] + [i for i in order[1:] if not _better(stats[i], stats[best], agg, sign,
                                                         n_boot, seed)]
    cheapest = min(tied, key=lambda i: (rows[i]["trained"], rows[i]["prompt_tokens"]))
    w, r = rows[best]["option"], rows[second]["option"]
    reason = (f"{w} beats {r} by {sign * d['delta']:+.4f} (95% paired CI [{lo:+.4f}, "
              f"{hi:+.4f}])" + ("" if confident else
                                "; the data cannot separate them, so the cheapest of the "
                                f"tied options is advised: {rows[cheapest]['option']}"))
    return {"winner": w, "runner_up": r, "margin": sign * d["delta"], "margin_ci95": [lo, hi],
            "p_value": d["p_value"], "confident": confident,
            "tied": [rows[i]["option"] for i in tied],
            "recommendation": w if confident else rows[cheapest]["option"], "reason": reason}


def _better(a: Any, b: Any, agg: Any, sign: int, n_boot: int, seed: int) -> bool:
    """Whether ``b`` is measurably better than ``a`` (paired CI excludes 0)."""
    d = paired_bootstrap(a, b, agg, n_boot, seed)
    return min(sign * d["low"], sign * d["high"]) > 0


def report(r: dict[str, Any]) -> Report:
    d = r["decision"]
    rep = Report("Should I fine-tune? Baselines on the same test set",
                 f"{r['task']} on {r['test']} ({r['examples']} examples), metric {r['metric']}")
    rep.add(Section("decision", "Decision").verdicts([{
        "status": "pass" if d["confident"] else "warn",
        "text": f"Recommended: {d['recommendation']}. {d['reason']}."}]))

    def cost(row: dict[str, Any]) -> str:
        t = row.get("training") or {}
        return ", ".join(f"{k} {fmt(v)}" for k, v in t.items() if v is not None) or \
            ("trained" if row["trained"] else "none")

    rep.add(Section("options", "Decision table").table(
        ["option", r["metric"], "95% CI", "vs zero-shot", "95% paired CI", "prompt tokens",
         "latency ms", "training cost"],
        [[o["option"], fmt(o["value"]), f"[{fmt(o['ci95'][0])}, {fmt(o['ci95'][1])}]",
          f"{o['vs_zero_shot']:+.4f}", f"[{fmt(o['vs_zero_shot_ci95'][0])}, "
          f"{fmt(o['vs_zero_shot_ci95'][1])}]", fmt(o["prompt_tokens"], 1),
          fmt(o["latency_ms"], 1), cost(o)] for o in r["options"]],
        caption=f"{'higher' if r['higher_is_better'] else 'lower'} is better; CIs by "
        "bootstrap over test examples (paired: the same resampled examples for both options); "
        "latency is wall time per example on this machine; each option's full evaluation is "
        "in its own directory"))
    return rep
