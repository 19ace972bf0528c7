"""Single examples of an evaluation: which are worst, which are errors, and how each is shown.

Shared by ``analyze`` (worst examples, the relabel queue) and the reports (example cards),
so both rank and show an example the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PRIMARY_ORDER = ("chrf", "token_f1", "rougeL", "bleu", "rouge1", "exact_match")


LABEL_TASKS = ("classification", "zero-shot", "labels", "multi-label")


MULTI = "multi-label"


# -- ranking ------------------------------------------------------------------------------------
def primary(records: Sequence[dict[str, Any]], task: str) -> tuple[str, bool]:
    """(per-example value used to rank, higher is better)."""
    if task == MULTI:
        return "example_f1", True
    if task in LABEL_TASKS or task == "lm" or not records:
        return "loss", False
    scores = records[0].get("scores", {})
    return next((m for m in PRIMARY_ORDER if m in scores), next(iter(scores), "loss")), True


def primary_metric(task: str, metrics: Sequence[str]) -> str | None:
    """The corpus metric to chart: chrF, token F1, ... for generation; accuracy; loss."""
    order = {"lm": ("perplexity", "loss")}.get(task, ("accuracy",) if task in LABEL_TASKS
                                               else PRIMARY_ORDER)
    return next((m for m in order if m in metrics), metrics[0] if metrics else None)


def value_of(rec: dict[str, Any], name: str) -> float:
    return float(rec["loss"]) if name == "loss" else float(rec["scores"][name])


def worst_examples(records: Sequence[dict[str, Any]], task: str, metrics: Sequence[str] = (),
                   k: int = 20) -> dict[str, Any]:
    name, higher = primary(records, task)
    if task == MULTI:  # ties in F1: the higher loss first
        records = sorted(records, key=lambda r: -r["loss"])
    ranked = sorted(records, key=lambda r: value_of(r, name), reverse=not higher)
    by = "per-example F1 of the label set" if task == MULTI else \
        name if name == "loss" else f"sentence {name}"
    return {"by": by, "items": ranked[:k]}


def is_error(rec: dict[str, Any], task: str) -> bool:
    if task in LABEL_TASKS:
        return rec["label"] != rec["prediction"]
    if task == "generation" and "exact_match" in rec.get("scores", {}):
        return rec["scores"]["exact_match"] < 1
    return True  # loss / similarity tasks: every row can be queued, worst first


# -- the command ----------------------------------------------------------------------------
def example_card(rec: dict[str, Any], task: str, flag: bool = True) -> dict[str, Any]:
    fields: list[tuple[str, Any]] = [("input", clip(rec.get("input", "")))]
    if task == MULTI:
        fields += [("gold", ", ".join(rec["label"]) or "(none)"),
                   ("predicted", ", ".join(rec["prediction"]) or "(none)"),
                   ("missed", ", ".join(rec["missed"])), ("extra", ", ".join(rec["extra"])),
                   ("example F1", rec["scores"]["example_f1"]),
                   ("probabilities", ", ".join(f"{n} {p:.3f}" for n, p in rec["probs"].items()
                                               if n in rec["label"] or n in rec["prediction"]
                                               or p >= 0.2))]
    elif task in LABEL_TASKS:
        fields += [("gold", rec["label"]), ("predicted", rec["prediction"]),
                   ("confidence", rec["confidence"]), ("loss", rec["loss"])]
    elif task == "generation":
        fields += [("reference", clip(" ‖ ".join(rec["reference"]))),
                   ("prediction", clip(rec["prediction"])),
                   ("scores", ", ".join(f"{k} {v:.3f}" for k, v in rec["scores"].items()))]
    else:
        fields += [("loss / token", rec["loss"]), ("tokens", rec["tokens"])]
    return {"title": rec["where"], "fields": fields, "flag": flag}


def clip(text: str, n: int = 600) -> str:
    return text if len(text) <= n else text[:n] + " …"
