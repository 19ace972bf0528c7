"""The one prompt that puts retrieved passages before a question.

Used by ``tunesmith eval --rag``, ``tunesmith serve --rag`` and the RAFT rows of
``tunesmith data rag-sft``, so a model tuned on RAFT rows sees at serving time exactly the
layout it was trained on. The passages go into the *last user turn*, numbered in rank
order, each with its title when it has one:

    Use the passages below if they help to answer. Ignore passages that are not relevant.

    [1] Title one
    passage text

    [2] passage text

    Question: <the user's message>
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

RAG_PROMPT = ("Use the passages below if they help to answer. Ignore passages that are not "
              "relevant.\n\n{passages}\n\nQuestion: {question}")


class Passage(Protocol):
    text: str
    title: str


def format_passages(passages: Sequence[Passage]) -> str:
    return "\n\n".join(f"[{i}] " + (f"{p.title}\n" if p.title else "") + p.text
                       for i, p in enumerate(passages, 1))


def rag_message(question: str, passages: Sequence[Passage]) -> str:
    """The user message holding ``passages`` then ``question`` (the question alone if none)."""
    if not passages:
        return question
    return RAG_PROMPT.format(passages=format_passages(passages), question=question)


def with_passages(prompt: str | list[dict[str, Any]], passages: Sequence[Passage]
                  ) -> str | list[dict[str, Any]]:
    """A prompt (text or conversation) whose last user turn carries ``passages``."""
    if isinstance(prompt, str):
        return rag_message(prompt, passages)
    msgs = [dict(m) for m in prompt]
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=None)
    if last is not None:
        msgs[last]["content"] = rag_message(str(msgs[last]["content"]), passages)
    return msgs
