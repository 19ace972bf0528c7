"""``tunesmith predict --file`` for entity and answer models: rows in, rows plus
predictions out, and the task's metrics when the rows carry gold labels.

Entity rows hold raw ``text`` (entities with offsets into it), or words (the training
``tokens`` field; offsets into the words joined by spaces) and then, with gold tags
(the ``ner_tags`` field, tag names in any scheme), the strict entity metrics. QA rows hold
a question and a context (the training field names) and, with gold ``answers``, SQuAD exact
match and F1. A row that cannot be read is one DataError naming its line and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config.schema import ExtractiveQAConfig
from tunesmith.data.qa import to_question
from tunesmith.data.readers import read_rows
from tunesmith.data.tags import detect_scheme, to_iob2
from tunesmith.data.word_align import join_words
from tunesmith.errors import DataError
from tunesmith.inference.spans import SpanPredictor
from tunesmith.metrics.entities import EntityCounts
from tunesmith.metrics.squad import SquadCounts


def predict_entities_file(p: SpanPredictor, path: Path, batch_size: int = 32,
                          text_field: str | None = None
                          ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    rows = read_rows(path)
    words_field = p.info.get("tokens_field", "tokens")
    tags_field = p.info.get("tags_field", "ner_tags")
    field = text_field or ("text" if "text" in rows[0].data else words_field)
    values = [r.data.get(field) for r in rows]
    if field == words_field and text_field is None:
        bad = next((r for r, v in zip(rows, values) if not isinstance(v, list) or not v
                    or not all(isinstance(w, str) for w in v)), None)
        if bad is None:
            ents = p.entities([], batch_size, words=values)  # type: ignore[arg-type]
            return _with_gold(p, rows, values, ents, tags_field, batch_size)
    else:
        bad = next((r for r, v in zip(rows, values) if not isinstance(v, str) or not v.strip()),
                   None)
        if bad is None:
            ents = p.entities(values, batch_size)  # type: ignore[arg-type]
            return [{**r.data, "entities": [e.as_dict() for e in es]}
                    for r, es in zip(rows, ents)], None
    raise DataError("a row has no text to tag", where=f"{bad.where} field `{field}`",
                    got=bad.data.get(field, "(missing)"),
                    fix=f"give every row a `text` string or a `{words_field}` list of words "
                    "(or name the field with --text-field)")


def _with_gold(p: SpanPredictor, rows: list[Any], words: list[Any], ents: list[Any],
               tags_field: str, batch_size: int
               ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    out = [{**r.data, "entities": [e.as_dict() for e in es]} for r, es in zip(rows, ents)]
    gold = [r.data.get(tags_field) for r in rows]
    if not all(isinstance(g, list) and len(g) == len(w) and all(isinstance(t, str) for t in g)
               for g, w in zip(gold, words)):
        return out, None  # no (usable) gold tags: predictions only
    scheme = detect_scheme(gold)  # type: ignore[arg-type]
    joined = [join_words(w) for w in words]
    tagged = p.word_tags([j[0] for j in joined], [j[1] for j in joined], batch_size)
    counts = EntityCounts()
    for g, (pred, _) in zip(gold, tagged):
        counts.update(to_iob2(g, scheme).tags, pred)  # type: ignore[arg-type]
    return out, counts.compute()


def predict_answers_file(p: SpanPredictor, path: Path, batch_size: int = 16,
                         null_threshold: float | None = None
                         ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    info = p.info
    qcfg = ExtractiveQAConfig(context_field=info.get("context_field", "context"),
                              question_field=info.get("question_field", "question"),
                              answers_field=info.get("answers_field", "answers"),
                              id_field=info.get("id_field", "id"))
    rows = read_rows(path)
    problems: list[tuple[str, str, Any]] = []
    qs = [to_question(r, qcfg, problems, need_answers=False) for r in rows]
    if problems:
        kind, where, got = problems[0]
        raise DataError(f"{len(problems)} of {len(rows)} rows cannot be answered; the first: "
                        f"{kind}", where=where, got=got,
                        fix="give every row a question and a context (and answers whose "
                        "answer_start points at their text)")
    preds = p.answers([q.question for q in qs], [q.context for q in qs],  # type: ignore[union-attr]
                      batch_size, null_threshold)
    out = [{**r.data, **a} for r, a in zip(rows, preds)]
    if not all(qcfg.answers_field in r.data for r in rows):
        return out, None
    counts = SquadCounts()
    for q, a in zip(qs, preds):
        counts.update(a["answer"], q.answer_texts)  # type: ignore[union-attr]
    return out, counts.compute()
