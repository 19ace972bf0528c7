"""Words to sub-tokens and back, through character offsets.

One alignment serves training and prediction. A sentence is text plus the character span of
each word: training data (a list of words) is joined with single spaces, raw text for
prediction is cut into words by :func:`words_in_text`. The text is tokenized with offsets
(a fast tokenizer is required) and each sub-token goes to the word its characters overlap.
Going through offsets rather than ``is_split_into_words`` works the same for WordPiece
encoders and byte-level BPE decoders (which would need ``add_prefix_space`` to take
pre-split words), and gives prediction its character offsets into the original text.

Each word is read (its tag predicted, its metric counted) at its *first* sub-token; a word
whose sub-tokens were all cut by ``max_length`` has none (-1) and is predicted ``O``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tunesmith.errors import ModelError

IGNORE = -100  # label of a position left out of the loss (PyTorch's ignore_index)
_PUNCT_EDGES = re.compile(r"^([^\w]*)(.*?)([^\w]*)$", re.S)


@dataclass
class Aligned:
    """One tokenized sentence: ids, and for each word the index of its first sub-token."""

    input_ids: list[int]
    word_of_token: list[int]  # word index per token, -1 for special / space-only tokens
    first_token: list[int]  # per word: its first sub-token, -1 when cut off
    offsets: list[tuple[int, int]]
    truncated: bool


def join_words(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The words joined by single spaces, and each word's character span in that text."""
    spans, pos = [], 0
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    return " ".join(words), spans


def words_in_text(text: str) -> list[tuple[int, int]]:
    """Word spans of raw text, split as CoNLL-style data is: at whitespace, with leading and
    trailing punctuation cut off as words of their own ("(Reuters)," → ``(``, ``Reuters``,
    ``)``, ``,``); inner punctuation stays (``U.S.``'s final dot aside, ``1996-08-22``)."""
    spans: list[tuple[int, int]] = []
    for m in re.finditer(r"\S+", text):
        start = m.start()
        lead, core, trail = _PUNCT_EDGES.match(m.group()).groups()  # type: ignore[union-attr]
        spans.extend((start + i, start + i + 1) for i in range(len(lead)))
        if core:
            spans.append((start + len(lead), start + len(lead) + len(core)))
        base = start + len(lead) + len(core)
        spans.extend((base + i, base + i + 1) for i in range(len(trail)))
    return spans


def check_fast(tokenizer: object, task: str) -> None:
    """Offsets need a fast (Rust) tokenizer: a clear error otherwise."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{task} needs a fast tokenizer (character offsets)",
                         where=type(tokenizer).__name__,
                         fix="use a model whose tokenizer.json is present (every hub model of "
                         "the BERT and Llama families has one)")


def align(tokenizer: object, texts: Sequence[str],
          word_spans: Sequence[Sequence[tuple[int, int]]], max_length: int) -> list[Aligned]:
    """Tokenize ``texts`` (with special tokens, cut at ``max_length``) and map sub-tokens to
    the words given by ``word_spans``."""
    if not texts:
        return []
    full = tokenizer(list(texts), add_special_tokens=True,  # type: ignore[operator]
                     return_offsets_mapping=True, truncation=True, max_length=max_length,
                     verbose=False)
    out = []
    for k, spans in enumerate(word_spans):
        ids = full["input_ids"][k]
        offsets = [tuple(o) for o in full["offset_mapping"][k]]
        word_of = [-1] * len(ids)
        first = [-1] * len(spans)
        w = 0
        for t, (s, e) in enumerate(offsets):
            if e <= s:
                continue  # special token
            while w < len(spans) and spans[w][1] <= s:
                w += 1
            j = w
            while j < len(spans) and spans[j][0] < e:
                if spans[j][1] > s:  # overlaps word j
                    if word_of[t] == -1:
                        word_of[t] = j
                    if first[j] == -1:
                        first[j] = t
                j += 1
        last_end = max((e for s, e in offsets if e > s), default=0)
        truncated = bool(spans) and spans[-1][0] >= last_end
        out.append(Aligned(list(ids), word_of, first, offsets, truncated))  # type: ignore[arg-type]
    return out


def subtoken_labels(a: Aligned, word_labels: Sequence[int], continuation: Sequence[int],
                    all_subtokens: bool) -> list[int]:
    """Training labels per sub-token: the word's label at its first sub-token; the other
    sub-tokens get ``IGNORE`` or, with ``all_subtokens``, ``continuation[label]`` (``I-X``
    for ``B-X``, else the label itself)."""
    labels = [IGNORE] * len(a.input_ids)
    for t, w in enumerate(a.word_of_token):
        if w < 0:
            continue
        if a.first_token[w] == t:
            labels[t] = word_labels[w]
        elif all_subtokens:
            labels[t] = continuation[word_labels[w]]
    return labels
