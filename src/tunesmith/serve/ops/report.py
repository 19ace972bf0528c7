"""``tunesmith monitor``: what a server has been doing, from its request records.

Latency percentiles (p50/p90/p99, overall and per model and route), error rate (4xx and
5xx), throughput (requests and generated tokens per second of wall-clock time), and drift
of input lengths: the prompt lengths the server saw against the prompt lengths of a
training run's data, tokenized with the run's tokenizer and rendered with its chat
template exactly as the server renders requests. Drift is measured by the population
stability index (PSI, over ten quantile bins of the training lengths) and the two-sample
Kolmogorov-Smirnov statistic; PSI < 0.1 reads as stable, 0.1-0.25 as a moderate shift,
above 0.25 as significant drift. Output: ``report.html`` (self-contained, plots embedded),
``report.md`` and ``monitor.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from tunesmith.data.readers import read_rows
from tunesmith.errors import DataError, UsageError
from tunesmith.evaluate.report import Report, Section, png_of, pyplot, write_report
from tunesmith.inference.generate import render_prompt
from tunesmith.inference.prompts import prompt_of
from tunesmith.io import atomic_write_text
from tunesmith.models.artifacts import resolve_artifact
from tunesmith.models.load import load_tokenizer
from tunesmith.serve.db import Database
from tunesmith.serve.ops.monitoring import RequestRecord

GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/classify")
MAX_REFERENCE_ROWS = 5000


def load_records(db_url: str, model: str | None = None, since_hours: float | None = None
                 ) -> list[dict[str, Any]]:
    db = Database(db_url)
    try:
        q = select(RequestRecord).order_by(RequestRecord.time)
        if model:
            q = q.where(RequestRecord.model == model)
        if since_hours:
            q = q.where(RequestRecord.time >= time.time() - since_hours * 3600)
        with db.session() as s:
            cols = [c.name for c in RequestRecord.__table__.columns]
            return [{c: getattr(r, c) for c in cols} for r in s.scalars(q).all()]
    finally:
        db.dispose()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan, "mean": math.nan}
    a = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of the report (also written to monitor.json)."""
    n = len(records)
    errors = [r for r in records if r["status"] >= 400]
    ok = [r for r in records if r["status"] < 400]
    span = 0.0
    if records:
        end = max(r["time"] + r["latency_ms"] / 1000 for r in records)
        span = max(end - records[0]["time"], 1e-9)
    out_tokens = sum(r["completion_tokens"] or 0 for r in ok)
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault((r["model"] or "-", r["endpoint"]), []).append(r)
    groups = []
    for (model, endpoint), rs in sorted(by.items()):
        good = [r for r in rs if r["status"] < 400]
        groups.append({"model": model, "endpoint": endpoint, "requests": len(rs),
                       "errors": len(rs) - len(good),
                       "latency_ms": percentiles([r["latency_ms"] for r in good]),
                       "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in good),
                       "completion_tokens": sum(r["completion_tokens"] or 0 for r in good)})
    status_counts: dict[str, int] = {}
    for r in records:
        status_counts[str(r["status"])] = status_counts.get(str(r["status"]), 0) + 1
    return {"requests": n, "errors": len(errors),
            "error_rate": len(errors) / n if n else 0.0,
            "client_errors": sum(1 for r in errors if r["status"] < 500),
            "server_errors": sum(1 for r in errors if r["status"] >= 500),
            "status_counts": status_counts,
            "window_s": span, "throughput_rps": n / span if span else 0.0,
            "completion_tokens_per_s": out_tokens / span if span else 0.0,
            "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in ok),
            "completion_tokens": out_tokens,
            "latency_ms": percentiles([r["latency_ms"] for r in ok]), "groups": groups,
            "first": records[0]["time"] if records else None,
            "last": records[-1]["time"] if records else None}


def psi(reference: list[int], served: list[int], bins: int = 10) -> float:
    """Population stability index over quantile bins of the reference distribution."""
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(served, dtype=float)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    idx_ref = np.searchsorted(edges, ref, side="right")
    idx_cur = np.searchsorted(edges, cur, side="right")
    k = len(edges) + 1
    p = np.bincount(idx_ref, minlength=k) / len(ref)
    q = np.bincount(idx_cur, minlength=k) / len(cur)
    p, q = np.clip(p, 1e-4, None), np.clip(q, 1e-4, None)
    return float(np.sum((q - p) * np.log(q / p)))


def drift(reference: list[int], served: list[int], label: str) -> dict[str, Any]:
    # deferred: optional (heavy, only this report needs it)
    from scipy.stats import ks_2samp

    if len(served) < 20:
        return {"reference": label, "served_n": len(served), "reference_n": len(reference),
                "psi": math.nan, "ks": math.nan, "ks_p": math.nan,
                "verdict": "too few requests to judge (fewer than 20)"}
    value = psi(reference, served)
    ks = ks_2samp(served, reference)
    verdict = ("stable" if value < 0.1 else "moderate shift" if value < 0.25
               else "significant drift")
    return {"reference": label, "served_n": len(served), "reference_n": len(reference),
            "psi": value, "ks": float(ks.statistic), "ks_p": float(ks.pvalue),
            "verdict": verdict,
            "served_median": float(np.median(served)),
            "reference_median": float(np.median(reference)),
            "longer_than_training_max": float(np.mean(np.asarray(served) > max(reference)))}


def training_lengths(run: str, data: Path | None = None) -> tuple[list[int], str]:
    """Prompt token lengths of a run's training data, as the server would count them."""
    # deferred: yaml is heavy and only this path needs it
    import yaml


    run_dir = Path(run)
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        raise UsageError("--run needs a training run directory (with config.yaml)",
                         where="--run", got=run, fix="pass runs/<name> of a `tunesmith train`")
    cfg = yaml.safe_load(cfg_file.read_text()) or {}
    source = data or _training_file(run_dir, cfg)
    tok = load_tokenizer(resolve_artifact(str(run_dir)))
    rows = read_rows(source, limit=MAX_REFERENCE_ROWS)
    lengths = []
    if cfg.get("task") == "classification":
        fld = (cfg.get("classification") or {}).get("text_field", "text")
        for r in rows:
            lengths.append(len(tok(str(r.data.get(fld, "")))["input_ids"]))
    else:
        templated = bool(getattr(tok, "chat_template", None))
        for r in rows:
            text = render_prompt(tok, prompt_of(r.data, r.where))
            lengths.append(len(tok(text, add_special_tokens=not templated)["input_ids"]))
    return lengths, f"{run_dir.name} ({source}, {len(lengths)} rows)"


def _training_file(run_dir: Path, cfg: dict[str, Any]) -> Path:
    manifest = run_dir / "manifest.json"
    names = [(cfg.get("data") or {}).get("train")]
    if manifest.exists():
        names.append(((json.loads(manifest.read_text()).get("data") or {}).get("train")
                      or {}).get("source"))
    for name in filter(None, names):
        for base in (Path.cwd(), run_dir.parent.parent, run_dir.parent, run_dir):
            p = Path(name) if Path(name).is_absolute() else base / name
            if p.exists():
                return p
    raise DataError("cannot find the run's training data", where=str(run_dir / "config.yaml"),
                    got=names[0], fix="pass the file with --data")


def _latency_png(records: list[dict[str, Any]]) -> bytes | None:
    if not records:
        return None
    plt = pyplot()
    t0 = records[0]["time"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.4))
    ok = [r for r in records if r["status"] < 400]
    bad = [r for r in records if r["status"] >= 400]
    ax1.scatter([r["time"] - t0 for r in ok], [r["latency_ms"] for r in ok], s=8,
                label="ok", color="#4a78b0")
    if bad:
        ax1.scatter([r["time"] - t0 for r in bad], [r["latency_ms"] for r in bad], s=10,
                    label="error", color="#c62828", marker="x")
    ax1.set_xlabel("seconds since first request")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title("latency over time", fontsize=10)
    ax1.legend(fontsize=8)
    ax1.grid(alpha=.3)
    if ok:
        ax2.hist([r["latency_ms"] for r in ok], bins=30, color="#4a78b0", alpha=.85)
        for name, v in percentiles([r["latency_ms"] for r in ok]).items():
            if name != "mean":
                ax2.axvline(v, ls="--", color="#333", lw=1)
                ax2.text(v, ax2.get_ylim()[1] * .95, name, fontsize=7, rotation=90, va="top")
    ax2.set_xlabel("latency (ms)")
    ax2.set_title("latency distribution (successful requests)", fontsize=10)
    return png_of(fig)


def _lengths_png(reference: list[int], served: list[int]) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    hi = max(max(reference, default=1), max(served, default=1))
    bins = np.linspace(0, hi, 31)
    ax.hist(reference, bins=bins, density=True, alpha=.55, label="training", color="#4a78b0")
    ax.hist(served, bins=bins, density=True, alpha=.55, label="served", color="#e08a1e")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("density")
    ax.set_title("input lengths: training data vs served requests", fontsize=10)
    ax.legend(fontsize=8)
    return png_of(fig)


def build_monitor_report(db_url: str, out_dir: Path, run: str | None = None,
                         data: Path | None = None, model: str | None = None,
                         since_hours: float | None = None) -> tuple[dict[str, Any], Path]:
    records = load_records(db_url, model, since_hours)
    summary = summarize(records)
    rep = Report("Serving monitor", f"{summary['requests']} requests"
                 + (f" to {model}" if model else ""))
    lat = summary["latency_ms"]
    rep.add(Section("summary", "Summary").table(["figure", "value"], [
        ["requests", summary["requests"]],
        ["error rate", f"{summary['error_rate']:.2%} ({summary['client_errors']} client, "
                       f"{summary['server_errors']} server)"],
        ["status codes", ", ".join(f"{k}: {v}" for k, v in
                                   sorted(summary["status_counts"].items()))],
        ["window", f"{summary['window_s']:.1f} s"],
        ["throughput", f"{summary['throughput_rps']:.3g} requests/s, "
                       f"{summary['completion_tokens_per_s']:.3g} generated tokens/s"],
        ["latency p50 / p90 / p99", f"{lat['p50']:.1f} / {lat['p90']:.1f} / {lat['p99']:.1f} ms"],
        ["tokens in / out", f"{summary['prompt_tokens']} / {summary['completion_tokens']}"]]))
    sec = Section("latency", "Latency by model and route")
    sec.image("latency", _latency_png(records), "latency over time and its distribution")
    sec.table(["model", "route", "requests", "errors", "p50 ms", "p90 ms", "p99 ms",
               "tokens in", "tokens out"],
              [[g["model"], g["endpoint"], g["requests"], g["errors"], g["latency_ms"]["p50"],
                g["latency_ms"]["p90"], g["latency_ms"]["p99"], g["prompt_tokens"],
                g["completion_tokens"]] for g in summary["groups"]],
              flags=[g["errors"] > 0 for g in summary["groups"]])
    rep.add(sec)
    if run:
        reference, label = training_lengths(run, data)
        served = [r["prompt_tokens"] for r in records
                  if r["status"] < 400 and r["endpoint"] in GENERATION_ROUTES
                  and r["prompt_tokens"]]
        d = summary["drift"] = drift(reference, served, label)
        status = {"stable": "pass", "moderate shift": "warn", "significant drift": "fail"}.get(
            d["verdict"], "info")
        ds = Section("drift", "Input-length drift")
        ds.verdicts([{"status": status, "text": f"{d['verdict']}: PSI {d['psi']:.3f}, KS "
                      f"{d['ks']:.3f} (p = {d['ks_p']:.3g}) over {d['served_n']} requests vs "
                      f"{d['reference_n']} training rows"}])
        if served:
            ds.image("input-lengths", _lengths_png(reference, served),
                     "training vs served prompt lengths")
            ds.table(["", "training", "served"], [
                ["rows", d["reference_n"], d["served_n"]],
                ["median prompt tokens", float(np.median(reference)), float(np.median(served))],
                ["p90 prompt tokens", float(np.percentile(reference, 90)),
                 float(np.percentile(served, 90))],
                ["max prompt tokens", max(reference), max(served)]])
        ds.text("PSI < 0.1: stable; 0.1-0.25: moderate shift; > 0.25: significant drift "
                "(bins: deciles of the training lengths).")
        rep.add(ds)
    out_dir.mkdir(parents=True, exist_ok=True)
    html, _ = write_report(out_dir, rep)
    atomic_write_text(out_dir / "monitor.json", json.dumps(_finite(summary), indent=1))
    return summary, html


def _finite(value: Any) -> Any:
    """NaN (no data) → null, so monitor.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
