"""Extractive-QA data: SQuAD-style rows read, checked and cut into training windows.

    rows (JSONL/CSV/Parquet/hub, or SQuAD's own JSON: data > paragraphs > qas)
      → questions (id, question, context, answers with character starts) → checks
      → windows (data/qa_windows.py: doc-stride, offsets, start/end labels)

Answers come as the hub's ``{"text": [...], "answer_start": [...]}`` or a list of
``{"text", "answer_start"}``; none (``[]``, or SQuAD v2's ``is_impossible``) means the
question has no answer in its context. Every problem names the file and line (for SQuAD
JSON, the article/paragraph/question indices), the field and the value, with counts: an
empty context or question, an ``answer_start`` that does not point at the answer text (the
context around it is shown), malformed answers.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.schema import DataConfig, ExtractiveQAConfig
from tunesmith.data.qa_windows import QASplitStats, Question, Window, make_windows
from tunesmith.data.readers import BadRow, Row, read_rows
from tunesmith.data.word_align import check_fast
from tunesmith.errors import DataError
from tunesmith.io import file_sha256


@dataclass
class QAData:
    train: list[Window]
    validation: list[Window]
    val_questions: list[Question]
    stats: dict[str, QASplitStats]
    allow_no_answer: bool
    warnings: list[str] = field(default_factory=list)


QA_FIXES = {
    "empty context": "every question needs a non-empty context (extractive_qa.context_field)",
    "empty question": "every row needs a non-empty question (extractive_qa.question_field)",
    "malformed answers": "answers are {\"text\": [...], \"answer_start\": [...]} or a list of "
                         "{\"text\", \"answer_start\"} with integer starts; [] for no answer",
    "answer_start does not point at the answer": "answer_start is the character offset of the "
                                                 "answer text in the context (0-based, Python "
                                                 "characters, not bytes)",
}


def _answers(raw: Any) -> list[tuple[Any, Any]] | None:
    """(text, start) pairs of either answers shape; None if neither."""
    if isinstance(raw, dict):
        texts, starts = raw.get("text"), raw.get("answer_start")
        if isinstance(texts, list) and isinstance(starts, list) and len(texts) == len(starts):
            return list(zip(texts, starts))
        return None
    if isinstance(raw, list) and all(isinstance(a, dict) for a in raw):
        return [(a.get("text"), a.get("answer_start")) for a in raw]
    return None


def flatten_squad(rows: Iterable[Row | BadRow]) -> Iterator[Row | BadRow]:
    """SQuAD's JSON (articles with ``paragraphs`` and ``qas``) as one row per question; other
    rows (and unreadable ones, for ``data inspect``/``prepare``) pass through as they are."""
    for row in rows:
        if not isinstance(row, Row) or not isinstance(row.data.get("paragraphs"), list):
            yield row
            continue
        for j, par in enumerate(row.data["paragraphs"]):
            if not isinstance(par, dict):  # reported by the checks as an empty context
                yield Row({"context": par}, f"{row.where}.paragraphs[{j}]")
                continue
            for k, qa in enumerate(par.get("qas") or []):
                qa = qa if isinstance(qa, dict) else {}
                data = {**qa, "context": par.get("context"), "title": row.data.get("title")}
                if qa.get("is_impossible"):
                    data["answers"] = []
                yield Row(data, f"{row.where}.paragraphs[{j}].qas[{k}]")


def to_question(row: Row, qcfg: ExtractiveQAConfig, problems: list[tuple[str, str, Any]],
                need_answers: bool = True) -> Question | None:
    """One row as a Question, or None with a problem recorded."""
    d = row.data
    context, question = d.get(qcfg.context_field), d.get(qcfg.question_field)
    if not isinstance(context, str) or not context.strip():
        problems.append(("empty context", f"{row.where} field `{qcfg.context_field}`", context))
        return None
    if not isinstance(question, str) or not question.strip():
        problems.append(("empty question", f"{row.where} field `{qcfg.question_field}`",
                         question))
        return None
    qid = str(d.get(qcfg.id_field, row.where))
    if not need_answers and qcfg.answers_field not in d:
        return Question(qid, question, context, [], row.where)
    pairs = _answers(d.get(qcfg.answers_field))
    where = f"{row.where} field `{qcfg.answers_field}`"
    if pairs is None or any(not isinstance(t, str) or isinstance(s, bool)
                            or not isinstance(s, int) for t, s in pairs):
        problems.append(("malformed answers", where, d.get(qcfg.answers_field)))
        return None
    answers = []
    for text, start in pairs:
        if not text:
            continue  # an empty answer text: SQuAD v2's no-answer written as [""]
        if context[start:start + len(text)] != text:
            around = context[max(0, start - 20):start + len(text) + 20]
            found = context.find(text)
            elsewhere = f"; the text occurs at {found}" if found >= 0 else \
                "; the text occurs nowhere in the context"
            problems.append(("answer_start does not point at the answer", where,
                             (f"answer {text!r} at {start}; the context there reads "
                              f"{context[start:start + len(text)]!r} (…{around}…){elsewhere}")))
            return None
        answers.append((text, start))
    return Question(qid, question, context, answers, row.where)


def read_questions(path: str, qcfg: ExtractiveQAConfig, limit: int | None = None,
                   need_answers: bool = True) -> tuple[list[Question], QASplitStats]:
    """Read and check ``path``; one DataError for all unusable rows."""
    rows = [r for r in flatten_squad(read_rows(path)) if isinstance(r, Row)][:limit]
    stats = QASplitStats(source=str(path), questions=len(rows))
    if Path(path).is_file():
        stats.sha256 = file_sha256(path)
    problems: list[tuple[str, str, Any]] = []
    out = [q for row in rows if (q := to_question(row, qcfg, problems, need_answers))]
    if problems:
        counts = Counter(p[0] for p in problems)
        kind, where, got = problems[0]
        summary = ", ".join(f"{n} {k}" for k, n in counts.items())
        raise DataError(f"{len(problems)} of {len(rows)} questions in {path} are unusable "
                        f"({summary}); the first: {kind}", where=where, got=got,
                        fix=QA_FIXES[kind])
    stats.unanswerable = sum(1 for q in out if not q.answers)
    return out, stats


def prepare_qa(data: DataConfig, qcfg: ExtractiveQAConfig, tokenizer: Any, seed: int = 42
               ) -> QAData:
    """Read, check and window the training and validation questions."""
    check_fast(tokenizer, "extractive QA")
    if not data.train:
        raise DataError("no training data given", where="data.train",
                        fix="set data.train: path/to/train.jsonl (or data.train=... on the "
                        "command line)")
    train, tstats = read_questions(data.train, qcfg, limit=data.max_examples)
    val: list[Question] = []
    vstats: QASplitStats | None = None
    if data.validation:
        val, vstats = read_questions(data.validation, qcfg)
    elif data.val_split > 0:
        # split by context, so validation never sees a passage trained on
        contexts = sorted({q.context for q in train})
        random.Random(seed).shuffle(contexts)
        held = set(contexts[:max(1, round(len(contexts) * data.val_split))])
        val = [q for q in train if q.context in held]
        train = [q for q in train if q.context not in held]
        if not train:
            raise DataError("data.val_split leaves no training questions",
                            where="data.val_split", got=data.val_split,
                            fix="use a smaller fraction or more contexts")
        vstats = QASplitStats(source=f"{data.train} (val_split {data.val_split})",
                              questions=len(val), unanswerable=sum(not q.answers for q in val))
    no_answer = qcfg.allow_no_answer
    if no_answer is None:
        no_answer = any(not q.answers for q in [*train, *val])
    elif not no_answer and (bad := next((q for q in [*train, *val] if not q.answers), None)):
        raise DataError("a question has no answer but extractive_qa.allow_no_answer is false",
                        where=f"{bad.where} field `{qcfg.answers_field}`", got=[],
                        fix="give every question an answer, or set "
                        "extractive_qa.allow_no_answer: true (SQuAD v2-style)")
    warnings: list[str] = []
    train_windows = make_windows(train, tokenizer, qcfg, tstats, training=True)
    stats = {"train": tstats}
    val_windows: list[Window] = []
    if vstats is not None:
        val_windows = make_windows(val, tokenizer, qcfg, vstats, training=False)
        stats["validation"] = vstats
    for name, st in stats.items():
        if st.questions_cut:
            warnings.append(f"{st.questions_cut} {name} questions were longer than half of "
                            f"extractive_qa.max_length and were cut")
    if tstats.answers_outside_windows:
        warnings.append(f"{tstats.answers_outside_windows} training windows cut an answer off "
                        "and were trained as 'not in this window'")
    return QAData(train_windows, val_windows, val, stats, bool(no_answer), warnings)
