"""Classification data: read text/label rows, build the label map, check, tokenize.

    rows (readers) → records (text, optional pair, label ids) → checks → token ids

Every problem names the file and line, the field and the value, with counts: rows without
a label, labels of a type that cannot be a class, empty texts (dropped, with a warning),
validation labels the training data never shows, a training set with a single class. Label
names come from ``classification.labels`` or from the training data and end up in the saved
model's ``id2label``.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.schema import ClassificationConfig, DataConfig
from tunesmith.data.readers import Row, read_rows
from tunesmith.data.templates import too_long_fix
from tunesmith.errors import ConfigError, DataError
from tunesmith.io import file_sha256

IMBALANCE_RATIO = 10.0  # warn when the largest class is this many times the smallest


@dataclass
class LabelSpace:
    """Class names in id order, and whether examples carry several labels."""

    names: list[str]
    multi_label: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


@dataclass
class Record:
    """One row as text(s) and label ids (one id, or a list of ids for multi-label)."""

    text: str
    pair: str | None
    raw_label: Any
    where: str
    label: int | list[int] | None = None


@dataclass
class ClsEncoded:
    input_ids: list[int]
    label: int | list[int]  # class id, or a multi-hot list for multi-label
    where: str
    token_type_ids: list[int] | None = None
    truncated: bool = False


@dataclass
class ClsSplitStats:
    source: str
    rows: int = 0
    kept: int = 0
    empty_text: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    sha256: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ClsData:
    train: list[ClsEncoded]
    validation: list[ClsEncoded]
    labels: LabelSpace
    stats: dict[str, ClsSplitStats]
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Problem:
    kind: str
    where: str
    got: Any


_FIXES = {
    "missing label": "give every row a label (or drop the unlabeled rows); the label field is "
                     "classification.label_field",
    "bad label": "labels are class names (strings), integer ids or, with "
                 "classification.multi_label, lists of those",
    "missing text": "every row needs the text field named by classification.text_field",
    "text not a string": "store the text as a string",
    "missing pair text": "every row needs the field named by classification.text_pair_field",
    "unknown label": "use a label listed in classification.labels (integers index that list), "
                     "or remove classification.labels to take the classes from the data",
}


# -- reading ---------------------------------------------------------------------------------
def read_records(path: str, ccfg: ClassificationConfig, limit: int | None = None
                 ) -> tuple[list[Record], ClsSplitStats]:
    """Read rows into records (labels still raw); raise one DataError for unusable rows."""
    rows = read_rows(path, limit=limit)
    stats = ClsSplitStats(source=str(path), rows=len(rows))
    if Path(path).is_file():
        stats.sha256 = file_sha256(path)
    records, problems = [], []
    for row in rows:
        rec = _to_record(row, ccfg, problems)
        if rec is None:
            continue
        if not rec.text.strip() or (ccfg.text_pair_field and not (rec.pair or "").strip()):
            stats.empty_text += 1
            continue
        records.append(rec)
    _raise_problems(problems, len(rows), path, ccfg)
    if not records:
        raise DataError("every row has an empty text", where=f"{path} (field "
                        f"`{ccfg.text_field}`)", got=f"{stats.empty_text} empty of {len(rows)}",
                        fix="check classification.text_field names the field holding the text")
    return records, stats


def _to_record(row: Row, ccfg: ClassificationConfig, problems: list[_Problem]) -> Record | None:
    d = row.data
    ok = True
    text = d.get(ccfg.text_field)
    if ccfg.text_field not in d or text is None:
        problems.append(_Problem("missing text", f"{row.where} field `{ccfg.text_field}`",
                                 sorted(d)))
        ok = False
    elif not isinstance(text, str):
        problems.append(_Problem("text not a string", f"{row.where} field `{ccfg.text_field}`",
                                 text))
        ok = False
    pair = None
    if ccfg.text_pair_field:
        pair = d.get(ccfg.text_pair_field)
        if pair is None or not isinstance(pair, str):
            problems.append(_Problem("missing pair text",
                                     f"{row.where} field `{ccfg.text_pair_field}`", pair))
            ok = False
    raw = d.get(ccfg.label_field)
    if _is_missing(raw):
        problems.append(_Problem("missing label", f"{row.where} field `{ccfg.label_field}`",
                                 raw if ccfg.label_field in d else "(no such field)"))
        ok = False
    elif label_values(raw, ccfg) is None:
        problems.append(_Problem("bad label", f"{row.where} field `{ccfg.label_field}`", raw))
        ok = False
    if not ok:
        return None
    return Record(text, pair, raw, row.where)


def _is_missing(raw: Any) -> bool:
    if raw is None:
        return True
    if isinstance(raw, float) and math.isnan(raw):
        return True
    return isinstance(raw, str) and not raw.strip()


def _scalar(value: Any) -> int | str | None:
    """A label value as an int id or a class-name string; None when it cannot be a class."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def label_values(raw: Any, ccfg: ClassificationConfig) -> list[int | str] | None:
    """The label(s) of one row as scalars, or None if malformed."""
    if ccfg.multi_label:
        if isinstance(raw, str) and ccfg.label_separator:
            items: list[Any] = [p for p in raw.split(ccfg.label_separator) if p.strip()]
        elif isinstance(raw, (list, tuple)):
            items = list(raw)
        else:
            items = [raw]
        values = [_scalar(v) for v in items]
        return None if any(v is None for v in values) else values  # type: ignore[return-value]
    if isinstance(raw, (list, tuple, dict)):
        return None
    v = _scalar(raw)
    return None if v is None else [v]


def _raise_problems(problems: list[_Problem], total: int, path: str,
                    ccfg: ClassificationConfig) -> None:
    if not problems:
        return
    counts = Counter(p.kind for p in problems)
    first = problems[0]
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    fix = _FIXES[first.kind]
    if first.kind == "bad label" and not ccfg.multi_label and isinstance(first.got, list):
        fix = "a list of labels needs classification.multi_label: true"
    raise DataError(f"{len(problems)} of {total} rows in {path} are unusable ({summary}); "
                    f"the first: {first.kind}", where=first.where, got=first.got, fix=fix)


# -- labels ----------------------------------------------------------------------------------
def build_label_space(train: Sequence[Record], ccfg: ClassificationConfig) -> LabelSpace:
    """Class names from the config, else from the training labels."""
    if ccfg.labels is not None:
        names = [str(n) for n in ccfg.labels]
        dupes = [n for n, c in Counter(names).items() if c > 1]
        if dupes or len(names) < (1 if ccfg.multi_label else 2):
            raise ConfigError("classification.labels must list distinct class names"
                              + ("" if ccfg.multi_label else ", at least two"),
                              where="classification.labels", got=ccfg.labels,
                              fix="list each class once, in id order")
        return LabelSpace(names, ccfg.multi_label)
    values = {v for r in train for v in label_values(r.raw_label, ccfg) or []}
    ints = sorted(v for v in values if isinstance(v, int))
    strs = sorted(v for v in values if isinstance(v, str))
    if ints and strs:
        # "1" and 1 in one column: treat integer-looking strings (CSV) as integers
        if all(s.lstrip("-").isdigit() for s in strs):
            ints = sorted(set(ints) | {int(s) for s in strs})
            strs = []
        else:
            first = next(r for r in train if any(
                isinstance(v, str) and not v.lstrip("-").isdigit()
                for v in label_values(r.raw_label, ccfg) or []))
            raise DataError(f"the training labels mix integers and names (integers "
                            f"{ints[:5]}, names {strs[:5]}); the first name is here",
                            where=f"{first.where} field `{ccfg.label_field}`",
                            got=first.raw_label,
                            fix="use one kind (e.g. 1 rather than \"1.0\"), or list the class "
                            "names in classification.labels (integers then index that list)")
    if strs and all(s.lstrip("-").isdigit() for s in strs):
        ints, strs = sorted({int(s) for s in strs}), []
    names = [str(i) for i in ints] if ints else strs
    return LabelSpace(names, ccfg.multi_label)


def assign_labels(records: Sequence[Record], space: LabelSpace, ccfg: ClassificationConfig,
                  split: str) -> None:
    """Map raw labels to ids in place; labels outside the space raise one DataError."""
    by_name = space.label2id
    from_config = ccfg.labels is not None
    unknown: Counter[str] = Counter()
    first: Record | None = None
    n_rows = 0
    for rec in records:
        ids, bad = [], False
        for v in label_values(rec.raw_label, ccfg) or []:
            i = _to_id(v, by_name, space, from_config)
            if i is None:
                unknown[str(v)] += 1
                bad = True
            else:
                ids.append(i)
        if bad:
            n_rows += 1
            first = first or rec
        rec.label = sorted(set(ids)) if space.multi_label else (ids[0] if ids else None)
    if unknown and first is not None:
        shown = ", ".join(f"{k!r} ×{c}" for k, c in unknown.most_common(10))
        if from_config:
            what = f"{n_rows} {split} rows have labels not in classification.labels ({shown})"
            fix = _FIXES["unknown label"]
        else:
            what = (f"{n_rows} {split} rows have labels the training data never shows "
                    f"({shown})")
            fix = ("add training examples of those classes, list every class in "
                   "classification.labels, or remove those rows")
        raise DataError(what, where=f"{first.where} field `{ccfg.label_field}`",
                        got=first.raw_label, fix=fix)


def _to_id(v: int | str, by_name: dict[str, int], space: LabelSpace, from_config: bool
           ) -> int | None:
    if isinstance(v, str) and v in by_name:
        return by_name[v]
    if isinstance(v, str) and v.lstrip("-").isdigit():
        v = int(v)
    if isinstance(v, int):
        if from_config:
            return v if 0 <= v < space.num_labels else None
        return by_name.get(str(v))
    return None


def class_counts(records: Sequence[Record] | Sequence[ClsEncoded], space: LabelSpace
                 ) -> list[int]:
    counts = [0] * space.num_labels
    for r in records:
        lab = r.label
        if isinstance(lab, int):
            counts[lab] += 1
        elif lab is not None:
            if isinstance(r, ClsEncoded):
                for i, on in enumerate(lab):
                    counts[i] += int(on)
            else:
                for i in lab:
                    counts[i] += 1
    return counts


def check_training_labels(records: Sequence[Record], space: LabelSpace,
                          ccfg: ClassificationConfig, source: str) -> list[str]:
    """Raise on a single-class training set; return warnings (unseen classes, imbalance)."""
    counts = class_counts(records, space)
    warnings = []
    seen = [n for n, c in zip(space.names, counts) if c > 0]
    if not space.multi_label and len(seen) < 2:
        raise DataError("the training data has a single class", where=f"{source} field "
                        f"`{ccfg.label_field}`", got={n: c for n, c in zip(space.names, counts)
                                                      if c},
                        fix="a classifier needs examples of at least two classes; check "
                        "classification.label_field and the file")
    if space.multi_label and not seen:
        raise DataError("no training row carries any label", where=f"{source} field "
                        f"`{ccfg.label_field}`", got="0 positive labels",
                        fix="check classification.label_field and the file")
    never = [n for n, c in zip(space.names, counts) if c == 0]
    if never:
        warnings.append(f"{len(never)} of {space.num_labels} classes have no training example "
                        f"({', '.join(never[:10])}); the model cannot learn them")
    present = [c for c in counts if c > 0]
    if (len(present) >= 2 and max(present) >= IMBALANCE_RATIO * min(present)
            and ccfg.class_weights == "none" and not ccfg.balanced_sampling):
        small = space.names[counts.index(min(present))]
        big = space.names[counts.index(max(present))]
        warnings.append(f"imbalanced classes: {big!r} has {max(present)} training examples, "
                        f"{small!r} {min(present)}; consider classification.class_weights: "
                        "balanced or classification.balanced_sampling: true")
    return warnings


# -- tokenizing ------------------------------------------------------------------------------
def encode_records(records: Sequence[Record], tokenizer: Any, space: LabelSpace,
                   max_length: int, truncation: str, stats: ClsSplitStats,
                   batch: int = 1024) -> list[ClsEncoded]:
    """Tokenize with the tokenizer's special tokens; cut or drop texts over ``max_length``."""
    out: list[ClsEncoded] = []
    use_pairs = any(r.pair is not None for r in records)
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        texts = [r.text for r in chunk]
        pairs = [r.pair or "" for r in chunk] if use_pairs else None
        full = tokenizer(texts, pairs, truncation=False, add_special_tokens=True,
                         return_token_type_ids=use_pairs, verbose=False)
        long_idx = [i for i, ids in enumerate(full["input_ids"]) if len(ids) > max_length]
        cut: dict[int, dict[str, list[int]]] = {}
        if long_idx and truncation == "truncate":
            enc = tokenizer([texts[i] for i in long_idx],
                            [pairs[i] for i in long_idx] if pairs else None,
                            truncation=True, max_length=max_length, add_special_tokens=True,
                            return_token_type_ids=use_pairs, verbose=False)
            for j, i in enumerate(long_idx):
                cut[i] = {k: enc[k][j] for k in enc.keys()}
        long_set = set(long_idx)
        for i, rec in enumerate(chunk):
            fields = {k: full[k][i] for k in full.keys()}
            if i in long_set:
                if truncation == "drop":
                    stats.dropped_too_long += 1
                    continue
                fields = cut[i]
                stats.truncated += 1
            label: int | list[int]
            if space.multi_label:
                hot = [0] * space.num_labels
                for j in rec.label or []:  # type: ignore[union-attr]
                    hot[j] = 1
                label = hot
            else:
                assert isinstance(rec.label, int)
                label = rec.label
            out.append(ClsEncoded(list(fields["input_ids"]), label, rec.where,
                                  list(fields["token_type_ids"]) if use_pairs and
                                  "token_type_ids" in fields else None, i in long_set))
    stats.kept = len(out)
    stats.class_counts = dict(zip(space.names, class_counts(out, space)))
    return out


def stratified_split(records: Sequence[Record], fraction: float, seed: int, multi_label: bool
                     ) -> tuple[list[Record], list[Record]]:
    """Hold out ``fraction`` of each class (random rows for multi-label) for validation."""
    rng = random.Random(seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    held: set[int] = set()
    if multi_label:
        held = set(order[:max(1, round(len(records) * fraction))])
    else:
        by_class: dict[int, list[int]] = {}
        for i in order:
            by_class.setdefault(records[i].label, []).append(i)  # type: ignore[arg-type]
        for idx in by_class.values():
            if len(idx) >= 2:
                held.update(idx[:max(1, round(len(idx) * fraction))])
    if len(held) >= len(records):
        raise DataError("data.val_split leaves no training examples", where="data.val_split",
                        got=fraction, fix="use a smaller fraction or more data")
    train = [r for i, r in enumerate(records) if i not in held]
    val = [r for i, r in enumerate(records) if i in held]
    return train, val


def prepare_classification(data: DataConfig, ccfg: ClassificationConfig, tokenizer: Any,
                           seed: int = 42) -> ClsData:
    """Read, label, check and tokenize the training and validation sets."""
    if not data.train:
        raise DataError("no training data given", where="data.train",
                        fix="set data.train: path/to/train.jsonl (or data.train=... on the "
                        "command line)")
    warnings: list[str] = []
    train_recs, tstats = read_records(data.train, ccfg, limit=data.max_examples)
    space = build_label_space(train_recs, ccfg)
    assign_labels(train_recs, space, ccfg, "training")
    val_recs: list[Record] = []
    vstats: ClsSplitStats | None = None
    if data.validation:
        val_recs, vstats = read_records(data.validation, ccfg)
        assign_labels(val_recs, space, ccfg, "validation")
    elif data.val_split > 0:
        train_recs, val_recs = stratified_split(train_recs, data.val_split, seed,
                                                space.multi_label)
        vstats = ClsSplitStats(source=f"{data.train} (val_split {data.val_split})",
                               rows=len(val_recs))
    warnings += check_training_labels(train_recs, space, ccfg, data.train)
    for name, st in (("training", tstats), ("validation", vstats)):
        if st is not None and st.empty_text:
            warnings.append(f"{st.empty_text} of {st.rows} {name} rows have an empty text and "
                            f"were skipped ({st.source})")
    train = encode_records(train_recs, tokenizer, space, ccfg.max_length, data.truncation,
                           tstats)
    stats = {"train": tstats}
    val: list[ClsEncoded] = []
    if vstats is not None:
        val = encode_records(val_recs, tokenizer, space, ccfg.max_length, data.truncation,
                             vstats)
        stats["validation"] = vstats
    if not train:
        raise DataError("no training examples are left after classification.max_length",
                        where=data.train, got=f"{tstats.dropped_too_long} too long",
                        fix=too_long_fix("classification.max_length", ccfg.max_length,
                                         data.truncation))
    for name, st in stats.items():
        if st.dropped_too_long:
            warnings.append(f"{st.dropped_too_long} {name} texts longer than "
                            f"{ccfg.max_length} tokens were dropped")
        elif st.truncated:
            warnings.append(f"{st.truncated} {name} texts were cut to {ccfg.max_length} tokens")
    return ClsData(train, val, space, stats, warnings)
