"""Retrieval metrics over ranked lists: recall@k and mean reciprocal rank.

Each query contributes a list of booleans, one per retrieved item in rank order (True =
relevant). recall@k is the share of queries with a relevant item in the top k (the
"success@k" reading used for one gold passage per question); MRR averages 1/rank of the
first relevant item (0 when none was retrieved). Both are means of per-query values, so
their bootstrap CIs come from resampling queries.
"""

from __future__ import annotations

from collections.abc import Sequence


def hit_at(relevant: Sequence[bool], k: int) -> float:
    return float(any(relevant[:k]))


def reciprocal_rank(relevant: Sequence[bool]) -> float:
    return next((1.0 / r for r, rel in enumerate(relevant, 1) if rel), 0.0)


def retrieval_metrics(per_query: Sequence[Sequence[bool]], ks: Sequence[int]
                      ) -> dict[str, float]:
    """``recall@k`` for each k and ``mrr``, averaged over queries."""
    n = max(len(per_query), 1)
    out = {f"recall@{k}": sum(hit_at(q, k) for q in per_query) / n for k in ks}
    out["mrr"] = sum(reciprocal_rank(q) for q in per_query) / n
    return out
