"""Prompt augmentation for ``tunesmith eval``: few-shot demonstrations and retrieved passages.

Chosen once before any model loads (``prepare``: reading the shots file, BM25/embedding
selection, retrieval from the index), applied per model (``apply``: the passages go into
the last user turn as :data:`tunesmith.rag.prompt.RAG_PROMPT` says, the shots become
earlier turns, and both are cut to fit that model's context window — shots first, then
the lowest-ranked passages). Every record names the shots and passages it used and how
many were dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from tunesmith.errors import DataError
from tunesmith.evaluate import shots as S
from tunesmith.evaluate import tasks as T
from tunesmith.rag.prompt import with_passages
from tunesmith.rag.search import Hit, open_index


@dataclass
class Augmentation:
    """What ``prepare`` chose; ``apply`` turns it into each model's prompts."""

    settings: T.EvalSettings
    task: str
    demos: list[S.Demo]
    chosen: list[list[int]]
    passages: list[list[Hit]]

    def apply(self, items: Sequence[T.Item], model: Any, tok: Any) -> list[T.Item]:
        s = self.settings
        window = S.context_window(model, s)
        answer = s.max_new_tokens if self.task == "generation" else 16
        budget = window - answer
        out = list(items)
        if self.passages:
            out = [_fit_passages(it, hits, tok, budget, s.system)
                   for it, hits in zip(out, self.passages)]
        if self.demos:
            out = S.fit(out, self.chosen, self.demos, tok, budget, s.system)
        return out


def _fit_passages(it: T.Item, hits: Sequence[Hit], tok: Any, budget: int,
                  system: str | None) -> T.Item:
    """The item with its passages in the last user turn, lowest-ranked dropped to fit."""
    keep = list(hits)
    while True:
        prompt = with_passages(it.prompt, keep)
        n = T.prompt_length(tok, prompt, system)
        if n <= budget or not keep:
            break
        keep = keep[:-1]
    if n > budget:
        raise DataError("the example does not fit the context window even without passages",
                        where=it.where, got=f"{n} prompt tokens, budget {budget}",
                        fix="raise --max-length, lower --max-new-tokens, or shorten the input")
    return replace(it, prompt=prompt, extra={
        **it.extra, "passages": [h.chunk_id for h in keep],
        "dropped_passages": len(hits) - len(keep)})


def prepare(items: Sequence[T.Item], s: T.EvalSettings, task: str,
            names: Sequence[str] | None = None) -> Augmentation | None:
    """Choose shots and retrieve passages for every item, or None when neither is asked."""
    if not s.shots and not s.rag:
        return None
    demos, chosen = S.plan(items, s, task, names) if s.shots else ([], [])
    passages: list[list[Hit]] = []
    if s.rag:
        if task != "generation":
            raise DataError(f"--rag applies to generation tasks, not {task}", where="--rag",
                            got=s.rag, fix="drop --rag, or evaluate a generation file")
        index = open_index(s.rag, s.embedder)
        passages = index.search_many([it.input for it in items], s.rag_k)
    return Augmentation(s, task, demos, chosen, passages)
