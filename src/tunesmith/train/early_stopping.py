"""Which way each validation metric improves, shared by every training loop.

Early stopping and ``best/`` compare a new evaluation with the best so far; losses and
perplexity improve downward, accuracies, F1, precision and recall upward.
"""

from __future__ import annotations

from tunesmith.errors import ConfigError

LOWER_IS_BETTER = frozenset({"val_loss", "val_perplexity", "val_distill_loss"})
HIGHER_IS_BETTER = frozenset({"val_token_accuracy", "val_accuracy", "val_macro_f1",
                              "val_micro_f1", "val_weighted_f1", "val_macro_precision",
                              "val_macro_recall", "val_reward_accuracy",
                              "val_reward_margin", "val_reward", "val_entity_f1", "val_entity_precision",
                              "val_entity_recall", "val_entity_macro_f1", "val_exact_match",
                              "val_f1"})


def higher_is_better(metric: str) -> bool:
    """True when larger values of ``metric`` are better."""
    if metric in HIGHER_IS_BETTER:
        return True
    if metric in LOWER_IS_BETTER:
        return False
    raise ConfigError("unknown early-stopping metric", where="train.early_stopping.metric",
                      got=metric, fix="use one of " + ", ".join(sorted(LOWER_IS_BETTER |
                                                                      HIGHER_IS_BETTER)))


def is_improvement(value: float, best: float | None, metric: str, min_delta: float = 0.0
                   ) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (the first value always does)."""
    if best is None:
        return True
    if higher_is_better(metric):
        return value > best + min_delta
    return value < best - min_delta


def check_metric_available(metric: str, available: set[str] | frozenset[str] | tuple[str, ...],
                           task: str) -> None:
    """Raise a ConfigError when the loop of ``task`` does not compute ``metric``."""
    if metric not in available:
        raise ConfigError(f"train.early_stopping.metric {metric} is not computed by task {task}",
                          where="train.early_stopping.metric", got=metric,
                          fix=f"use one of {', '.join(available)}")
