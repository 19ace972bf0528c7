"""Few-shot demonstrations for ``tunesmith eval --shots K --shots-from FILE``.

The prompting baseline a fine-tune has to beat: K solved training rows shown to the base
model as earlier turns of the conversation (user: the demo's prompt, assistant: its answer),
then the real question. Three ways to choose the K rows:

- ``random``: a fixed sample per example, seeded by ``--seed`` and the example's position,
  so the same command picks the same shots on every run and for every model;
- ``bm25``: the K training rows nearest the input by BM25 (``rag/lexical.py``);
- ``embedding``: the K nearest by cosine of the embedded MiniLM's sentence vectors.

Similar shots are placed *nearest the question* (the most similar last), because small
models copy the closest demonstration most. A row whose prompt equals the example's input
is never its own demonstration (``--shots-from`` may be the evaluated file itself).

Shots cost context: each model's prompt is measured with its own chat template and the
shots farthest from the question are dropped until the prompt plus the answer budget
(``--max-new-tokens``, or the longest label for zero-shot) fits the context window
(``--max-length``, else the model's). The dropped count is in every record and in the
summary; an example whose bare prompt does not fit is an error, not a silent truncation.
Selection happens before any model loads; fitting happens per model (tokenizers differ).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from tunesmith.data.readers import Row, read_rows
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate import tasks as T
from tunesmith.inference.prompts import prompt_of
from tunesmith.rag.embed import DEFAULT_EMBEDDER, load_embedder
from tunesmith.rag.lexical import Lexical, dense_search

SELECTIONS = ("random", "bm25", "embedding")
DEFAULT_WINDOW = 2048


@dataclass(frozen=True)
class Demo:
    """One demonstration: a user prompt and the answer shown for it."""

    prompt: str
    answer: str
    where: str


def _prompt_text(row: Row, s: T.EvalSettings) -> str:
    """The user-visible prompt of a training row, as the evaluated rows build theirs."""
    if s.prompt_template:
        return T.fill_template(s.prompt_template, row)
    prompt = prompt_of(row.data, row.where)
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def read_demos(s: T.EvalSettings, task: str, names: Sequence[str] | None = None) -> list[Demo]:
    """Demonstrations from ``--shots-from``: prompt + first reference (generation) or the text
    + its label's name (zero-shot). Fields are read as for the evaluated file."""
    if not s.shots_from:
        raise ConfigError("--shots needs a file of solved examples", where="--shots-from",
                          fix="add --shots-from TRAIN_FILE (the task's training rows)")
    rows = read_rows(s.shots_from)
    if task == "generation":
        demos = [Demo(_prompt_text(r, s), T.references_of(r, s.reference_field)[0], r.where)
                 for r in rows]
    else:
        items = T.build_labelled(rows, s, list(names or []))
        demos = [Demo(it.input, str(it.label), it.where) for it in items]
    if s.shots > len(demos):
        raise ConfigError("more shots than solved examples to draw them from",
                          where="--shots", got=f"{s.shots} shots, {len(demos)} rows in "
                          f"{s.shots_from}", fix=f"use --shots {len(demos)} or fewer")
    return demos


def choose(items: Sequence[T.Item], demos: Sequence[Demo], s: T.EvalSettings,
           embedder: Any = None) -> list[list[int]]:
    """Per item, the indices of its K demonstrations, farthest first, nearest last."""
    if s.shots_select not in SELECTIONS:
        raise ConfigError("unknown shot selection", where="--shots-select",
                          got=s.shots_select, fix=f"use one of {', '.join(SELECTIONS)}")
    k, extra = s.shots, 8  # extra: room to skip a demo that is the example itself
    if s.shots_select == "bm25":
        lex = Lexical([d.prompt for d in demos])
        ranked = [[i for i, _ in lex.search(it.input, k + extra)] for it in items]
    elif s.shots_select == "embedding":
        matrix = embedder.encode([d.prompt for d in demos])
        queries = embedder.encode([it.input for it in items])
        ranked = [[i for i, _ in dense_search(matrix, q, k + extra)] for q in queries]
    else:
        ranked = [[] for _ in items]
    out = []
    for it, near in zip(items, ranked):
        pool = [i for i in near if demos[i].prompt != it.input][:k]
        if len(pool) < k:  # random, or too few lexical matches: a seeded sample fills up
            rng = random.Random(f"{s.seed}:{it.index}")
            rest = [i for i in range(len(demos)) if i not in pool
                    and demos[i].prompt != it.input]
            pool += rng.sample(rest, min(k - len(pool), len(rest)))
        out.append(list(reversed(pool)) if near else pool)
    return out


def with_shots(prompt: T.Prompt, shots: Sequence[Demo], system: str | None) -> list[dict]:
    """The conversation: system (the row's or ``--system``), the shots as earlier turns,
    then the row's own turns."""
    own = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else \
        [{"role": m["role"], "content": m["content"]} for m in prompt]
    head = [m for m in own[:1] if m["role"] == "system"] or (
        [{"role": "system", "content": system}] if system else [])
    turns = [t for d in shots for t in ({"role": "user", "content": d.prompt},
                                        {"role": "assistant", "content": d.answer})]
    return head + turns + [m for m in own if m["role"] != "system"]


def context_window(model: Any, s: T.EvalSettings) -> int:
    """``--max-length``, else the model's position limit, else 2048."""
    if s.max_length:
        return s.max_length
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_WINDOW


def fit(items: Sequence[T.Item], chosen: Sequence[Sequence[int]], demos: Sequence[Demo],
        tok: Any, budget: int, system: str | None) -> list[T.Item]:
    """Items whose prompt carries their shots, farthest shots dropped until the rendered
    prompt is at most ``budget`` tokens; ``extra`` records the shots used and dropped."""
    out, dropped_all = [], 0
    for it, idx in zip(items, chosen):
        keep = list(idx)
        while True:
            msgs = with_shots(it.prompt, [demos[i] for i in keep], system)
            n = T.prompt_length(tok, msgs)
            if n <= budget or not keep:
                break
            keep = keep[1:]
        if n > budget:
            raise DataError("the example does not fit the context window even without shots",
                            where=it.where, got=f"{n} prompt tokens, budget {budget}",
                            fix="raise --max-length, lower --max-new-tokens, or shorten the "
                            "input")
        dropped = len(idx) - len(keep)
        dropped_all += dropped == len(idx) and len(idx) > 0
        out.append(replace(it, prompt=msgs, extra={
            **it.extra, "shots": [demos[i].where for i in keep], "dropped_shots": dropped}))
    if items and dropped_all == len(items):
        raise ConfigError("no shot fits the context window for any example",
                          where="--shots", got=f"{len(chosen[0])} shots, budget {budget} "
                          "tokens", fix="use fewer or shorter shots, or raise --max-length")
    return out


def plan(items: Sequence[T.Item], s: T.EvalSettings, task: str,
         names: Sequence[str] | None = None) -> tuple[list[Demo], list[list[int]]]:
    """Read the demonstrations and choose each item's shots (before any model loads)."""
    if task not in ("generation", "zero-shot"):
        raise ConfigError(f"--shots applies to generation and zero-shot tasks, not {task}",
                          where="--shots", got=s.shots, fix="drop --shots for this model/data")
    if s.shots < 1:
        raise ConfigError("--shots must be 1 or more", where="--shots", got=s.shots,
                          fix="e.g. --shots 3")
    demos = read_demos(s, task, names)
    embedder = None
    if s.shots_select == "embedding":
        embedder = load_embedder(s.embedder or DEFAULT_EMBEDDER)
    return demos, choose(items, demos, s, embedder)
