"""``tunesmith predict`` for entity (NER) and answer (extractive QA) models: the part of
the command after the model turned out to be one of those (``predict_cli`` dispatches).

``--text`` tags one text (entities) or, with ``--question``, answers it with ``--text`` as
the context; ``--file`` predicts every row (JSONL out) and, when the rows carry gold tags
or answers, prints entity F1 or exact match / F1 to standard error. ``--threshold`` for QA
overrides the no-answer threshold chosen on validation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from tunesmith.errors import UsageError
from tunesmith.inference.spans import load_span_predictor, span_task
from tunesmith.inference.spans_file import predict_answers_file, predict_entities_file
from tunesmith.io import atomic_write_text

__all__ = ["predict_spans", "span_task"]


def predict_spans(model: str, text: str | None, question: str | None, file: Path | None,
                  output: Path | None, text_field: str | None, threshold: float | None,
                  batch_size: int, precision: str) -> None:
    err = Console(stderr=True)
    p = load_span_predictor(model, precision)
    qa = p.task == "extractive_qa"
    if text is not None:
        if not text.strip():
            raise UsageError("--text is empty", where="--text", fix="give a text")
        if qa:
            if not question or not question.strip():
                raise UsageError("an extractive-QA model needs --question (and --text as the "
                                 "context)", where="--question",
                                 fix="tunesmith predict RUN --question 'Who?' --text 'context'")
            out = {"question": question, "context": text,
                   **p.answers([question], [text], null_threshold=threshold)[0]}
        else:
            out = {"text": text, "entities": [e.as_dict() for e in p.entities([text])[0]]}
        typer.echo(json.dumps(out, ensure_ascii=False))
        return
    assert file is not None
    if qa:
        rows, metrics = predict_answers_file(p, file, batch_size, threshold)
    else:
        rows, metrics = predict_entities_file(p, file, batch_size, text_field)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if output is None:
        sys.stdout.write(body)
        sys.stdout.flush()
    else:
        atomic_write_text(output, body)
        err.print(f"wrote {len(rows)} predictions to {output}", highlight=False)
    if metrics is not None and qa:
        err.print(f"gold answers found: exact match {metrics['exact_match']:.2f}  F1 "
                  f"{metrics['f1']:.2f}  on {metrics['total']} questions", highlight=False)
    elif metrics is not None:
        err.print(f"gold tags found: entity F1 {metrics['entity_f1']:.4f}  precision "
                  f"{metrics['entity_precision']:.4f}  recall {metrics['entity_recall']:.4f}  "
                  f"on {metrics['sentences']} sentences", highlight=False)
