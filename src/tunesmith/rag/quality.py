"""How well an index retrieves: recall@k and MRR on questions whose gold passage is known.

A retrieved chunk counts as relevant to a row when (first match wins):

- ``--gold-field`` names the gold passage's text: the chunk lies inside it or it inside the
  chunk (chunks are exact substrings of documents), or the chunk's document is that text;
- ``--gold-id-field`` names the gold document's id (as indexed with ``--id-field``);
- ``--answer-field`` names the answer: the chunk contains one of the answer strings (the
  weakest reading: an answer may also appear by chance in another passage).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.data.readers import Row, read_rows
from tunesmith.errors import ConfigError, DataError
from tunesmith.metrics.retrieval import reciprocal_rank, retrieval_metrics
from tunesmith.rag.chunk import doc_key
from tunesmith.rag.search import Hit, Index


@dataclass
class Gold:
    query_field: str = "question"
    gold_field: str | None = None
    gold_id_field: str | None = None
    answer_field: str | None = None


def answers_of(value: Any) -> list[str]:
    """Answer strings of a field: a string, a list, or SQuAD's ``{"text": [...]}``."""
    if isinstance(value, dict):
        value = value.get("text", [])
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str) and v.strip()]


def _field(row: Row, name: str) -> Any:
    if name not in row.data:
        raise DataError(f"record has no field `{name}`", where=f"{row.where} field {name}",
                        got=sorted(row.data), fix="name the field with the matching option")
    return row.data[name]


def relevance(row: Row, hits: Sequence[Hit], g: Gold) -> list[bool]:
    if g.gold_field:
        gold = str(_field(row, g.gold_field))
        key = doc_key(gold)
        return [h.doc_id == key or h.text in gold or gold in h.text for h in hits]
    if g.gold_id_field:
        gid = str(_field(row, g.gold_id_field))
        return [h.doc_id == gid for h in hits]
    answers = answers_of(_field(row, g.answer_field))  # type: ignore[arg-type]
    return [any(a in h.text for a in answers) for h in hits]


def evaluate_index(index: Index, data: str, g: Gold, ks: Sequence[int], mode: str = "hybrid",
                   limit: int | None = None) -> dict[str, Any]:
    """recall@k for each k and MRR over the rows of ``data`` (with per-query records)."""
    if not (g.gold_field or g.gold_id_field or g.answer_field):
        raise ConfigError("say how the gold passage is named", where="rag eval",
                          fix="give --gold-field (passage text), --gold-id-field (document "
                          "id) or --answer-field (answer text)")
    if not ks or min(ks) < 1:
        raise ConfigError("k must be 1 or more", where="-k", got=list(ks), fix="e.g. -k 1,5,10")
    rows = read_rows(data, limit=limit)
    queries = [str(_field(r, g.query_field)) for r in rows]
    depth = max(ks)
    ranked = index.search_many(queries, depth, mode)
    rel = [relevance(r, hits, g) for r, hits in zip(rows, ranked)]
    records = [{"where": r.where, "query": q, "retrieved": [h.chunk_id for h in hits],
                "relevant": flags, "reciprocal_rank": reciprocal_rank(flags)}
               for r, q, hits, flags in zip(rows, queries, ranked, rel)]
    return {"index": str(index.path), "data": data, "mode": mode, "queries": len(rows),
            "metrics": retrieval_metrics(rel, ks), "records": records}
