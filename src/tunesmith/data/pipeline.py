"""From config to tokenized train/validation sets: read → format → template+mask → check.

Tokenized data is cached under ``$TUNESMITH_HOME/tokenized/`` keyed by the file contents,
the tokenizer, the template and every setting that changes the encoding, so a rerun with the
same inputs does no tokenizing. Each entry carries a checksum; a damaged one is removed and
rebuilt with a warning (:mod:`tunesmith.data.cache`).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.config.schema import DataConfig
from tunesmith.data.cache import read_entry, write_entry
from tunesmith.data.collate import epoch_batches
from tunesmith.data.formats import detect_training_format, to_example
from tunesmith.data.prepare.card import card_hashes, prepared_split_path, read_card
from tunesmith.data.readers import read_rows
from tunesmith.data.templates import (
    Encoded,
    Encoder,
    check_encoded,
    raise_on_failures,
    too_long_fix,
)
from tunesmith.data.tool_template import supports_tools
from tunesmith.errors import DataError
from tunesmith.io import cache_root, file_sha256

ENCODING_VERSION = "4"  # bump when encoding or row checks change (a cache hit skips both)


@dataclass
class SplitStats:
    source: str
    rows: int = 0
    format: str = ""
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    trained_tokens: int = 0
    masked_tokens: int = 0
    cached: bool = False
    sha256: str = ""
    # the tokenizer had no chat template, so the built-in alpaca one was used (and is saved)
    fallback_template: bool = False
    # the data has tool calls and the template ignored them: the built-in tool template was
    # used (and is saved with the model)
    tool_template: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Prepared:
    train: list[Encoded]
    validation: list[Encoded]
    stats: dict[str, SplitStats] = field(default_factory=dict)
    data_card: dict[str, Any] | None = None  # hashes of a `tunesmith data prepare` directory


def resolve_prepared(cfg: DataConfig) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """A ``data.train`` that is a prepared directory means its train (and validation) split.

    Split files are verified against the data card's hashes; the card's hashes go into the
    run manifest.
    """
    train = cfg.train
    if not train or not (Path(train) / "data_card.json").is_file():
        return cfg.train, cfg.validation, None

    splits = read_card(train).get("splits", {})
    validation = cfg.validation
    if validation is None and "validation" in splits and splits["validation"].get("rows", 1):
        validation = str(prepared_split_path(train, "validation", verify=True))
    return str(prepared_split_path(train, "train", verify=True)), validation, card_hashes(train)


def prepare_data(cfg: DataConfig, tokenizer: Any, seed: int = 42) -> Prepared:
    """Build tokenized train and validation sets, running the contract checks."""
    if not cfg.train:
        raise DataError("no training data given", where="data.train",
                        fix="set data.train: path/to/train.jsonl (or data.train=... on the "
                        "command line)")
    encoder = Encoder(tokenizer, cfg.max_length, cfg.train_on_inputs, cfg.truncation,
                      cfg.reasoning)
    train_path, val_path, card = resolve_prepared(cfg)
    assert train_path is not None
    train, tstats = encode_file(train_path, cfg, encoder, limit=cfg.max_examples)
    stats = {"train": tstats}
    val: list[Encoded] = []
    if val_path:
        val, vstats = encode_file(val_path, cfg, encoder)
        stats["validation"] = vstats
    elif cfg.val_split > 0:
        train, val = split_off(train, cfg.val_split, seed)
    return Prepared(train, val, stats, card)


def split_off(items: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(kept, held out): a seeded random ``fraction`` (at least one item) for validation."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(items) * fraction))
    if n_val >= len(items):
        raise DataError("data.val_split leaves no training examples", where="data.val_split",
                        got=fraction, fix="use a smaller fraction or more data")
    held = set(order[:n_val])
    return ([e for i, e in enumerate(items) if i not in held],
            [e for i, e in enumerate(items) if i in held])


def padding_stats(lengths: list[int], batch_size: int, seed: int, group_by_length: bool
                  ) -> dict[str, float]:
    """Share of padded slots in the first epoch's batches, as the loop will form them."""
    real = slots = 0
    for batch in epoch_batches(lengths, batch_size, seed, 0, group_by_length):
        width = -(-max(lengths[i] for i in batch) // 8) * 8
        real += sum(lengths[i] for i in batch)
        slots += width * len(batch)
    return {"padding_fraction": round(1 - real / max(slots, 1), 4), "tokens": real,
            "group_by_length": group_by_length, "packing": False}


def encode_file(path: str, cfg: DataConfig, encoder: Encoder, limit: int | None = None
                ) -> tuple[list[Encoded], SplitStats]:
    digest = file_sha256(path) if Path(path).is_file() else hashlib.sha256(
        path.encode()).hexdigest()
    stats = SplitStats(source=path, sha256=digest)
    key = _cache_key(digest, cfg, encoder, limit)
    cache_file = cache_root() / "tokenized" / f"{key}.npz"
    hit = read_entry(cache_file, _load_cache) if cfg.cache else None
    if hit is not None:
        encs, meta = hit
        stats.__dict__.update(meta)
        stats.cached = True
        if stats.tool_template:  # before the alpaca fallback, which it replaces
            encoder.use_tool_template()
        if stats.fallback_template:
            # the cached ids were rendered with the fallback template: the tokenizer saved
            # with the model must carry it, exactly as on the run that filled the cache
            encoder.use_fallback_template()
        return encs, stats
    rows = read_rows(path, limit=limit)
    stats.rows = len(rows)
    fmt = detect_training_format(rows) if cfg.format == "auto" else cfg.format
    stats.format = fmt
    examples, bad = [], []
    for row in rows:
        try:
            examples.append(to_example(row, fmt, cfg.system_prompt))
        except DataError as exc:
            bad.append(exc)
    if bad:
        first = bad[0]
        raise DataError(f"{len(bad)} of {len(rows)} records are invalid; the first: {first.what}",
                        where=first.where, got=first.got, fix=first.fix)
    had_template = encoder.has_template
    template = getattr(encoder.tokenizer, "chat_template", None)
    full = [encoder.encode(ex) for ex in examples]
    stats.fallback_template = encoder.has_template and not had_template
    stats.tool_template = encoder.tokenizer.chat_template != template and supports_tools(
        encoder.tokenizer.chat_template)
    raise_on_failures(check_encoded(full, encoder), path)
    kept = []
    for enc in full:
        fitted = encoder.fit(enc)
        if fitted is None:
            if len(enc.input_ids) > encoder.max_length:
                stats.dropped_too_long += 1
            else:
                stats.dropped_no_target += 1
            continue
        stats.truncated += int(fitted.truncated)
        stats.trained_tokens += sum(1 for t in fitted.labels if t != -100)
        stats.masked_tokens += sum(1 for t in fitted.labels if t == -100)
        kept.append(fitted)
    stats.kept = len(kept)
    if not kept:
        fixes = []
        if stats.dropped_too_long:
            fixes.append(too_long_fix("data.max_length", cfg.max_length, cfg.truncation))
        if stats.dropped_no_target:
            fixes.append("give every example an answer to train on (a non-empty completion, "
                         "an assistant message with weight 1)")
        raise DataError("no usable examples are left after applying data.max_length",
                        where=path, got=f"{stats.dropped_too_long} too long, "
                        f"{stats.dropped_no_target} with nothing to train", fix="; ".join(fixes))
    if cfg.cache:
        _save_cache(cache_file, kept, stats)
    return kept, stats


def tokenizer_fingerprint(tok: Any) -> str:
    h = hashlib.sha256()
    h.update(type(tok).__name__.encode())
    h.update(json.dumps(sorted(tok.get_vocab().items())[:50000:97]).encode())
    h.update(str(len(tok)).encode())
    h.update((getattr(tok, "chat_template", None) or "").encode())
    h.update(json.dumps([tok.bos_token, tok.eos_token, tok.pad_token]).encode())
    return h.hexdigest()[:16]


def _cache_key(digest: str, cfg: DataConfig, enc: Encoder, limit: int | None) -> str:
    parts = [ENCODING_VERSION, digest, tokenizer_fingerprint(enc.tokenizer), cfg.format,
             cfg.max_length, cfg.truncation, cfg.train_on_inputs, cfg.system_prompt, limit,
             cfg.reasoning]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def _save_cache(path: Path, encs: list[Encoded], stats: SplitStats) -> None:
    lengths = np.array([len(e.input_ids) for e in encs], dtype=np.int64)
    ids = np.concatenate([np.asarray(e.input_ids, dtype=np.int64) for e in encs])
    labels = np.concatenate([np.asarray(e.labels, dtype=np.int64) for e in encs])
    meta = {k: v for k, v in stats.as_dict().items() if k not in ("cached", "source")}
    meta["wheres"] = [e.where for e in encs]
    meta["truncated_flags"] = [int(e.truncated) for e in encs]
    write_entry(path, lambda fh: np.savez(
        fh, lengths=lengths, ids=ids, labels=labels,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)))


def _load_cache(path: Path) -> tuple[list[Encoded], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as z:
        lengths, ids, labels = z["lengths"], z["ids"], z["labels"]
        meta = json.loads(z["meta"].tobytes().decode())
    wheres, flags = meta.pop("wheres"), meta.pop("truncated_flags")
    if not len(wheres) == len(flags) == len(lengths) or int(lengths.sum()) != len(ids):
        raise ValueError("its arrays disagree in length")
    encs, pos = [], 0
    for i, n in enumerate(lengths.tolist()):
        encs.append(Encoded(ids[pos:pos + n].tolist(), labels[pos:pos + n].tolist(), wheres[i],
                            bool(flags[i])))
        pos += n
    return encs, meta
