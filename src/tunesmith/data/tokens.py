"""Token-classification (NER) data: read word/tag rows, check them, convert the tag scheme,
build the label list and align tags to sub-tokens.

    rows (readers) → sentences (words, tags as names) → scheme → IOB2 (invalid tags repaired
    or reported) → label list (O, B-X, I-X per type) → sub-tokens (data/word_align.py)

Rows carry a list of words and one tag per word (``token_classification.tokens_field`` /
``tags_field``): tag names, or integer ids into ``token_classification.labels`` (the shape a
hub dataset's ``ner_tags`` has). Every problem names the file and line, the field and the
value, with counts: a tag list whose length differs from the word list, a tag outside the
label set, a malformed tag, an invalid continuation under ``invalid_tags: error``, an entity
type of the validation data the training data never shows.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.schema import DataConfig, TokenClassificationConfig
from tunesmith.data.readers import Row, read_rows
from tunesmith.data.tags import detect_scheme, iob2_labels, iob2_spans, split_tag, to_iob2
from tunesmith.data.templates import too_long_fix
from tunesmith.data.word_align import IGNORE, align, check_fast, join_words, subtoken_labels
from tunesmith.errors import DataError
from tunesmith.io import file_sha256


@dataclass
class Sentence:
    """One row: its words and their IOB2 tags."""

    words: list[str]
    tags: list[str]
    where: str


@dataclass
class TokEncoded:
    """One sentence as model inputs: sub-token ids and labels (``IGNORE`` where masked),
    each word's first sub-token, and the gold tag id per word (for word-level metrics)."""

    input_ids: list[int]
    labels: list[int]
    first_token: list[int]
    word_labels: list[int]
    where: str
    truncated: bool = False


@dataclass
class TokSplitStats:
    source: str
    rows: int = 0
    kept: int = 0
    scheme: str = ""
    repaired_tags: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    entities: dict[str, int] = field(default_factory=dict)
    sha256: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TokData:
    train: list[TokEncoded]
    validation: list[TokEncoded]
    labels: list[str]  # O, then B-X / I-X per entity type
    types: list[str]
    stats: dict[str, TokSplitStats]
    warnings: list[str] = field(default_factory=list)
    scheme: str = "iob2"


TOKEN_FIXES = {
    "missing words": "every row needs a list of words in the field named by "
                     "token_classification.tokens_field",
    "words not a list of strings": "store the words as a JSON list of strings",
    "missing tags": "every row needs one tag per word in the field named by "
                    "token_classification.tags_field",
    "tag count differs from word count": "give exactly one tag per word (check for a "
                                         "tokenized sentence whose tags were not re-split)",
    "tag id outside the label list": "integer tags index token_classification.labels: list "
                                     "every tag name there, in id order",
    "integer tags without a label list": "integer tags need token_classification.labels (the "
                                         "tag names in id order, e.g. the hub dataset's "
                                         "ner_tags feature names)",
    "tag not in the label list": "use a tag listed in token_classification.labels, or remove "
                                 "that setting to take the types from the data",
    "malformed tag": "tags are O or PREFIX-TYPE with PREFIX one of B, I (IOB1/IOB2) or also "
                     "E, S (IOBES); set token_classification.scheme if it was detected wrong",
    "invalid continuation": "an I- tag must continue an entity of its type; fix the tag, or set "
                            "token_classification.invalid_tags: repair to read it as B-",
}


# -- reading ----------------------------------------------------------------------------------
def tag_names(row: Row, tcfg: TokenClassificationConfig, problems: list[tuple[str, str, Any]]
              ) -> tuple[list[str], list[str]] | None:
    """The row's words and tag names, or None (with a problem recorded)."""
    d = row.data
    words, tags = d.get(tcfg.tokens_field), d.get(tcfg.tags_field)
    wf, tf = f"{row.where} field `{tcfg.tokens_field}`", f"{row.where} field `{tcfg.tags_field}`"
    if words is None:
        problems.append(("missing words", wf, sorted(d)))
        return None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words) or not words:
        problems.append(("words not a list of strings", wf, words))
        return None
    if not isinstance(tags, list):
        problems.append(("missing tags", tf, tags if tcfg.tags_field in d else sorted(d)))
        return None
    if len(tags) != len(words):
        problems.append(("tag count differs from word count", tf,
                         f"{len(tags)} tags for {len(words)} words"))
        return None
    names: list[str] = []
    labels = tcfg.labels
    for t in tags:
        if isinstance(t, bool) or not isinstance(t, (int, str)):
            problems.append(("malformed tag", tf, t))
            return None
        if isinstance(t, int):
            if labels is None:
                problems.append(("integer tags without a label list", tf, t))
                return None
            if not 0 <= t < len(labels):
                problems.append(("tag id outside the label list", tf, t))
                return None
            t = labels[t]
        elif labels is not None and t not in labels:
            problems.append(("tag not in the label list", tf, t))
            return None
        names.append(t)
    return words, names


def _raise(problems: list[tuple[str, str, Any]], total: int, path: str) -> None:
    if not problems:
        return
    counts = Counter(p[0] for p in problems)
    kind, where, got = problems[0]
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    raise DataError(f"{len(problems)} of {total} rows in {path} are unusable ({summary}); "
                    f"the first: {kind}", where=where, got=got, fix=TOKEN_FIXES[kind])


def read_sentences(path: str, tcfg: TokenClassificationConfig, scheme: str | None = None,
                   limit: int | None = None) -> tuple[list[Sentence], TokSplitStats]:
    """Read ``path`` into IOB2 sentences; ``scheme`` None detects it (``tcfg.scheme: auto``).
    One DataError for all unusable rows; repaired tags are counted in the stats."""
    rows = read_rows(path, limit=limit)
    stats = TokSplitStats(source=str(path), rows=len(rows))
    if Path(path).is_file():
        stats.sha256 = file_sha256(path)
    problems: list[tuple[str, str, Any]] = []
    raw = [(row, tag_names(row, tcfg, problems)) for row in rows]
    _raise(problems, len(rows), path)
    scheme = scheme or (tcfg.scheme if tcfg.scheme != "auto"
                        else detect_scheme(n[1] for _, n in raw if n))
    stats.scheme = scheme
    out: list[Sentence] = []
    for row, pair in raw:
        assert pair is not None
        words, names = pair
        conv = to_iob2(names, scheme)
        tf = f"{row.where} field `{tcfg.tags_field}`"
        if conv.malformed:
            problems.append(("malformed tag", tf, names[conv.malformed[0]]))
        elif conv.invalid and tcfg.invalid_tags == "error":
            i = conv.invalid[0]
            problems.append(("invalid continuation", tf,
                             f"{names[i]!r} at word {i} ({words[i]!r}) after "
                             f"{names[i - 1] if i else 'the sentence start'!r}"))
        stats.repaired_tags += len(conv.invalid)
        out.append(Sentence(words, conv.tags, row.where))
    _raise(problems, len(rows), path)
    return out, stats


# -- labels -----------------------------------------------------------------------------------
def entity_type_list(train: Sequence[Sentence], tcfg: TokenClassificationConfig) -> list[str]:
    """Entity types: those of ``token_classification.labels`` in their order, else the
    training data's, sorted."""
    if tcfg.labels is not None:
        seen: dict[str, None] = {}
        for t in tcfg.labels:
            parts = split_tag(t)
            if parts is not None and parts[1]:
                seen.setdefault(parts[1])
        return list(seen)
    return sorted({t.split("-", 1)[1] for s in train for t in s.tags if t != "O"})


def check_types(sentences: Sequence[Sentence], types: Sequence[str], split: str,
                tcfg: TokenClassificationConfig) -> None:
    """Raise when ``sentences`` use an entity type outside ``types``."""
    known = set(types)
    unknown: Counter[str] = Counter()
    first = None
    for s in sentences:
        for t in s.tags:
            kind = t[2:] if t != "O" else ""
            if kind and kind not in known:
                unknown[kind] += 1
                first = first or s
    if first is not None:
        raise DataError(f"the {split} data has entity types the training data never shows "
                        f"({', '.join(f'{k!r} ×{c}' for k, c in unknown.most_common(10))})",
                        where=f"{first.where} field `{tcfg.tags_field}`", got=first.tags,
                        fix="add training sentences with those types, or list every tag in "
                        "token_classification.labels")


def entity_counts(sentences: Sequence[Sentence]) -> dict[str, int]:
    counts: Counter[str] = Counter(sp.type for s in sentences for sp in iob2_spans(s.tags))
    return dict(sorted(counts.items()))


# -- tokenizing -------------------------------------------------------------------------------
def encode_sentences(sentences: Sequence[Sentence], tokenizer: Any, labels: Sequence[str],
                     tcfg: TokenClassificationConfig, truncation: str, stats: TokSplitStats,
                     batch: int = 1024) -> list[TokEncoded]:
    """Sub-token ids and labels; sentences over ``max_length`` are cut or dropped."""
    label2id = {n: i for i, n in enumerate(labels)}
    cont = [label2id.get("I-" + n[2:], i) if n.startswith("B-") else i
            for i, n in enumerate(labels)]
    out: list[TokEncoded] = []
    for start in range(0, len(sentences), batch):
        chunk = sentences[start:start + batch]
        joined = [join_words(s.words) for s in chunk]
        for s, a in zip(chunk, align(tokenizer, [j[0] for j in joined], [j[1] for j in joined],
                                     tcfg.max_length)):
            if a.truncated:
                if truncation == "drop":
                    stats.dropped_too_long += 1
                    continue
                stats.truncated += 1
            word_labels = [label2id[t] for t in s.tags]
            out.append(TokEncoded(a.input_ids, subtoken_labels(
                a, word_labels, cont, tcfg.subword_labels == "all"), a.first_token,
                word_labels, s.where, a.truncated))
    stats.kept = len(out)
    stats.entities = entity_counts(sentences)
    return out


def label_counts(encoded: Sequence[TokEncoded], n_labels: int) -> list[int]:
    """How often each label is a training target (masked sub-tokens not counted)."""
    counts = [0] * n_labels
    for e in encoded:
        for lab in e.labels:
            if lab != IGNORE:
                counts[lab] += 1
    return counts


def prepare_token_classification(data: DataConfig, tcfg: TokenClassificationConfig,
                                 tokenizer: Any, seed: int = 42) -> TokData:
    """Read, check, convert and tokenize the training and validation sets."""
    check_fast(tokenizer, "token classification")
    if not data.train:
        raise DataError("no training data given", where="data.train",
                        fix="set data.train: path/to/train.jsonl (or data.train=... on the "
                        "command line)")
    train, tstats = read_sentences(data.train, tcfg, limit=data.max_examples)
    scheme = tstats.scheme
    val: list[Sentence] = []
    vstats: TokSplitStats | None = None
    if data.validation:
        val, vstats = read_sentences(data.validation, tcfg, scheme=scheme)
    elif data.val_split > 0:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        held = set(order[:max(1, round(len(train) * data.val_split))])
        if len(held) >= len(train):
            raise DataError("data.val_split leaves no training examples",
                            where="data.val_split", got=data.val_split,
                            fix="use a smaller fraction or more data")
        val = [s for i, s in enumerate(train) if i in held]
        train = [s for i, s in enumerate(train) if i not in held]
        vstats = TokSplitStats(source=f"{data.train} (val_split {data.val_split})",
                               rows=len(val), scheme=scheme)
    types = entity_type_list(train, tcfg)
    if not types:
        raise DataError("the training data has no entity", where=f"{data.train} field "
                        f"`{tcfg.tags_field}`", got="every tag is O",
                        fix="check token_classification.tags_field names the tag field")
    check_types(val, types, "validation", tcfg)
    labels = iob2_labels(types)
    warnings: list[str] = []
    enc_train = encode_sentences(train, tokenizer, labels, tcfg, data.truncation, tstats)
    stats = {"train": tstats}
    enc_val: list[TokEncoded] = []
    if vstats is not None:
        enc_val = encode_sentences(val, tokenizer, labels, tcfg, data.truncation, vstats)
        stats["validation"] = vstats
    if not enc_train:
        raise DataError("no training sentences are left after token_classification.max_length",
                        where=data.train, got=f"{tstats.dropped_too_long} too long",
                        fix=too_long_fix("token_classification.max_length", tcfg.max_length,
                                         data.truncation))
    for name, st in stats.items():
        if st.repaired_tags:
            warnings.append(f"{st.repaired_tags} {name} tags were I- without their B- (scheme "
                            f"{st.scheme}) and were read as B- ({st.source})")
        if st.dropped_too_long:
            warnings.append(f"{st.dropped_too_long} {name} sentences longer than "
                            f"{tcfg.max_length} tokens were dropped")
        elif st.truncated:
            warnings.append(f"{st.truncated} {name} sentences were cut to {tcfg.max_length} "
                            "tokens (their later words count as O)")
    return TokData(enc_train, enc_val, labels, types, stats, warnings, scheme)
