"""Datasets of the studio: uploads kept in ``<data_dir>/datasets/``, and the three views of
the ``data`` commands — ``data inspect`` (statistics), ``data preview`` (the trained tokens
of each example under the model's chat template and label mask, with the template checks)
and ``data prepare`` (clean, dedup, split; the data card).

Uploads are checked before they are kept (every row must read: a malformed line is the same
``DataError`` the CLI prints, naming the uploaded file's line) and written atomically, so a
failed or cut-off upload leaves nothing behind.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, BinaryIO

from tunesmith.config.load import validate_dict
from tunesmith.data.formats import detect_training_format, to_example
from tunesmith.data.prepare.config import build_config
from tunesmith.data.prepare.inspect import inspect_dataset
from tunesmith.data.prepare.pipeline import prepare
from tunesmith.data.readers import SUFFIXES, iter_rows, read_rows
from tunesmith.data.templates import CHECK_TEXT, IGNORE, Encoder, check_encoded
from tunesmith.errors import DataError, UsageError
from tunesmith.io import atomic_file
from tunesmith.models.artifacts import resolve_artifact
from tunesmith.models.load import load_tokenizer

_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_TOKENIZERS: dict[str, Any] = {}


def datasets_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "datasets"


def dataset_paths(data_dir: Path) -> list[Path]:
    root = datasets_dir(data_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.suffix in SUFFIXES and p.is_file()),
                  key=lambda p: p.stat().st_mtime, reverse=True)


def safe_filename(name: str) -> str:
    base = Path(name or "upload.jsonl").name
    stem, suffix = Path(base).stem, Path(base).suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError("unsupported file type", where=base, got=suffix or "(none)",
                        fix=f"upload one of {', '.join(SUFFIXES)}")
    return (_NAME.sub("-", stem).strip("-.") or "data") + suffix


def store_upload(data_dir: Path, filename: str, src: BinaryIO) -> Path:
    """Keep an uploaded file under ``datasets/`` after every row of it has been read."""
    name = safe_filename(filename)
    target = datasets_dir(data_dir) / name
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{Path(name).stem}-{n}{Path(name).suffix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
        out.flush()
        tmp = Path(out.name).with_suffix(target.suffix)
        Path(out.name).rename(tmp)  # readers pick the format by the suffix
        try:
            rows = sum(1 for _ in _rows_named(tmp, name))
        finally:
            tmp.rename(out.name)
    if rows == 0:
        target.unlink(missing_ok=True)
        raise DataError("the file holds no rows", where=name,
                        fix="upload a file with one record per line (JSONL) or per row (CSV)")
    return target


def _rows_named(path: Path, shown: str) -> Any:
    try:
        yield from iter_rows(path)
    except DataError as exc:
        if exc.where:
            exc.where = exc.where.replace(str(path), shown)
        raise


def resolve_dataset(data_dir: Path, path: str) -> Path:
    """An uploaded dataset's name, or a path on the server; DataError when missing."""
    candidate = datasets_dir(data_dir) / path
    if "/" not in path and candidate.is_file():
        return candidate
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError("file not found", where=path,
                        fix="upload the file above, or give a path that exists on the server "
                        f"(relative paths start at {Path.cwd()})")
    return p


def inspect(path: Path, samples: int = 3) -> dict[str, Any]:
    """``tunesmith data inspect PATH`` as a dict."""
    return inspect_dataset(str(path), samples=samples, limit=100_000)


def _tokenizer(model: str, chat_template: str | None) -> Any:
    key = f"{model}\0{chat_template}"
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(resolve_artifact(model), chat_template)
    return _TOKENIZERS[key]


def preview(path: Path, model: str, max_length: int = 1024, train_on_inputs: bool = False,
            fmt: str = "auto", system_prompt: str | None = None, n: int = 3) -> dict[str, Any]:
    """``tunesmith data preview``: the first ``n`` examples as (token, trained) pieces, the
    counts and each template / label-mask check over the first 200 rows."""
    cfg = validate_dict({"model": {"name": model}, "data": {
        "train": str(path), "max_length": max_length, "train_on_inputs": train_on_inputs,
        "format": fmt, "system_prompt": system_prompt}}, source="preview settings")
    tok = _tokenizer(cfg.model.name, cfg.model.chat_template)
    rows = read_rows(str(path), limit=200)
    if not rows:
        raise DataError("the file holds no rows", where=str(path))
    used = detect_training_format(rows) if cfg.data.format == "auto" else cfg.data.format
    enc = Encoder(tok, cfg.data.max_length, cfg.data.train_on_inputs, cfg.data.truncation)
    encoded = [enc.encode(to_example(r, used, cfg.data.system_prompt)) for r in rows]
    report = check_encoded(encoded, enc)
    examples = []
    for e in encoded[:n]:
        pieces: list[list[Any]] = []
        for tid, lab in zip(e.input_ids, e.labels):
            text, trained = tok.decode([tid]), lab != IGNORE
            if pieces and pieces[-1][1] == trained:
                pieces[-1][0] += text
            else:
                pieces.append([text, trained])
        trained_n = sum(1 for t in e.labels if t != IGNORE)
        examples.append({"where": e.where, "pieces": pieces, "trained": trained_n,
                         "masked": len(e.labels) - trained_n})
    checks = [{"code": code, "what": what, "fix": fix,
               "failing": report.failures.get(code, [])} for code, (what, fix)
              in CHECK_TEXT.items()]
    return {"format": used, "rows": len(rows), "trained_tokens": report.trained_tokens,
            "masked_tokens": report.masked_tokens, "examples": examples, "checks": checks}


def run_prepare(data_dir: Path, path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """``tunesmith data prepare PATH -o OUT ...``; returns the data card."""
    out = options.get("output") or str(datasets_dir(data_dir) / "prepared" / path.stem)
    raw = {"inputs": [str(path)], "output": out, "overwrite": True,
           **{k: v for k, v in options.items() if k != "output"}}
    cfg = build_config(raw, source="studio prepare form")
    if not cfg.inputs:
        raise UsageError("no input files given", fix="pick a dataset")
    return {**prepare(cfg).card, "output_dir": out}
