"""The ``tunesmith predict`` command; the CLI adds it with :func:`register`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunesmith.errors import UsageError
from tunesmith.io import atomic_write_text


def register(app: typer.Typer) -> None:
    """Add ``predict`` to ``app`` (called once from ``tunesmith.cli``)."""
    app.command("predict")(predict)


def predict(
    model: Annotated[str, typer.Argument(
        help="Run directory of a classification, token_classification or extractive_qa run, "
        "or a saved model directory.")],
    text: Annotated[Optional[str], typer.Option("--text", help="Classify one text.")] = None,
    file: Annotated[Optional[Path], typer.Option(
        "--file", help="JSONL/CSV/JSON/Parquet with one text per row.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Write JSONL here (default: standard output): each input row "
        "plus predicted_label (predicted_labels for multi-label), score and probabilities.")
    ] = None,
    text_field: Annotated[Optional[str], typer.Option(
        help="Field holding the text (default: the training run's text field).")] = None,
    threshold: Annotated[Optional[float], typer.Option(
        help="Multi-label: probability at or above which a class is predicted "
        "(default: the training run's). Extractive QA: the no-answer threshold "
        "(no-answer minus best-span score; default: the one chosen on validation).")] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 32,
    precision: Annotated[str, typer.Option(
        help="auto (bf16 where the CPU/GPU runs it fast), fp32 or bf16.")] = "auto",
    question: Annotated[Optional[str], typer.Option(
        "--question", help="Extractive QA: the question; --text is the context.")] = None,
) -> None:
    """Classify texts with a trained classifier: label and per-class probabilities (JSONL);
    entities (NER) or answers (extractive QA) with character offsets for those models."""
    # Each output row is the input row plus `predicted_label` (`predicted_labels` for
    # multi-label models), `score` and `probabilities`. When the rows carry the training label
    # field, accuracy and macro-F1 go to standard error.
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.inference.predict import load_predictor, predict_file

    err = Console(stderr=True)
    if (text is None) == (file is None):
        raise UsageError("give exactly one of --text or --file", where="command line",
                         fix="tunesmith predict RUN_DIR --text 'great film' or --file in.jsonl "
                         "-o out.jsonl")
    if precision not in ("auto", "fp32", "bf16"):
        raise UsageError("--precision must be auto, fp32 or bf16", where="--precision",
                         got=precision, fix="use --precision fp32 for exact float32 results")
    from tunesmith.inference.spans_cli import predict_spans, span_task  # deferred: torch

    if span_task(model) is not None:  # entities or answers, with character offsets
        predict_spans(model, text, question, file, output, text_field, threshold, batch_size,
                      precision)
        return
    if threshold is not None and not 0 < threshold < 1:
        raise UsageError("--threshold must be between 0 and 1", where="--threshold",
                         got=threshold, fix="e.g. --threshold 0.5")
    predictor = load_predictor(model, precision)
    if text is not None:
        if not text.strip():
            raise UsageError("--text is empty", where="--text", fix="give a text to classify")
        pred = predictor.predict([text], threshold=threshold)[0]
        typer.echo(json.dumps({"text": text, **pred.as_dict(predictor.multi_label)},
                              ensure_ascii=False))
        return
    assert file is not None
    rows, metrics = predict_file(predictor, file, batch_size, threshold, text_field)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if output is None:
        sys.stdout.write(body)
        sys.stdout.flush()
    else:
        atomic_write_text(output, body)
        err.print(f"wrote {len(rows)} predictions to {output}", highlight=False)
    if metrics is not None:
        err.print(f"gold labels found (`{predictor.label_field}`): accuracy "
                  f"{metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
                  f"on {metrics['examples']} rows", highlight=False)
