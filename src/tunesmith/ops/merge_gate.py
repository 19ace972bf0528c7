"""``tunesmith merge ... --eval FILE``: merge several candidates, evaluate each, keep the best.

A candidate is one merge method with one set of weights (``--method linear,ties`` and
``--weights 0.5,0.5 --weights 0.7,0.3`` give four). Each is merged as ``tunesmith merge``
would write it (``export.merge_adapters``), then all are scored on the same file by
``tunesmith eval``'s runner (``evaluate.runner.run_eval``: the task, its metrics and their
bootstrap CIs, as ``promote`` scores a candidate). With ``--general`` each candidate is also
scored on the general-ability suite and compared, paired, with the base model (the adapters'
base; for an average of full checkpoints, the first checkpoint): a candidate is refused when
the upper bound of the 95% CI of (candidate − base) accuracy is below −tolerance — the
forgetting guard of ``promote --general-tolerance``. Of the candidates that pass, the best by
the metric (``--metric``, else the task's primary metric) is kept.

The output directory is the kept candidate's plain checkpoint, with ``merge_candidates.json``
and ``merge_candidates.md`` (the table of all candidates) and ``eval/`` (the evaluation's
report). The other candidates are removed unless ``keep_candidates``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunesmith.errors import TrainingError, UsageError
from tunesmith.evaluate import general as G
from tunesmith.evaluate.examples import primary_metric
from tunesmith.evaluate.forgetting import GATE_RULE, score_model
from tunesmith.evaluate.metrics import ALIASES, INFO
from tunesmith.evaluate.runner import run_eval
from tunesmith.evaluate.tasks import EvalSettings
from tunesmith.export.merge_adapters import (
    METHODS,
    adapter_dir,
    average_checkpoints,
    merge_adapters,
)
from tunesmith.io import atomic_directory, atomic_write_text
from tunesmith.models.artifacts import adapter_base, is_adapter_dir, resolve_artifact

TABLE_FILE = "merge_candidates.json"


@dataclass
class Candidate:
    method: str
    weights: list[float] | None

    @property
    def label(self) -> str:
        w = "equal" if self.weights is None else "-".join(f"{x:g}" for x in self.weights)
        return f"{self.method}-w{w}"


def candidates(methods: list[str], weight_sets: list[list[float] | None]) -> list[Candidate]:
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise UsageError("unknown merge method", where="--method", got=bad or methods,
                         fix=f"use one or more of {', '.join(METHODS)}, comma-separated")
    out: list[Candidate] = []
    for m in methods:
        for w in weight_sets or [None]:
            if all(c.label != Candidate(m, w).label for c in out):
                out.append(Candidate(m, w))
    return out


def merge_one(models: list[str], out: Path, cand: Candidate, density: float, seed: int
              ) -> Path:
    if cand.method == "average":
        return average_checkpoints(models, out, cand.weights)
    return merge_adapters(models, out, cand.method, cand.weights, density, seed)


def reference_model(models: list[str]) -> str:
    """What ``--general`` compares with: the adapters' base, or the first checkpoint."""
    first = Path(str(resolve_artifact(models[0])))
    if any(is_adapter_dir(p) for p in (first, first / "adapter", first / "final" / "adapter")):
        return adapter_base(adapter_dir(models[0]))
    return str(first)


def metric_name(name: str | None, task: str, evaluated: list[str]) -> str:
    if name is None:
        return primary_metric(task, evaluated) or evaluated[0]
    resolved = name if name in INFO else (ALIASES.get(name.lower()) or [name])[0]
    if resolved not in evaluated:
        raise UsageError(f"--metric does not apply to this {task} evaluation",
                         where="--metric", got=name, fix=f"use one of {', '.join(evaluated)}")
    return resolved


def merge_with_gate(models: list[str], output: Path, methods: list[str],
                    weight_sets: list[list[float] | None], eval_file: str,
                    metric: str | None = None, settings: EvalSettings | None = None,
                    density: float = 0.5, seed: int = 0, general: bool = False,
                    general_tolerance: float = 0.02, general_limit: int | None = None,
                    keep_candidates: bool = False) -> dict[str, Any]:
    """Merge every candidate, evaluate, keep the best in ``output``; returns the table."""
    if not Path(eval_file).is_file():
        raise UsageError("evaluation file not found", where="--eval", got=eval_file,
                         fix="give a JSONL/CSV/Parquet file `tunesmith eval` reads")
    cands = candidates(methods, weight_sets)
    settings = settings or EvalSettings()
    with atomic_directory(output) as tmp:
        dirs = [merge_one(models, tmp / "candidates" / c.label, c, density, seed)
                for c in cands]
        summary = run_eval([str(d) for d in dirs], eval_file, tmp / "eval",
                           replace(settings, metrics=[]))
        task = summary["task"]
        evaluated = list(summary["models"][0]["metrics"])
        name = metric_name(metric, task, evaluated)
        higher = INFO[name].higher_is_better
        rows: list[dict[str, Any]] = []
        for c, d, m in zip(cands, dirs, summary["models"]):
            rows.append({"candidate": c.label, "method": c.method, "weights": c.weights,
                         "dir": d.name, name: m["metrics"][name], "ci95": m["ci95"][name],
                         "passed": True})
        reference = None
        if general:
            reference = reference_model(models)
            ref = score_model(reference, limit=general_limit, seed=seed)
            for row, d in zip(rows, dirs):
                got = score_model(d, limit=general_limit, seed=seed)
                cmp = G.compare(ref["records"], got["records"], seed=seed)
                row["general_accuracy"] = cmp["after"]
                row["general_delta"] = cmp["delta"]
                row["general_ci95"] = cmp["ci95"]
                row["passed"] = bool(cmp["ci95"][1] >= -general_tolerance)
        passed = [r for r in rows if r["passed"]]
        table = {"metric": name, "higher_is_better": higher, "task": task,
                 "eval_file": str(eval_file), "examples": summary["examples"],
                 "general": {"reference": reference, "tolerance": general_tolerance,
                             "rule": GATE_RULE} if general else None,
                 "candidates": rows, "kept": None}
        if not passed:
            raise TrainingError("no merge candidate passed the general-ability gate",
                                where=str(output), got=_lines(table),
                                fix="lower the adapters' weights, raise --general-tolerance, "
                                "or leave out --general")
        best = (max if higher else min)(passed, key=lambda r: r[name])
        table["kept"] = best["candidate"]
        for item in (tmp / "candidates" / best["dir"]).iterdir():
            shutil.move(str(item), str(tmp / item.name))
        if keep_candidates:
            shutil.rmtree(tmp / "candidates" / best["dir"])
        else:
            shutil.rmtree(tmp / "candidates")
        atomic_write_text(tmp / TABLE_FILE, json.dumps(table, indent=1))
        atomic_write_text(tmp / "merge_candidates.md", markdown(table))
    return table


def _lines(table: dict[str, Any]) -> str:
    return "; ".join(f"{r['candidate']}: {table['metric']} {r[table['metric']]:.4f}"
                     + (f", general Δ {r['general_delta']:+.4f}" if "general_delta" in r else "")
                     + ("" if r["passed"] else " (refused)") for r in table["candidates"])


def markdown(table: dict[str, Any]) -> str:
    name = table["metric"]
    general = table["general"] is not None
    better = "higher" if table["higher_is_better"] else "lower"
    head = ["candidate", f"{name} ({better} is better)", "95% CI"] + (["general acc", "Δ vs reference", "95% CI", "gate"]
                                    if general else []) + ["kept"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["candidates"]:
        cells = [r["candidate"], f"{r[name]:.4f}", f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]"]
        if general:
            cells += [f"{r['general_accuracy']:.4f}", f"{r['general_delta']:+.4f}",
                      f"[{r['general_ci95'][0]:+.4f}, {r['general_ci95'][1]:+.4f}]",
                      "pass" if r["passed"] else "refused"]
        cells.append("✓" if r["candidate"] == table["kept"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    return (f"# Merge candidates on {table['eval_file']} ({table['examples']} examples, "
            f"{table['task']})\n\n" + "\n".join(lines) + "\n")
