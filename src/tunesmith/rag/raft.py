"""``tunesmith data rag-sft``: RAFT-style SFT rows that teach a model to use retrieval.

Following RAFT (Zhang et al., 2024, "Adapt a Language Model to Domain Specific RAG"): each
question is shown with passages in the serving layout (:mod:`tunesmith.rag.prompt`). In a
fraction P of the rows (``--gold-fraction``, default 0.8) the gold passage is among
``--distractors`` others at a random position; in the rest only distractors are shown, so
the model also learns to answer (or to fall back on what it knows) when retrieval missed.
Exactly round(P·n) rows hold the gold passage, chosen with ``--seed``, so the stated
fraction is the real one.

Distractors are the question's nearest chunks in ``--index`` that are not the gold
passage (hard negatives, what retrieval really returns), else other rows' gold passages
drawn at random; when the index holds too few other passages for ``--distractors``, the
rest are drawn at random from the other rows' gold passages, so every row shows the number
asked (as far as the data has distinct passages).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.data.readers import Row
from tunesmith.errors import ConfigError, DataError
from tunesmith.rag.prompt import rag_message
from tunesmith.rag.search import Index


@dataclass(frozen=True)
class Text:
    """A passage shown in a prompt (the Passage protocol of rag/prompt.py)."""

    text: str
    title: str = ""


@dataclass
class RaftSettings:
    question_field: str = "question"
    answer_field: str = "answers"
    gold_field: str = "context"
    distractors: int = 3
    gold_fraction: float = 0.8
    seed: int = 0


def _text(row: Row, name: str) -> str:
    value = row.data.get(name)
    if isinstance(value, dict):  # SQuAD answers: {"text": [...], "answer_start": [...]}
        value = value.get("text")
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"record has no text in the field `{name}`",
                        where=f"{row.where} field {name}", got=value if name in row.data
                        else sorted(row.data), fix="name the field with the matching option")
    return value


def raft_rows(rows: Sequence[Row], s: RaftSettings, index: Index | None = None
              ) -> list[dict[str, Any]]:
    """One messages row per input row; ``gold_in_context`` says whether the gold is shown."""
    if not 0 <= s.gold_fraction <= 1:
        raise ConfigError("the gold fraction must be between 0 and 1", where="--gold-fraction",
                          got=s.gold_fraction, fix="e.g. --gold-fraction 0.8 (RAFT's P)")
    if s.distractors < 1:
        raise ConfigError("RAFT rows need at least one distractor", where="--distractors",
                          got=s.distractors, fix="e.g. --distractors 3")
    parsed = [(r, _text(r, s.question_field), _text(r, s.answer_field),
               _text(r, s.gold_field)) for r in rows]
    golds = list(dict.fromkeys(g for *_, g in parsed))
    if index is None and len(golds) <= s.distractors:
        raise DataError("too few distinct passages to draw distractors from", where="--data",
                        got=f"{len(golds)} passages, {s.distractors} distractors asked",
                        fix="lower --distractors or give --index")
    rng = random.Random(s.seed)
    with_gold = set(rng.sample(range(len(parsed)), round(s.gold_fraction * len(parsed))))
    hits = index.search_many([q for _, q, _, _ in parsed], s.distractors + 8) if index \
        else None
    out = []
    for i, (row, question, answer, gold) in enumerate(parsed):
        if hits is not None:
            pool = [h.text for h in hits[i] if h.text not in gold and gold not in h.text]
            if len(pool) < s.distractors:  # a small index: top up with other rows' golds
                spare = [g for g in golds if g != gold and g not in pool]
                pool += rng.sample(spare, min(len(spare), s.distractors - len(pool)))
        else:
            pool = rng.sample([g for g in golds if g != gold], s.distractors)
        passages = [Text(t) for t in pool[:s.distractors]]
        if i in with_gold:
            passages.insert(rng.randrange(len(passages) + 1), Text(gold))
        out.append({"messages": [{"role": "user", "content": rag_message(question, passages)},
                                 {"role": "assistant", "content": answer}],
                    "gold_in_context": i in with_gold, "source": row.where})
    return out
