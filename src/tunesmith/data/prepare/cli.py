"""The ``tunesmith data inspect`` and ``tunesmith data prepare`` commands.

``register(data_app)`` adds both to the ``data`` typer sub-app. The commands only parse
options, call ``inspect.inspect_dataset`` / ``pipeline.prepare`` and print; a
``TunesmithError`` becomes one ``Error:`` block on stderr and its exit code (2 for bad
input or options), without a traceback.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from tunesmith.data.prepare.config import (
    build_config,
    load_config_file,
    merge_overrides,
    parse_split_spec,
)
from tunesmith.data.prepare.render import render_inspect, render_prepare
from tunesmith.errors import TunesmithError, UsageError


def _fail(exc: TunesmithError) -> typer.Exit:
    # the message quotes user data ("[EMAIL]", "[1, 2]"): escape it so rich prints it verbatim
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]Error:[/] {escape(exc.render())}")
    return typer.Exit(exc.exit_code)


def _progress(console: Console, enabled: bool) -> tuple[Any, Callable[[str, int], None] | None]:
    if not enabled or not console.is_terminal:
        return None, None
    status = console.status("starting")

    def update(stage: str, n: int) -> None:
        status.update(f"{stage}: {n:,} rows")

    return status, update


@contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the staging directory is removed on kill."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread (e.g. called from a server): leave it alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_LABELS_HELP = ("NER: tag names in id order, comma-separated, for integer ner_tags (e.g. "
                "O,B-PER,I-PER,B-LOC,I-LOC).")
_INVALID_HELP = ("NER: an I- tag without its B-: 'repair' (kept, counted, read as B- by "
                 "training) or 'error' (the row is bad input).")


def _tags(labels: str | None, invalid_tags: str | None) -> dict[str, Any]:
    """The ``token_classification`` options given on the command line."""
    out: dict[str, Any] = {}
    if labels is not None:
        out["labels"] = [t.strip() for t in labels.split(",") if t.strip()]
    if invalid_tags is not None:
        out["invalid_tags"] = invalid_tags
    return out


def inspect_command(
    file: Annotated[str, typer.Argument(
        help="Data file or directory (JSONL, JSON, CSV, Parquet).")],
    tokenizer: Annotated[str | None, typer.Option(
        "--tokenizer", help="Model name or path whose tokenizer measures token lengths.")] = None,
    max_length: Annotated[int, typer.Option(
        help="Report how many rows exceed this many tokens.", min=1)] = 2048,
    samples: Annotated[int, typer.Option(help="Sample rows to show.", min=0)] = 3,
    limit: Annotated[int | None, typer.Option(help="Read only the first N rows.", min=1)] = None,
    fmt: Annotated[str, typer.Option("--format", help="Record format (default: detect).")] = "auto",
    label_field: Annotated[str, typer.Option(help="Label field of classification data.")] = "label",
    labels: Annotated[str | None, typer.Option(help=_LABELS_HELP)] = None,
    invalid_tags: Annotated[str, typer.Option(help=_INVALID_HELP)] = "repair",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show a dataset's format, fields, lengths, labels, token lengths and bad rows."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.data.prepare.inspect import inspect_dataset, load_tokenizer
    from tunesmith.data.prepare.spans import tags_config

    console = Console(stderr=False, highlight=False)
    try:
        tags = tags_config(build_config({"token_classification": _tags(labels, invalid_tags)},
                                        source="command-line options").token_classification)
        tok = load_tokenizer(tokenizer, _RESOLVE_MODEL[0]) if tokenizer else None
        status, progress = _progress(Console(stderr=True), not as_json)
        if status is not None:
            status.start()
        try:
            report = inspect_dataset(file, fmt=fmt, label_field=label_field, tokenizer=tok,
                                     tokenizer_name=tokenizer, max_length=max_length,
                                     samples=samples, limit=limit, progress=progress,
                                     tags=tags)
        finally:
            if status is not None:
                status.stop()
    except TunesmithError as exc:
        raise _fail(exc) from None
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    else:
        render_inspect(report, console)


def prepare_command(
    inputs: Annotated[list[str] | None, typer.Argument(
        help="Input files or directories (or 'inputs:' in --config).")] = None,
    output: Annotated[str | None, typer.Option("-o", "--output", help="Output directory.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file with the options "
                                                   "(flags given here override it).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Record format: auto, alpaca, "
                   "messages, prompt_completion, classification, text, preference.")] = None,
    label_field: Annotated[str | None, typer.Option(help="Label field (classification).")] = None,
    labels: Annotated[str | None, typer.Option(help=_LABELS_HELP)] = None,
    invalid_tags: Annotated[str | None, typer.Option(help=_INVALID_HELP)] = None,
    split: Annotated[str | None, typer.Option(help="Split ratios, e.g. 0.8,0.1,0.1 or "
                     "train=0.9,test=0.1.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split.")] = None,
    stratify_by: Annotated[str | None, typer.Option(help="Field whose proportions each split "
                           "keeps ('auto': the label; 'none': off).")] = None,
    group_by: Annotated[str | None, typer.Option(help="Rows sharing this field's value stay "
                        "in one split.")] = None,
    exact_dedup: Annotated[bool | None, typer.Option("--exact-dedup/--no-exact-dedup",
                           help="Drop exact duplicates (default on).")] = None,
    near_dedup: Annotated[bool | None, typer.Option("--near-dedup/--no-near-dedup",
                          help="Drop near-duplicates with MinHash LSH (default on).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Near-duplicate Jaccard threshold "
                         "(default 0.8).")] = None,
    num_perm: Annotated[int | None, typer.Option(help="MinHash permutations.")] = None,
    pii: Annotated[bool | None, typer.Option("--pii/--no-pii", help="Scrub e-mails, phones, "
                   "IPs and card numbers (default off).")] = None,
    pii_kinds: Annotated[str | None, typer.Option(help="Comma list of PII kinds: "
                         "email,phone,ip,card.")] = None,
    strip_html: Annotated[bool | None, typer.Option("--strip-html/--keep-html",
                          help="Remove HTML tags (default off).")] = None,
    unicode: Annotated[str | None, typer.Option(help="Unicode form: NFC, NFKC or none.")] = None,
    fix_mojibake: Annotated[bool | None, typer.Option("--fix-mojibake/--no-fix-mojibake",
                            help="Repair mis-decoded UTF-8 (default on).")] = None,
    min_chars: Annotated[int | None, typer.Option(help="Drop rows with less text.")] = None,
    max_chars: Annotated[int | None, typer.Option(help="Drop rows with more text.")] = None,
    eval_file: Annotated[list[str] | None, typer.Option("--eval-file", help="Evaluation file "
                         "to check train rows against (repeatable).")] = None,
    contamination: Annotated[bool | None, typer.Option("--contamination/--no-contamination",
                             help="Check train vs evaluation overlap (default on).")] = None,
    decontaminate: Annotated[bool | None, typer.Option("--decontaminate/--keep-contaminated",
                             help="Drop contaminated train rows (default: report only).")] = None,
    ngram: Annotated[int | None, typer.Option(help="Word n-gram length of the overlap "
                     "check (default 13).")] = None,
    output_format: Annotated[str | None, typer.Option(help="jsonl or parquet.")] = None,
    strict: Annotated[bool | None, typer.Option("--strict/--lenient", help="Fail on the first "
                      "bad row instead of reporting it.")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace an existing "
                         "output directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the data card as JSON.")] = False,
) -> None:
    """Clean, deduplicate, scrub, split and check datasets; write splits and a data card."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.data.prepare.pipeline import prepare

    try:
        raw = load_config_file(config) if config else {}
        ratios = parse_split_spec(split) if split else {}
        overrides: dict[str, Any] = {
            "inputs": list(inputs) if inputs else None, "output": output, "format": fmt,
            "label_field": label_field, "strict": strict, "overwrite": overwrite,
            "output_format": output_format,
            "split.train": ratios.get("train"), "split.validation": ratios.get("validation"),
            "split.test": ratios.get("test"), "split.seed": seed, "split.group_by": group_by,
            "dedup.exact": exact_dedup, "dedup.near": near_dedup, "dedup.threshold": threshold,
            "dedup.num_perm": num_perm, "pii.enabled": pii,
            "pii.kinds": ([k.strip() for k in pii_kinds.split(",") if k.strip()]
                          if pii_kinds else None),
            "clean.strip_html": strip_html, "clean.unicode": unicode,
            "clean.fix_mojibake": fix_mojibake, "clean.min_chars": min_chars,
            "clean.max_chars": max_chars, "contamination.enabled": contamination,
            "contamination.remove": decontaminate, "contamination.ngram": ngram,
            "contamination.eval_files": list(eval_file) if eval_file else None,
        }
        tags = _tags(labels, invalid_tags)
        overrides.update({f"token_classification.{k}": v for k, v in tags.items()})
        merged = merge_overrides(raw, overrides)
        if stratify_by is not None:
            merged.setdefault("split", {})["stratify_by"] = (
                None if stratify_by.lower() in ("none", "off", "") else stratify_by)
        cfg = build_config(merged, source=str(config) if config else "command-line options")
        if not cfg.inputs:
            raise UsageError("no input files given",
                             fix="tunesmith data prepare IN.jsonl -o OUTDIR")
        err_console = Console(stderr=True)
        status, progress = _progress(err_console, not as_json)
        if status is not None:
            status.start()
        try:
            with _terminate_cleanly():
                result = prepare(cfg, progress=progress)
        finally:
            if status is not None:
                status.stop()
    except TunesmithError as exc:
        raise _fail(exc) from None
    if as_json:
        sys.stdout.write(json.dumps(result.card, indent=2, ensure_ascii=False) + "\n")
    else:
        render_prepare(result.card, Console(highlight=False))


# how `--tokenizer NAME` finds an embedded model: given by the CLI, which sits above the
# models layer that knows embedded names (the data layer must not import it)
_RESOLVE_MODEL: list[Callable[[str], Any] | None] = [None]


def register(data_app: typer.Typer, resolve_model: Callable[[str], Any] | None = None) -> None:
    """Add ``inspect`` and ``prepare`` to the ``tunesmith data`` sub-app."""
    _RESOLVE_MODEL[0] = resolve_model
    data_app.command("inspect")(inspect_command)
    data_app.command("prepare")(prepare_command)
