"""Doc-stride windows over long contexts, their start/end labels, and the best-span search.

A context longer than one window is covered by several: each holds the question and a part
of the context, consecutive parts sharing ``doc_stride`` tokens, so an answer cut off by one
window's edge lies whole in the next one (``extractive_qa.doc_stride``). Each window keeps
the character span in the context of each of its context tokens (None elsewhere): answers
are labelled and read back through these offsets, so a predicted span is always a slice of
the original context.

Training labels a window with the answer's first and last token, or with position 0 (the
"no answer here" position, BERT's ``[CLS]``) when the window does not hold the whole answer
or the question has none. Prediction scores every span of every window of a question
(start logit + end logit over the ``n_best`` best starts and ends, at most
``max_answer_length`` tokens) and keeps the best; the no-answer score is the lowest
position-0 score over the windows, as in transformers' ``run_qa`` post-processing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.config.schema import ExtractiveQAConfig
from tunesmith.errors import ConfigError

NO_ANSWER = 0  # the token position trained as "no answer in this window"


@dataclass
class Question:
    """One question over its context; ``answers`` as (text, character start), [] if none."""

    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]
    where: str

    @property
    def answer_texts(self) -> list[str]:
        return [a for a, _ in self.answers]


@dataclass
class QASplitStats:
    source: str
    questions: int = 0
    unanswerable: int = 0
    windows: int = 0
    answers_outside_windows: int = 0  # training windows whose edge cuts an answer off
    questions_cut: int = 0
    sha256: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Window:
    input_ids: list[int]
    token_type_ids: list[int] | None
    question: int  # index of its question in the split
    context_offsets: list[tuple[int, int] | None]
    start: int = NO_ANSWER
    end: int = NO_ANSWER


@dataclass
class SpanAnswer:
    """The best span of a question: its text and character span in the context, its
    probability (start x end softmax in its window), and the no-answer margin in logits
    (no-answer score minus span score; above the threshold means "no answer")."""

    text: str
    start: int
    end: int
    score: float
    null_margin: float


def _cut_questions(questions: Sequence[Question], tokenizer: Any, limit: int,
                   stats: QASplitStats | None) -> tuple[list[str], int]:
    """Questions longer than ``limit`` tokens cut there (a window must keep room for
    context), and the longest question's length in tokens."""
    enc = tokenizer([q.question for q in questions], add_special_tokens=False,
                    return_offsets_mapping=True, verbose=False)
    out, longest = [], 0
    for q, ids, offs in zip(questions, enc["input_ids"], enc["offset_mapping"]):
        if len(ids) > limit:
            out.append(q.question[:offs[limit - 1][1]])
            if stats is not None:
                stats.questions_cut += 1
        else:
            out.append(q.question)
        longest = max(longest, min(len(ids), limit))
    return out, longest


def make_windows(questions: Sequence[Question], tokenizer: Any, qcfg: ExtractiveQAConfig,
                 stats: QASplitStats | None = None, training: bool = True,
                 batch: int = 512) -> list[Window]:
    """Every window of every question (labelled with the first answer when ``training``)."""
    out: list[Window] = []
    for b in range(0, len(questions), batch):
        chunk = questions[b:b + batch]
        texts, longest = _cut_questions(chunk, tokenizer, qcfg.max_length // 2, stats)
        room = qcfg.max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
        if qcfg.doc_stride >= room:
            raise ConfigError("extractive_qa.doc_stride leaves a window no new context",
                              where="extractive_qa.doc_stride",
                              got=f"doc_stride {qcfg.doc_stride}; a window of "
                              f"{qcfg.max_length} tokens has room for {room} context tokens "
                              f"beside a question of {longest}",
                              fix=f"use a doc_stride below {max(room // 2, 1)} (e.g. "
                              "max_length 384 with doc_stride 128), or raise max_length")
        try:
            enc = tokenizer(texts, [q.context for q in chunk], truncation="only_second",
                            max_length=qcfg.max_length, stride=qcfg.doc_stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True,
                            verbose=False)
        except Exception as exc:  # the tokenizers library raises plain Exceptions here
            raise ConfigError("the question and context cannot be cut into windows "
                              f"({str(exc).splitlines()[0][:200]})",
                              where="extractive_qa.doc_stride",
                              got=f"doc_stride {qcfg.doc_stride}, max_length {qcfg.max_length}",
                              fix="doc_stride must be well below max_length minus the "
                              "question: e.g. max_length 384 with doc_stride 128") from None
        for i, k in enumerate(enc["overflow_to_sample_mapping"]):
            seq = enc.sequence_ids(i)
            offsets = [tuple(o) if s == 1 else None
                       for o, s in zip(enc["offset_mapping"][i], seq)]
            types = enc["token_type_ids"][i] if "token_type_ids" in enc else None
            w = Window(enc["input_ids"][i], types, b + k, offsets)  # type: ignore[arg-type]
            if training and chunk[k].answers:
                _label(w, chunk[k].answers[0], stats)
            out.append(w)
    if stats is not None:
        stats.windows = len(out)
    return out


def _label(w: Window, answer: tuple[str, int], stats: QASplitStats | None) -> None:
    text, start_char = answer
    end_char = start_char + len(text)
    ctx = [t for t, o in enumerate(w.context_offsets) if o is not None]
    if not ctx:
        return
    first, last = w.context_offsets[ctx[0]], w.context_offsets[ctx[-1]]
    assert first is not None and last is not None
    if first[0] > start_char or last[1] < end_char:
        if stats is not None and first[0] < end_char and last[1] > start_char:
            stats.answers_outside_windows += 1  # the answer overlaps the window's edge
        return
    s = next(t for t in ctx if w.context_offsets[t][1] > start_char)  # type: ignore[index]
    e = next(t for t in reversed(ctx) if w.context_offsets[t][0] < end_char)  # type: ignore[index]
    w.start, w.end = s, max(s, e)


def best_span(context: str, windows: Sequence[Window], start_logits: Sequence[torch.Tensor],
              end_logits: Sequence[torch.Tensor], n_best: int, max_answer_length: int
              ) -> SpanAnswer:
    """The best span over a question's windows (logits: one 1-D tensor per window)."""
    best: tuple[float, int, int, float] | None = None  # (logit score, start, end, prob)
    null = float("inf")
    for w, sl, el in zip(windows, start_logits, end_logits):
        sl, el = sl.float()[:len(w.input_ids)], el.float()[:len(w.input_ids)]
        null = min(null, float(sl[NO_ANSWER] + el[NO_ANSWER]))
        is_ctx = torch.tensor([o is not None for o in w.context_offsets])
        if not bool(is_ctx.any()):
            continue
        ls, le = sl.log_softmax(-1), el.log_softmax(-1)
        k = min(n_best, int(is_ctx.sum()))
        starts = sl.masked_fill(~is_ctx, float("-inf")).topk(k).indices.tolist()
        ends = el.masked_fill(~is_ctx, float("-inf")).topk(k).indices.tolist()
        for s in starts:
            for e in ends:
                if e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(sl[s] + el[e])
                if best is None or score > best[0]:
                    a, z = w.context_offsets[s], w.context_offsets[e]
                    assert a is not None and z is not None
                    best = (score, a[0], z[1], float((ls[s] + le[e]).exp()))
    if best is None:
        return SpanAnswer("", 0, 0, 0.0, float("inf"))
    score, a, z, prob = best
    return SpanAnswer(context[a:z], a, z, prob, null - score)
