"""``tunesmith promote``: serve a candidate under a served name only if it evaluates no worse.

Both models are scored on the same file by ``tunesmith eval``'s runner (the current model
first, as the baseline), which also writes ``report.html``/``report.md`` for both into the
output directory. The decision uses one metric ``m`` (``--metric``, default the task's
primary metric: chrF for generation, perplexity for language modelling, accuracy for
classification and zero-shot labels) and the paired bootstrap of evaluate/metrics.py:

    d       = candidate − current on m, oriented so that d > 0 means the candidate is
              better (current − candidate for loss and perplexity)
    [lo,hi] = 95% paired-bootstrap CI of d (both models resampled with the same example
              indices; ``--bootstrap`` resamples, ``--seed``)
    promote  ⇔  lo ≥ −tolerance          (``--tolerance``, default 0, in m's units)

So the candidate is served only when the data rule out (at 97.5% one-sided) that it is worse
by more than the tolerance; two models answering identically give d = 0, [0, 0] and pass;
a candidate that merely looks better on too few examples does not. Fewer than two examples
give no interval and are refused before any model loads.

Promotion writes one alias record (serve/api/aliases.py: ``<data_dir>/aliases.json``) mapping
the served name (``--name``, default CURRENT's served name) to the candidate; a running
``tunesmith serve`` on that data directory answers with the candidate under that name from
the next request on. When the served name is already an alias, the baseline is the model it
serves now (whatever CURRENT says), so a promotion is always judged against what users get.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunesmith.data.readers import read_rows
from tunesmith.errors import DataError, ModelError, UsageError
from tunesmith.evaluate.examples import primary_metric
from tunesmith.evaluate.metrics import ALIASES, INFO
from tunesmith.evaluate.report import Section, eval_report, write_report
from tunesmith.evaluate.results import load_eval_dir
from tunesmith.evaluate.runner import FAMILY, KIND_OF_FAMILY, resolve_fields, resolve_task, run_eval
from tunesmith.evaluate.tasks import EvalSettings
from tunesmith.io import atomic_write_text
from tunesmith.models.artifacts import model_kind, resolve_artifact
from tunesmith.serve.api.aliases import read_aliases, set_alias
from tunesmith.serve.api.engines import served_name
from tunesmith.serve.paths import resolve_model_name
from tunesmith.serve.settings import DEFAULT_DATA_DIR

RULE = "promote iff the lower bound of the 95% paired-bootstrap CI of (candidate − current, " \
       "oriented so that positive is better) ≥ −tolerance"


@dataclass
class PromoteRequest:
    """One ``tunesmith promote`` call (see the module docstring for the rule)."""

    candidate: str
    current: str
    eval_file: str | None  # None: decided by ``gates`` alone
    metric: str | None = None
    tolerance: float = 0.0
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    name: str | None = None
    output: Path | None = None
    dry_run: bool = False
    settings: EvalSettings = field(default_factory=EvalSettings)
    # more gates, all of which must pass: called with the resolved (candidate, current)
    # sources, each returns a decision shaped like ``decide``'s (humaneval/gate.py: a
    # campaign's human win rate)
    gates: list[Callable[[str, str], dict[str, Any]]] = field(default_factory=list)


# -- arguments ----------------------------------------------------------------------------------
def _check_arguments(req: PromoteRequest) -> None:
    """Everything checkable without a model: exit 2 naming the option, before any load."""
    if req.tolerance < 0 or req.tolerance != req.tolerance:
        raise UsageError("--tolerance must be 0 or more (it is how much worse the candidate "
                         "may be, in the metric's units)", where="--tolerance",
                         got=req.tolerance, fix="e.g. --tolerance 0.5 for chrF, 0 to require "
                         "no loss at all")
    if req.metric is not None and req.metric not in INFO and \
            len(ALIASES.get(req.metric.lower(), [])) != 1:
        raise UsageError("unknown metric (promote decides on one metric)", where="--metric",
                         got=req.metric, fix=f"use one of {', '.join(INFO)}")
    if req.name is not None and (not req.name.strip() or re.search(r"[\s\x00-\x1f]", req.name)):
        raise UsageError("--name must be a served model name (no spaces)", where="--name",
                         got=req.name, fix="e.g. --name support-bot")
    if req.settings.bootstrap < 100:
        raise UsageError("too few bootstrap resamples for a 95% interval", where="--bootstrap",
                         got=req.settings.bootstrap, fix="use 1000 (the default) or more")
    if req.eval_file is None:
        if not req.gates:
            raise UsageError("nothing to decide on", where="--eval",
                             fix="give --eval FILE (an automatic metric), --campaign NAME (a "
                             "human evaluation), or both")
        return
    path = Path(req.eval_file)
    if not path.exists():
        raise UsageError("evaluation file not found", where="--eval", got=req.eval_file,
                         fix=f"give a JSONL/CSV/Parquet file (relative to {Path.cwd()})")


def _metric_name(name: str) -> str:
    """A metric or its one-metric alias (``em``, ``f1``, ``ppl``) → the metric's name."""
    return name if name in INFO else ALIASES[name.lower()][0]


def resolve_spec(spec: str, data_dir: Path, option: str) -> str:
    """The loadable form of a model argument.

    A local directory (made absolute, so the server finds it from any working directory),
    a fine-tuned job model of the data directory (``ft:...``), an alias (the model it serves
    now), else the name as given (embedded model or hub id). Checked loadable here, so a
    typo fails naming its option before anything is evaluated.
    """
    path = Path(spec).expanduser()
    job = resolve_model_name(data_dir, spec)
    alias = read_aliases(data_dir).get(spec)
    out = str(path.resolve()) if path.exists() else str(job.resolve()) if job else \
        alias["source"] if alias else spec
    try:
        resolve_artifact(out)
    except ModelError as exc:
        raise ModelError(exc.what, where=f"{option} {spec}", got=exc.where,
                         fix="give a run or model directory, an embedded model name, a "
                         f"fine-tuned model or alias of --data-dir {data_dir}") from None
    return out


def served_name_of(req: PromoteRequest) -> str:
    return req.name or served_name(req.current)


def _check_metric_applies(sources: list[str], req: PromoteRequest) -> None:
    """Fail fast (before any model loads) when ``--metric`` cannot apply to the eval's task,
    resolved as the runner resolves it; the default metric is picked after the eval."""
    rows = read_rows(req.eval_file, limit=req.settings.limit)
    if len(rows) < 2:
        raise DataError("the evaluation file needs at least 2 examples for a confidence "
                        "interval", where="--eval", got=f"{len(rows)} example(s)",
                        fix="evaluate on a held-out file of tens to hundreds of examples")
    if req.metric is None:
        return
    arts = [resolve_artifact(s) for s in sources]
    kinds = [model_kind(a) for a in arts]
    task = resolve_task(kinds[0], rows[0].data, resolve_fields(req.settings, arts, kinds))
    kind = KIND_OF_FAMILY[FAMILY[task]]
    allowed = {"classification", "multilabel"} if kind == "classification" else {kind}
    if INFO[_metric_name(req.metric)].kind not in allowed:
        raise UsageError(f"--metric does not apply to this {task} evaluation", where="--metric",
                         got=req.metric, fix="use one of " + ", ".join(
                             m for m, i in INFO.items() if i.kind in allowed))


# -- decision -----------------------------------------------------------------------------------
def decide(comparison: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """Apply the rule to one row of the runner's comparison (model = candidate, baseline =
    current): the oriented difference, its CI, the verdict and a sentence saying why."""
    higher = bool(comparison["higher_is_better"])
    sign = 1.0 if higher else -1.0
    d = sign * comparison["delta"]
    lo, hi = sorted((sign * comparison["low"], sign * comparison["high"]))
    ok = lo >= -tolerance  # False for NaN: no interval, no promotion
    m = comparison["metric"]
    why = (f"{m} ({'higher' if higher else 'lower'} is better): candidate "
           f"{comparison['b']:.4f} vs current {comparison['a']:.4f}; improvement {d:+.4f}, "
           f"95% CI [{lo:+.4f}, {hi:+.4f}] (paired bootstrap, p={comparison['p_value']:.3g}); "
           f"lower bound {lo:+.4f} {'≥' if ok else '<'} {-tolerance or 0.0:+.4g} (−tolerance)")
    return {"metric": m, "higher_is_better": higher, "candidate_value": comparison["b"],
            "current_value": comparison["a"], "improvement": d, "ci95": [lo, hi],
            "p_value": comparison["p_value"], "tolerance": tolerance, "rule": RULE,
            "promote": bool(ok), "reason": why}


def _default_out(data_dir: Path, served: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", served).strip("-.") or "model"
    return data_dir / "promotions" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


def _write_decision(out: Path, result: dict[str, Any]) -> None:
    """``promote.json`` and the eval report with the decision as its first section."""
    atomic_write_text(out / "promote.json", json.dumps(result, indent=1, default=str) + "\n")
    summary, records = load_eval_dir(out)
    rep = eval_report(summary, records)
    d = result["decision"]
    verdict = ("promoted" if result["promoted"] else "would be promoted (dry run)"
               if result["passed"] else "refused")
    sec = Section("promotion", "Promotion decision").verdicts(
        [{"status": "pass" if g["promote"] else "fail",
          "text": f"{result['candidate']} over {result['current']} as "
                  f"`{result['name']}`: {verdict}. {g['reason']}"} for g in result["gates"]])
    sec.table(["", "value"], [["rule", RULE], ["metric", d["metric"]],
                              ["candidate", result["candidate_source"]],
                              ["current", result["current_source"]],
                              ["tolerance", d["tolerance"]]])
    rep.sections.insert(0, sec)
    rep.title = f"Promotion: {result['candidate']} over {result['current']}"
    write_report(out, rep)


# -- the command --------------------------------------------------------------------------------
def run_promote(req: PromoteRequest,
                on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Evaluate, decide, report, and (unless refused or a dry run) write the alias.

    Returns the result also written to ``<out>/promote.json``: ``promoted``, ``decision``
    (figures, CI, reason), ``name``, sources, ``out_dir``, ``note`` (baseline replaced by
    the alias's model), ``alias_file`` when promoted.
    """
    _check_arguments(req)
    data_dir = Path(req.data_dir)
    served = served_name_of(req)
    candidate = resolve_spec(req.candidate, data_dir, "CANDIDATE")
    alias = read_aliases(data_dir).get(served)
    note = None
    if alias is not None:
        current = alias["source"]
        given = resolve_spec(req.current, data_dir, "--over")
        if given != current:
            note = (f"`{served}` is an alias serving {current} (promoted {alias.get('time')}); "
                    f"that is the baseline, not {req.current}")
    else:
        current = resolve_spec(req.current, data_dir, "--over")
    if candidate == current:
        raise UsageError("the candidate is the model already served", where="CANDIDATE",
                         got=candidate, fix=f"promote another model over `{served}`")
    human = [gate(candidate, current) for gate in req.gates]  # before any model loads
    out = req.output or _default_out(data_dir, served)
    if req.eval_file is None:
        return _finish(req, served, candidate, current, note, out, human[0], human,
                       task=None, examples=None)
    _check_metric_applies([current, candidate], req)
    # the runner's default metrics of a task are all the metrics it has for that task
    summary = run_eval([current, candidate], req.eval_file, out,
                       replace(req.settings, metrics=[]), on_progress)
    task, evaluated = summary["task"], list(summary["models"][0]["metrics"])
    metric = _metric_name(req.metric) if req.metric else \
        primary_metric(task, evaluated) or evaluated[0]
    if metric not in evaluated:
        raise UsageError(f"--metric does not apply to this {task} evaluation", where="--metric",
                         got=req.metric, fix=f"use one of {', '.join(evaluated)}")
    row = next((c for c in summary["comparison"] if c["metric"] == metric), None)
    if row is None:
        raise ModelError("the two classifiers have different label sets, so no comparison",
                         where="CANDIDATE / --over", got=[m["name"] for m in summary["models"]],
                         fix="promote a classifier trained on the same labels")
    decision = decide(row, req.tolerance)
    return _finish(req, served, candidate, current, note, out, decision, [decision, *human],
                   task=task, examples=summary["examples"])


def _finish(req: PromoteRequest, served: str, candidate: str, current: str, note: str | None,
            out: Path, decision: dict[str, Any], gates: list[dict[str, Any]],
            task: str | None, examples: int | None) -> dict[str, Any]:
    """Every gate must pass; write the decision (and the alias when promoted)."""
    passed = all(g["promote"] for g in gates)
    promoted = passed and not req.dry_run
    result: dict[str, Any] = {
        "promoted": promoted, "dry_run": req.dry_run, "name": served, "task": task,
        "candidate": req.candidate, "current": req.current, "candidate_source": candidate,
        "current_source": current,
        "eval": str(Path(req.eval_file).resolve()) if req.eval_file else None,
        "examples": examples, "decision": decision, "gates": gates, "passed": passed,
        "note": note, "out_dir": str(out),
        "report": str(out / "report.html") if req.eval_file else None}
    if req.eval_file:
        _write_decision(out, result)
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "promote.json", json.dumps(result, indent=1, default=str)
                          + "\n")
    if promoted:
        kind = "classifier" if task in ("classification", "multi-label") else "lm"
        record = {"source": candidate, "target": req.candidate, "over": req.current,
                  "over_source": current, "kind": kind, "metric": decision["metric"],
                  "candidate_value": decision["candidate_value"],
                  "current_value": decision["current_value"], "ci95": decision["ci95"],
                  "tolerance": decision["tolerance"], "eval": result["eval"],
                  "examples": examples, "report": result["report"],
                  "gates": [g["reason"] for g in gates],
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "created": int(time.time())}
        result["alias_file"] = str(set_alias(Path(req.data_dir), served, record))
    return result
