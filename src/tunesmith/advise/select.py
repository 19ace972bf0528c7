"""``tunesmith models select``: which base model to fine-tune, measured on the user's data.

Per candidate, on the same rows (``--data``, in a training format):

    loss, perplexity   on the answer tokens only (the training label mask): how well the
                       model already predicts what it would be trained to say
    task metric        zero-shot (and K-shot with ``--shots``) generation, scored against
                       the answers: the primary metric of ``tunesmith eval``
    probe              optional: the training loss after a short LoRA run (``--probe-steps``)
                       — how fast it learns the task
    cost               parameters, weight memory, and generation latency per example

The recommendation is the candidate with the best few-shot (else zero-shot) task metric;
when the best two are within each other's 95% CIs the smaller model is recommended, since
it serves cheaper and the data cannot tell them apart.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors import safe_open

from tunesmith.config.load import validate_dict
from tunesmith.errors import ConfigError
from tunesmith.evaluate.examples import primary_metric
from tunesmith.evaluate.report import Report, Section, fmt, write_report
from tunesmith.evaluate.runner import run_eval
from tunesmith.evaluate.tasks import EvalSettings
from tunesmith.io import atomic_write_text
from tunesmith.models.artifacts import resolve_artifact
from tunesmith.recipes import run_task


def parameters(source: Path | str) -> int | None:
    """Parameter count from the safetensors headers (no weights loaded)."""
    files = sorted(Path(str(source)).glob("*.safetensors"))
    total = 0
    for f in files:
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():
                shape = fh.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total or None


def _probe(name: str, data: str, out: Path, steps: int) -> float | None:
    raw = {"name": "probe", "model": {"name": name}, "method": {"type": "lora"},
           "data": {"train": data}, "train": {"max_steps": steps, "batch_size": 4},
           "output": {"dir": str(out), "tensorboard": False}}
    run_task(validate_dict(raw), overwrite=True)
    lines = (out / "probe" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(x)["loss"] for x in lines if '"loss"' in x]
    return float(losses[-1]) if losses else None


def select(candidates: list[str], data: str, out: Path, s: EvalSettings, shots: int = 0,
           train: str | None = None, probe_steps: int = 0) -> dict[str, Any]:
    """Measure every candidate, rank them, write ``select.json`` and a report."""
    if len(candidates) < 1:
        raise ConfigError("no candidate models", where="--candidates",
                          fix="e.g. --candidates smollm2-135m-instruct,./my-model")
    rows = []
    for k, name in enumerate(candidates):
        d = out / f"candidate-{k}"
        lm = run_eval([name], data, d / "lm", replace(s, task="lm", metrics=[]))["models"][0]
        zero = run_eval([name], data, d / "zero-shot", s)
        task = zero["task"]
        metric = primary_metric(task, list(zero["models"][0]["metrics"]))
        row = {"model": name, "loss": lm["metrics"]["loss"],
               "perplexity": lm["metrics"]["perplexity"], "metric": metric,
               "zero_shot": zero["models"][0]["metrics"][metric],
               "zero_shot_ci95": zero["models"][0]["ci95"][metric],
               "latency_ms": zero["models"][0]["cost"]["latency_ms"],
               "parameters": parameters(resolve_artifact(name))}
        row["weights_mib"] = round(row["parameters"] * 4 / 2**20, 1) if row["parameters"] \
            else None
        if shots:
            few = run_eval([name], data, d / "few-shot",
                           replace(s, shots=shots, shots_from=train or data))["models"][0]
            row["few_shot"], row["few_shot_ci95"] = few["metrics"][metric], few["ci95"][metric]
        if probe_steps:
            row["probe_loss"] = _probe(name, train or data, d / "probe", probe_steps)
        rows.append(row)
    key = "few_shot" if shots else "zero_shot"
    ranked = sorted(rows, key=lambda r: -r[key])
    best = ranked[0]
    reason = f"best {key.replace('_', '-')} {best['metric']} ({fmt(best[key])})"
    if len(ranked) > 1 and ranked[1][f"{key}_ci95"][1] >= best[f"{key}_ci95"][0]:
        tied = [r for r in ranked if r[f"{key}_ci95"][1] >= best[f"{key}_ci95"][0]]
        small = min(tied, key=lambda r: r["parameters"] or 0)
        if small is not best:
            reason = (f"{best['model']} and {small['model']} overlap in their 95% CIs; the "
                      f"smaller ({small['parameters']:,} parameters) serves cheaper")
            best = small
    result = {"data": data, "ranked_by": key, "candidates": ranked,
              "recommendation": best["model"], "reason": reason}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "select.json", json.dumps(result, indent=1, default=str))
    rep = Report("Base-model selection", f"{len(rows)} candidates on {data}")
    rep.add(Section("decision", "Recommendation").verdicts(
        [{"status": "pass", "text": f"{result['recommendation']}: {reason}"}]))
    cols = ["model", "parameters", "weights MiB", "loss", "perplexity", "zero-shot",
            *(["few-shot"] if shots else []), *(["probe loss"] if probe_steps else []),
            "latency ms"]
    rep.add(Section("candidates", "Candidates").table(cols, [[
        r["model"], r["parameters"], r["weights_mib"], fmt(r["loss"]), fmt(r["perplexity"]),
        fmt(r["zero_shot"]), *([fmt(r["few_shot"])] if shots else []),
        *([fmt(r.get("probe_loss"))] if probe_steps else []), fmt(r["latency_ms"], 1)]
        for r in ranked], caption="loss/perplexity on the answer tokens; task metric "
        f"{best['metric']}; latency per generated answer on this machine"))
    write_report(out, rep)
    result["out_dir"] = str(out)
    return result
