"""Unpaired ratings for KTO: (prompt, completion, desirable or not), tokenized, each row with
the mismatched sequence its KL estimate needs.

Accepted records: ``prompt`` / ``completion`` / ``label`` (names set under ``kto:``), the
prompt a string or chat messages, the completion a string or assistant message(s), the
label ``true``/``false``, ``1``/``0`` or ``"desirable"``/``"undesirable"`` — exactly what
``tunesmith feedback export --format kto`` writes (TRL's unpaired preference format).

KTO's reference point z₀ is a KL estimate from *mismatched* pairs: row i's prompt with
another row's completion. As TRL, row i takes the completion of row i-1 (cyclically), here
over the whole split rather than within one batch, so the pairing is fixed before training
and its reference log-probabilities can be precomputed and cached with the rest. The
mismatched sequence is built from tokens (row i's prompt tokens + row i-1's completion
tokens, as TRL concatenates them), so it goes through the same template as the real rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.schema import DataConfig, KTOConfig
from tunesmith.data.pipeline import SplitStats, split_off
from tunesmith.data.preference import response_example
from tunesmith.data.readers import Row, read_rows
from tunesmith.data.templates import IGNORE, Encoded, Encoder, check_encoded, raise_on_failures
from tunesmith.errors import DataError
from tunesmith.io import file_sha256

# True == 1 and False == 0 as keys, so 1/0 are read too
LABELS = {True: True, False: False, "desirable": True, "undesirable": False, "true": True,
          "false": False}


@dataclass
class RatedEncoded:
    example: Encoded  # the prompt with its own completion
    mismatched: Encoded  # the prompt with another row's completion (the KL estimate)
    desirable: bool
    where: str

    def __len__(self) -> int:
        return max(len(self.example.input_ids), len(self.mismatched.input_ids))


@dataclass
class RatedData:
    train: list[RatedEncoded]
    validation: list[RatedEncoded]
    stats: dict[str, SplitStats] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Hash of every token id, label and rating of both splits (keys the reference
        cache)."""
        h = hashlib.sha256()
        for split in (self.train, self.validation):
            h.update(b"|split|")
            for r in split:
                for enc in (r.example, r.mismatched):
                    h.update(repr((enc.input_ids, enc.labels, r.desirable)).encode())
        return h.hexdigest()[:24]


def read_label(value: Any, where: str, name: str) -> bool:
    """The rating of one row: desirable (True) or undesirable (False)."""
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, (bool, int, str)) and key in LABELS:
        return LABELS[key]
    raise DataError("the rating is not desirable or undesirable", where=f"{where} field {name}",
                    got=value, fix='use true/false, 1/0, or "desirable"/"undesirable"')


def to_rated(row: Row, kcfg: KTOConfig, system_prompt: str | None) -> tuple[Any, bool]:
    """(the Example of one record, whether it is desirable)."""
    names = (kcfg.prompt_field, kcfg.completion_field, kcfg.label_field)
    missing = [k for k in names if k not in row.data]
    if missing:
        raise DataError(f"rated record is missing the field `{missing[0]}`", where=row.where,
                        got=sorted(row.data), fix=f"give every record `{'`, `'.join(names)}` "
                        "(names set by kto.prompt_field/completion_field/label_field)")
    d = row.data
    ex = response_example(d[names[0]], d[names[1]], row.where, names[:2], system_prompt)
    return ex, read_label(d[names[2]], row.where, names[2])


def _prompt_length(enc: Encoded) -> int:
    """Tokens before the first trained one: the prompt (and template header) of a row."""
    return next(i for i, t in enumerate(enc.labels) if t != IGNORE)


def with_mismatches(rows: list[tuple[Encoded, bool, str]], encoder: Encoder
                    ) -> list[RatedEncoded]:
    """Pair every row with the completion of the previous row (cyclically)."""
    out = []
    for i, (enc, desirable, where) in enumerate(rows):
        other = rows[i - 1][0]
        p, q = _prompt_length(enc), _prompt_length(other)
        mixed = Encoded(enc.input_ids[:p] + other.input_ids[q:],
                        [IGNORE] * p + other.labels[q:], where)
        out.append(RatedEncoded(enc, encoder.fit(mixed) or enc, desirable, where))
    return out


def encode_rated_file(path: str, kcfg: KTOConfig, data: DataConfig, encoder: Encoder,
                      limit: int | None = None) -> tuple[list[tuple[Encoded, bool, str]],
                                                         SplitStats]:
    """Tokenize every rated row of a file; rows whose prompt fills ``max_length`` are
    dropped (counted)."""
    stats = SplitStats(source=path, sha256=file_sha256(path) if Path(path).is_file() else "")
    rows = read_rows(path, limit=limit)
    stats.rows, stats.format = len(rows), "kto"
    rated, bad = [], []
    for row in rows:
        try:
            rated.append(to_rated(row, kcfg, data.system_prompt))
        except DataError as exc:
            bad.append(exc)
    if bad:
        first = bad[0]
        raise DataError(f"{len(bad)} of {len(rows)} rated records are invalid; the first: "
                        f"{first.what}", where=first.where, got=first.got, fix=first.fix)
    encoded = [encoder.encode(ex) for ex, _ in rated]
    raise_on_failures(check_encoded(encoded, encoder), path)
    kept = []
    for enc, (ex, desirable) in zip(encoded, rated):
        fitted = encoder.fit(enc)
        if fitted is None:
            stats.dropped_too_long += 1
            continue
        stats.truncated += int(fitted.truncated)
        trained = sum(1 for t in fitted.labels if t != IGNORE)
        stats.trained_tokens += trained
        stats.masked_tokens += len(fitted.labels) - trained
        kept.append((fitted, desirable, ex.where))
    stats.kept = len(kept)
    if not kept:
        raise DataError("no rated row is left after applying data.max_length", where=path,
                        got=f"{stats.dropped_too_long} rows too long",
                        fix="raise data.max_length or shorten the prompts")
    return kept, stats


def prepare_rated(data: DataConfig, kcfg: KTOConfig, tokenizer: Any, seed: int = 42
                  ) -> RatedData:
    """Tokenized train and validation rows (``data.validation`` or ``data.val_split``)."""
    if not data.train:
        raise DataError("no training data given", where="data.train",
                        fix="set data.train: path/to/ratings.jsonl (prompt/completion/label), "
                        "e.g. from `tunesmith feedback export --format kto`")
    encoder = Encoder(tokenizer, data.max_length, False, data.truncation)
    train, tstats = encode_rated_file(data.train, kcfg, data, encoder, data.max_examples)
    stats = {"train": tstats}
    val: list[tuple[Encoded, bool, str]] = []
    if data.validation:
        val, stats["validation"] = encode_rated_file(data.validation, kcfg, data, encoder)
    elif data.val_split > 0:
        train, val = split_off(train, data.val_split, seed)
    if len(train) < 2:
        raise DataError("KTO needs at least two training rows (its KL estimate pairs each "
                        "prompt with another row's completion)", where=data.train,
                        got=f"{len(train)} row", fix="add rated rows")
    return RatedData(with_mismatches(train, encoder), with_mismatches(val, encoder), stats)
