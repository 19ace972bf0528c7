"""``tunesmith serve --rag NAME=INDEX``: chat answers grounded in retrieved passages.

For a served name with an index, the last user message is the query; its top
``RAG_K`` passages (hybrid BM25 + MiniLM, ``rag/search.py``) go into that message with the
one retrieval prompt of ``rag/prompt.py`` (the layout RAFT rows train on), and the response
names them in a ``passages`` field (id, document, source, rank, score) so a client can show
its sources. Indexes open on first use (the encoder loads once) and are shared by requests.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import Request

from tunesmith.rag.prompt import with_passages
from tunesmith.rag.search import Hit, Index, open_index

RAG_K = 3
_LOCK = threading.Lock()


def _index(request: Request, name: str) -> Index | None:
    path = request.app.state.settings.rag.get(name)
    if path is None:
        return None
    cache: dict[str, Index] = request.app.state.__dict__.setdefault("rag_indexes", {})
    with _LOCK:
        if name not in cache:
            cache[name] = open_index(path)
        return cache[name]


def retrieve(request: Request, name: str, messages: list[dict[str, Any]]) -> list[Hit]:
    """The passages for this request's last user message ([] when NAME has no index)."""
    index = _index(request, name)
    users = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"),
                                                                           str)]
    if index is None or not users:
        return []
    return index.search(users[-1]["content"], RAG_K)


def augmented(messages: list[dict[str, Any]], hits: list[Hit]) -> list[dict[str, Any]]:
    return with_passages(messages, hits) if hits else messages  # type: ignore[return-value]


def passages_field(hits: list[Hit]) -> list[dict[str, Any]]:
    return [{"id": h.chunk_id, "document": h.doc_id, "source": h.source, "rank": h.rank,
             "score": round(h.score, 6)} for h in hits]
