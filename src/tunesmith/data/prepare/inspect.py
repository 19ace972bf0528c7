"""``tunesmith data inspect``: what is in a dataset file, before anything is trained on it.

Streams the file once and reports the detected format and schema, per-field presence,
emptiness and length percentiles, label distribution, exact duplicates, unreadable or
malformed rows (with line numbers), sample rows, and, given a tokenizer, a token-length
histogram with percentiles and how many rows a given ``max_length`` would truncate.

Token counts use the tokenizer's chat template for chat data when it has one; other
formats are measured as their text fields joined by blank lines (the prompt template adds
a few tokens on top, so treat those counts as a lower bound).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.config.schema import TokenClassificationConfig
from tunesmith.data.formats import FORMATS
from tunesmith.data.prepare.card import short
from tunesmith.data.prepare.fields import (
    check_row,
    iter_texts,
    majority_format,
    row_format,
    type_name,
)
from tunesmith.data.prepare.source import expand_inputs, iter_source
from tunesmith.data.prepare.spans import SPAN_FORMATS, SpanChecker
from tunesmith.data.prepare.textkeys import exact_key, hash64
from tunesmith.data.readers import BadRow, Row
from tunesmith.errors import DataError, ModelError

_DETECT_ROWS = 1000
_TOKEN_BATCH = 512
PERCENTILES = (50, 90, 95, 99)


def load_tokenizer(name: str, resolve_model: Callable[[str], Any] | None = None) -> Any:
    """Load a tokenizer from a local path, a hub id, or (through ``resolve_model``, which
    the CLI passes in from the models layer above) an embedded model name."""
    target: str = name
    if not Path(name).exists() and resolve_model is not None:
        try:  # embedded model names (e.g. smollm2-135m-instruct) resolve to a local dir
            target = str(resolve_model(name))
        except ModelError as exc:  # re-point it at the option the user typed
            raise ModelError(exc.what, where=f"--tokenizer {name}", got=exc.got,
                             fix=exc.fix) from None
    # deferred: transformers is heavy and only this path needs it
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(target)
    except Exception as exc:
        raise ModelError(f"cannot load tokenizer ({type(exc).__name__})",
                         where=f"--tokenizer {name}", got=short(str(exc), 160),
                         fix="pass a local model directory, an embedded model name "
                         "(tunesmith models list) or a hub id you have downloaded") from None


def length_stats(values: np.ndarray | array) -> dict[str, float | int]:
    """Count, min, mean, percentiles and max of lengths (an ``array('l')`` or an ndarray)."""
    if isinstance(values, array):
        values = np.frombuffer(values, dtype=np.int64) if len(values) else np.empty(0, np.int64)
    if len(values) == 0:
        return {"count": 0}
    out: dict[str, float | int] = {"count": len(values), "min": int(values.min()),
                                   "mean": round(float(values.mean()), 1)}
    for p in PERCENTILES:
        out[f"p{p}"] = int(np.percentile(values, p, method="nearest"))
    out["max"] = int(values.max())
    return out


def histogram(values: np.ndarray) -> list[dict[str, int]]:
    """Rows per power-of-two length bucket: [0,16), [16,32), [32,64), ..."""
    if len(values) == 0:
        return []
    edges = [0, 16]
    while edges[-1] <= values.max():
        edges.append(edges[-1] * 2)
    counts, _ = np.histogram(values, bins=edges)
    return [{"lo": lo, "hi": hi, "rows": int(c)}
            for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)]


class _TokenCounter:
    def __init__(self, tokenizer: Any, fmt: str) -> None:
        self.tok = tokenizer
        self.use_template = fmt == "messages" and bool(getattr(tokenizer, "chat_template", None))
        self.fmt = fmt
        self.pending: list[str] = []
        self.lengths = array("l")

    def add(self, data: dict[str, Any]) -> None:
        if self.use_template:
            text = self.tok.apply_chat_template(data["messages"], tokenize=False)
        else:
            text = "\n\n".join(t for _, t in iter_texts(data, self.fmt))
        self.pending.append(text)
        if len(self.pending) >= _TOKEN_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        enc = self.tok(self.pending, add_special_tokens=not self.use_template)
        self.lengths.extend(len(ids) for ids in enc["input_ids"])
        self.pending = []


def inspect_dataset(path: str, *, fmt: str = "auto", label_field: str = "label",
                    tokenizer: Any = None, tokenizer_name: str | None = None,
                    max_length: int = 2048, samples: int = 3, limit: int | None = None,
                    progress: Callable[[str, int], None] | None = None,
                    tags: TokenClassificationConfig | None = None) -> dict[str, Any]:
    """Stream ``path`` once and return the statistics ``data inspect`` prints.

    NER and QA rows (``token_classification``, ``extractive_qa``) are checked as training
    reads them; ``tags`` gives the label list of integer tags, the scheme and whether an
    ``I-`` without its ``B-`` is an error (``invalid_tags``)."""
    sources = expand_inputs([path])
    items = (item for src in sources for item in iter_source(src))
    buffered: list[Row | BadRow] = []
    for item in items:
        buffered.append(item)
        if len(buffered) >= _DETECT_ROWS:
            break
    if fmt == "auto":
        detected = majority_format([i.data for i in buffered if isinstance(i, Row)], label_field)
    else:
        detected = fmt
    if detected is not None and detected not in FORMATS + SPAN_FORMATS:
        raise DataError("unknown format", where="--format", got=fmt,
                        fix=f"use {', '.join(FORMATS + SPAN_FORMATS)}")
    spans = SpanChecker(detected, tags) if detected in SPAN_FORMATS else None
    if spans is not None:
        spans.detect(i.data for i in buffered if isinstance(i, Row))

    bad: Counter[str] = Counter()
    invalid: Counter[str] = Counter()
    examples: list[dict[str, str]] = []
    present: Counter[str] = Counter()
    empty: Counter[str] = Counter()
    types: dict[str, Counter[str]] = {}
    lengths: dict[str, array] = {}
    labels: Counter[str] = Counter()
    turns: Counter[int] = Counter()
    roles: Counter[str] = Counter()
    formats_seen: Counter[str] = Counter()
    seen: set[int] = set()
    duplicates = 0
    rows = 0
    sample_rows: list[dict[str, Any]] = []
    tokens = _TokenCounter(tokenizer, detected) if tokenizer is not None and detected else None

    def stream() -> Any:
        yield from buffered
        yield from items

    for item in stream():
        if limit is not None and rows + sum(bad.values()) >= limit:
            break
        if isinstance(item, BadRow):
            bad[item.reason] += 1
            if len(examples) < 10:
                examples.append({"where": item.where, "reason": item.reason,
                                 "message": item.message})
            continue
        rows += 1
        data = item.data
        formats_seen[row_format(data, label_field) or "unknown"] += 1
        for key, value in data.items():
            present[key] += 1
            types.setdefault(key, Counter())[type_name(value)] += 1
            if value is None or value == "" or value == [] or value == {}:
                empty[key] += 1
            length = _length(value)
            if length is not None:
                lengths.setdefault(key, array("l")).append(length)
        if len(sample_rows) < samples:
            sample_rows.append({"where": item.where,
                                "row": {k: short(v, 120) if isinstance(v, (str, list, dict))
                                        else v for k, v in data.items()}})
        if detected is None:
            continue
        problem = (spans.check(item) if spans is not None
                   else check_row(data, detected, label_field))
        if problem is not None:
            invalid[problem.reason] += 1
            if len(examples) < 10:
                examples.append({"where": item.where, "reason": problem.reason,
                                 "message": f"{problem.message} (field '{problem.field}')"})
            continue
        key = hash64("\x1e".join(exact_key(t) for _, t in iter_texts(data, detected)))
        if key in seen:
            duplicates += 1
        else:
            seen.add(key)
        if detected == "classification":
            value = data.get(label_field)
            labels[value if isinstance(value, str) else repr(value)] += 1
        if detected == "messages":
            turns[len(data["messages"])] += 1
            roles.update(m.get("role", "?") for m in data["messages"])
        if tokens is not None:
            tokens.add(data)
        if progress and rows % 10000 == 0:
            progress("inspect", rows)
    if rows == 0 and not bad:
        raise DataError("the dataset is empty", where=path, fix="point at a file with records")

    report: dict[str, Any] = {
        "path": path, "format": detected, "rows": rows,
        "row_formats": dict(formats_seen.most_common()),
        "bad_rows": {"total": sum(bad.values()) + sum(invalid.values()),
                     "unreadable": dict(bad), "invalid": dict(invalid), "examples": examples},
        "fields": {k: {"present": present[k], "empty": empty[k], "types": dict(types[k]),
                       **({"chars": length_stats(lengths[k])}
                          if k in lengths else {})} for k in present},
        "exact_duplicates": duplicates, "samples": sample_rows,
    }
    if labels:
        report["labels"] = {"field": label_field, "counts": dict(labels.most_common())}
    if spans is not None:
        report[detected] = spans.report(length_stats)
    if turns:
        report["chat"] = {"turns": dict(sorted(turns.items())), "roles": dict(roles)}
    if tokens is not None:
        tokens.flush()
        tl = np.frombuffer(tokens.lengths, dtype=np.int64)
        truncated = int((tl > max_length).sum())
        report["tokens"] = {"tokenizer": tokenizer_name or type(tokenizer).__name__,
                            "method": "chat_template" if tokens.use_template else "joined_fields",
                            **length_stats(tl), "histogram": histogram(tl), "max_length": max_length,
                            "truncated_rows": truncated,
                            "truncated_share": round(truncated / len(tl), 4) if len(tl) else 0.0}
    return report


def _length(value: Any) -> int | None:
    """Characters of a string, or of all message contents of a message list."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return sum(len(m["content"]) for m in value if isinstance(m.get("content"), str))
    return None
