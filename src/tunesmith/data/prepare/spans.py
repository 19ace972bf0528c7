"""``data inspect`` / ``data prepare`` for the span tasks: NER rows and extractive-QA rows.

Two record formats beside the chat/classification ones of ``data/formats.py``, read with
the hub's field names (what ``token_classification`` and ``extractive_qa`` training read by
default):

=====================  =================================================  ==================
format                 required fields                                    text fields
=====================  =================================================  ==================
token_classification   ``tokens`` (words), ``ner_tags`` (names, or ids    ``tokens``
                       into a label list)
extractive_qa          ``context``, ``question``, ``answers``             ``question``,
                       ({text, answer_start}; SQuAD's JSON is flattened)  ``context``
=====================  =================================================  ==================

Rows are checked by the very code training reads them with (``data/tokens.py``'s row
reader, ``data/tags.py``'s scheme conversion, ``data/qa.py``'s question reader), so a row
``data prepare`` keeps is a row training accepts, and every problem carries the same words
and fix. Cleaning and PII scrubbing keep rows trainable: NER words are cleaned one by one
(one tag per word still), a QA context is cleaned piece by piece between answer boundaries
and every ``answer_start`` moved to where its answer now starts.
"""

from __future__ import annotations

import json
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import Any

from tunesmith.config.schema import ExtractiveQAConfig, TokenClassificationConfig
from tunesmith.data.formats import Problem
from tunesmith.data.prepare.card import short
from tunesmith.data.prepare.config import TagsConfig
from tunesmith.data.qa import QA_FIXES, to_question
from tunesmith.data.readers import Row
from tunesmith.data.tags import detect_scheme, iob2_spans, to_iob2
from tunesmith.data.tokens import TOKEN_FIXES, tag_names

SPAN_FORMATS = ("token_classification", "extractive_qa")
TOKENS, TAGS = "tokens", "ner_tags"
CONTEXT, QUESTION, ANSWERS = "context", "question", "answers"
SPAN_TEXT_FIELDS = {"token_classification": (TOKENS,), "extractive_qa": (QUESTION, CONTEXT)}
_EXAMPLES = 10
_WORD_KINDS = ("missing words", "words not a list of strings")


def slug(kind: str) -> str:
    """``"tag count differs from word count"`` → ``"tag_count_differs_from_word_count"``."""
    return re.sub(r"\W+", "_", kind).strip("_")


SPAN_FIXES = {slug(k): v for k, v in {**TOKEN_FIXES, **QA_FIXES}.items()}


def detect_span_format(data: dict[str, Any]) -> str | None:
    """``token_classification`` for words + tags, ``extractive_qa`` for a context and a
    question (or a SQuAD article), else None."""
    if TOKENS in data and TAGS in data:
        return "token_classification"
    if (CONTEXT in data and QUESTION in data) or "paragraphs" in data:
        return "extractive_qa"
    return None


# -- text fields (for cleaning, PII, deduplication, contamination) ------------------------------
def span_texts(data: dict[str, Any], fmt: str) -> Iterator[tuple[str, str]]:
    """The row's texts: the words joined by spaces; the question and the context."""
    if fmt == "token_classification":
        words = data.get(TOKENS)
        if isinstance(words, list):
            yield TOKENS, " ".join(w for w in words if isinstance(w, str))
        return
    for name in (QUESTION, CONTEXT):
        if isinstance(data.get(name), str):
            yield name, data[name]


def span_map(data: dict[str, Any], fmt: str, fn: Callable[[str], str]) -> dict[str, Any]:
    """A copy of ``data`` with ``fn`` applied to its texts, keeping it trainable: each word on
    its own (the tag list still fits), the context between answer boundaries with the answers
    moved (``answer_start`` points at the cleaned answer)."""
    out = dict(data)
    if fmt == "token_classification":
        words = data.get(TOKENS)
        if isinstance(words, list):
            out[TOKENS] = [fn(w) if isinstance(w, str) else w for w in words]
        return out
    if isinstance(data.get(QUESTION), str):
        out[QUESTION] = fn(data[QUESTION])
    context = data.get(CONTEXT)
    if isinstance(context, str):
        out[CONTEXT], out[ANSWERS] = _map_context(context, data.get(ANSWERS), fn)
    return out


def _answer_pairs(answers: Any) -> list[tuple[str, int]] | None:
    if isinstance(answers, dict):
        pairs = list(zip(answers.get("text") or [], answers.get("answer_start") or []))
    elif isinstance(answers, list):
        pairs = [(a.get("text"), a.get("answer_start")) for a in answers if isinstance(a, dict)]
    else:
        return None
    if all(isinstance(t, str) and isinstance(s, int) and not isinstance(s, bool)
           for t, s in pairs):
        return pairs
    return None


def _map_context(context: str, answers: Any, fn: Callable[[str], str]) -> tuple[str, Any]:
    """``fn`` over the pieces of ``context`` between answer starts and ends; the answers with
    their texts and starts in the new context. Whitespace at an inner boundary is kept as it
    is (cleaning a piece must not glue an answer to its neighbour)."""
    pairs = _answer_pairs(answers)
    if not pairs:
        return fn(context), answers
    cuts = sorted({0, len(context), *(s for t, s in pairs if t),
                   *(s + len(t) for t, s in pairs if t)})
    new_at = {0: 0}
    pieces: list[str] = []
    pos = 0
    last = len(cuts) - 2
    for k, (a, b) in enumerate(pairwise(cuts)):
        piece = context[a:b]
        lead = piece[:len(piece) - len(piece.lstrip())] if k > 0 else ""
        rest = piece[len(lead):]
        trail = rest[len(rest.rstrip()):] if k < last else ""
        core = rest[:len(rest) - len(trail)]
        cleaned = fn(core) if core else ""
        if core and not cleaned.strip() and any(s <= a and b <= s + len(t) for t, s in pairs):
            cleaned = core  # cleaning never empties an answer (it would read as "no answer")
        piece = lead + cleaned + trail
        pieces.append(piece)
        pos += len(piece)
        new_at[b] = pos
    new = "".join(pieces)
    moved = [(new[new_at[s]:new_at[s + len(t)]], new_at[s]) if t else (t, s) for t, s in pairs]
    if isinstance(answers, dict):
        return new, {**answers, "text": [t for t, _ in moved],
                     "answer_start": [s for _, s in moved]}
    return new, [{**a, "text": t, "answer_start": s}
                 for a, (t, s) in zip((a for a in answers if isinstance(a, dict)), moved,
                                      strict=True)]


def span_empty(data: dict[str, Any], fmt: str) -> str | None:
    """The first text left empty by cleaning: a word, the question, the context (an answer is
    never emptied: see :func:`_map_context`)."""
    if fmt == "token_classification":
        for i, w in enumerate(data.get(TOKENS) or []):
            if isinstance(w, str) and not w.strip():
                return f"{TOKENS}[{i}]"
        return None
    for name in (QUESTION, CONTEXT):
        if isinstance(data.get(name), str) and not data[name].strip():
            return name
    return None


def tags_config(tags: TagsConfig) -> TokenClassificationConfig:
    """The training section's settings from ``data prepare``'s ``token_classification``."""
    return TokenClassificationConfig(labels=tags.labels, scheme=tags.scheme,
                                     invalid_tags=tags.invalid_tags)


# -- checks and statistics ---------------------------------------------------------------------
def _problem(kind: str, field: str, got: Any) -> Problem:
    shown = repr(got) if isinstance(got, str) and not got.strip() else short(got, 160)
    return Problem(slug(kind), field, f"{kind}: {shown}", got)


class SpanChecker:
    """Checks rows of one span format as training reads them and counts what it sees.

    ``check`` returns the problem that makes a row unusable (None when training would take
    it); tag-scheme errors that training repairs (an ``I-`` without its ``B-`` under
    ``invalid_tags: repair``) are counted and listed with their ``file:line`` but keep the
    row. ``stats`` per split (``count_split``) feeds the data card.
    """

    def __init__(self, fmt: str, tcfg: TokenClassificationConfig | None = None,
                 qcfg: ExtractiveQAConfig | None = None) -> None:
        self.fmt = fmt
        self.tcfg = tcfg or TokenClassificationConfig()
        self.qcfg = qcfg or ExtractiveQAConfig()
        self.scheme = "" if self.tcfg.scheme == "auto" else self.tcfg.scheme
        self.scheme_detected = False
        self.tag_errors: Counter[str] = Counter()
        self.repaired = 0
        self.error_examples: list[dict[str, str]] = []
        self.entities: Counter[str] = Counter()
        self.tags: Counter[str] = Counter()
        self.no_entity = 0
        self.words = array("l")
        self.questions = self.unanswerable = self.answers = 0
        self.contexts: set[int] = set()
        self.context_chars = array("l")
        self.question_chars = array("l")
        self.answer_chars = array("l")
        self.by_split: dict[str, dict[str, Any]] = {}

    def detect(self, rows: Iterable[dict[str, Any]]) -> None:
        """Settle the tag scheme (``scheme: auto``) on the rows read ahead for detection."""
        if self.fmt != "token_classification" or self.scheme:
            return
        names = []
        for data in rows:
            pair = tag_names(Row(data, ""), self.tcfg, [])
            if pair is not None:
                names.append(pair[1])
        self.scheme = detect_scheme(names)
        self.scheme_detected = True

    def _tag_error(self, kind: str, where: str, message: str) -> None:
        self.tag_errors[kind] += 1
        if len(self.error_examples) < _EXAMPLES:
            self.error_examples.append({"where": where, "kind": kind, "message": message})

    def check(self, row: Row) -> Problem | None:
        """The reason ``row`` is unusable for training, or None (the row is counted)."""
        if self.fmt == "token_classification":
            return self._check_tags(row)
        problems: list[tuple[str, str, Any]] = []
        q = to_question(row, self.qcfg, problems)
        if q is None:
            kind, _, got = problems[0]
            field = {"empty context": self.qcfg.context_field,
                     "empty question": self.qcfg.question_field}.get(kind,
                                                                     self.qcfg.answers_field)
            return _problem(kind, field, got)
        self.questions += 1
        self.unanswerable += not q.answers
        self.answers += len(q.answers)
        self.contexts.add(hash(q.context))
        self.context_chars.append(len(q.context))
        self.question_chars.append(len(q.question))
        self.answer_chars.extend(len(t) for t, _ in q.answers)
        return None

    def _convert(self, row: Row) -> tuple[list[str], list[str], Any] | Problem:
        problems: list[tuple[str, str, Any]] = []
        pair = tag_names(row, self.tcfg, problems)
        if pair is None:
            kind, _, got = problems[0]
            field = self.tcfg.tokens_field if kind in _WORD_KINDS else self.tcfg.tags_field
            if kind in ("tag count differs from word count", "tag not in the label list",
                        "tag id outside the label list"):
                self._tag_error(kind, row.where, f"{kind}: {got}")
            return _problem(kind, field, got)
        words, names = pair
        return words, names, to_iob2(names, self.scheme or "iob2")

    def _check_tags(self, row: Row) -> Problem | None:
        out = self._convert(row)
        if isinstance(out, Problem):
            return out
        words, names, conv = out
        if conv.malformed:
            got = names[conv.malformed[0]]
            self._tag_error("malformed tag", row.where, f"malformed tag {got!r}")
            return _problem("malformed tag", self.tcfg.tags_field, got)
        for i in conv.invalid:
            self._tag_error("invalid continuation", row.where,
                            f"{names[i]!r} at word {i} ({words[i]!r}) after "
                            f"{names[i - 1] if i else 'the sentence start'!r}")
        if conv.invalid and self.tcfg.invalid_tags == "error":
            i = conv.invalid[0]
            return _problem("invalid continuation", self.tcfg.tags_field,
                            f"{names[i]!r} at word {i} ({words[i]!r})")
        self.repaired += len(conv.invalid)
        spans = iob2_spans(conv.tags)
        self.entities.update(s.type for s in spans)
        self.tags.update(names)
        self.no_entity += not spans
        self.words.append(len(words))
        return None

    def answer_key(self, data: dict[str, Any]) -> str:
        """What a row says about its text (its tags; its answers), to tell exact duplicates
        that disagree (``label_conflicts`` of the exact-dedup step)."""
        if self.fmt == "token_classification":
            return json.dumps(data.get(self.tcfg.tags_field))
        return json.dumps(sorted(t for t, _ in _answer_pairs(data.get(ANSWERS)) or []))

    def count_split(self, split: str, data: dict[str, Any]) -> None:
        """Count a written row of ``split`` (rows reaching here passed ``check``)."""
        entry = self.by_split.setdefault(split, {"rows": 0})
        entry["rows"] += 1
        if self.fmt == "token_classification":
            out = self._convert(Row(data, ""))
            if isinstance(out, Problem):
                return
            counts = entry.setdefault("entities", {})
            for s in iob2_spans(out[2].tags):
                counts[s.type] = counts.get(s.type, 0) + 1
            return
        pairs = _answer_pairs(data.get(ANSWERS)) or []
        entry["unanswerable"] = entry.get("unanswerable", 0) + (not any(t for t, _ in pairs))
        entry.setdefault("_contexts", set()).add(hash(data.get(CONTEXT)))

    def report(self, stats: Callable[[Sequence[int]], dict[str, Any]]) -> dict[str, Any]:
        """What inspect prints and the card keeps; ``stats`` turns lengths into percentiles."""
        if self.fmt == "token_classification":
            return {
                "scheme": self.scheme or "iob2",
                "scheme_source": "detected" if self.scheme_detected else "set",
                "sentences": len(self.words), "words": stats(self.words),
                "entities": dict(sorted(self.entities.items())),
                "entity_total": sum(self.entities.values()),
                "sentences_without_entities": self.no_entity,
                "tags": dict(self.tags.most_common()),
                "tag_errors": {"counts": dict(self.tag_errors), "repaired": self.repaired,
                               "invalid_tags": self.tcfg.invalid_tags,
                               "examples": self.error_examples},
            }
        return {
            "questions": self.questions, "answerable": self.questions - self.unanswerable,
            "unanswerable": self.unanswerable, "answers": self.answers,
            "contexts": len(self.contexts), "context_chars": stats(self.context_chars),
            "question_chars": stats(self.question_chars),
            "answer_chars": stats(self.answer_chars),
        }

    def splits(self) -> dict[str, dict[str, Any]]:
        """Per-split counts for the data card."""
        out = {}
        order = ("train", "validation", "test")
        for split, entry in sorted(self.by_split.items(), key=lambda kv: order.index(kv[0])
                                   if kv[0] in order else len(order)):
            entry = dict(entry)
            if "_contexts" in entry:
                entry["contexts"] = len(entry.pop("_contexts"))
            if "entities" in entry:
                entry["entities"] = dict(sorted(entry["entities"].items()))
            out[split] = entry
        return out
