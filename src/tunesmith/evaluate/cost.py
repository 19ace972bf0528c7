"""What each answer cost: prompt tokens and latency per example, beside quality.

Every task stamps ``prompt_tokens`` and ``latency_s`` on its records (``tasks.stamp``);
this module sums them per model for ``metrics.json`` and the report, so the price of
few-shot prompts or retrieved passages (more tokens read, slower answers) is visible next
to what they bought. Latency is wall time on the machine that ran the eval: compare
figures measured in one run, not across machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunesmith.evaluate.report import Section, fmt


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def cost_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean prompt tokens and latency per example; shots and passages used or dropped."""
    out: dict[str, Any] = {
        "prompt_tokens": _mean([r["prompt_tokens"] for r in records if "prompt_tokens" in r]),
        "latency_ms": 1000 * _mean([r["latency_s"] for r in records if "latency_s" in r]),
        "examples": len(records)}
    if any("shots" in r for r in records):
        out["shots_mean"] = _mean([len(r.get("shots", [])) for r in records])
        out["dropped_shots"] = sum(r.get("dropped_shots", 0) for r in records)
        out["examples_with_dropped_shots"] = sum(bool(r.get("dropped_shots")) for r in records)
    if any("passages" in r for r in records):
        out["passages_mean"] = _mean([len(r.get("passages", [])) for r in records])
        out["dropped_passages"] = sum(r.get("dropped_passages", 0) for r in records)
    return out


def cost_section(models: Sequence[dict[str, Any]]) -> Section:
    """One row per model: the cost figures of :func:`cost_summary`."""
    keys = ["prompt_tokens", "latency_ms", "shots_mean", "dropped_shots", "passages_mean",
            "dropped_passages"]
    keys = [k for k in keys if any(k in m.get("cost", {}) for m in models)]
    return Section("cost", "Cost per example").table(
        ["model", *keys], [[m["name"], *[fmt(m.get("cost", {}).get(k)) for k in keys]]
                           for m in models],
        caption="prompt tokens read (rendered with the chat template) and wall-clock latency "
        "per example (a batch's time shared by its examples); shots/passages: mean used, "
        "and how many were dropped to fit the context window")
