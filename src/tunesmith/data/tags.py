"""Tag schemes of word-level entity tags: IOB1, IOB2 (BIO) and IOBES, and the spans they mean.

Models are trained on IOB2 labels whatever the data's scheme (one label space, one decoder),
so everything arriving here is converted to IOB2 first:

- **IOB1** (CoNLL-2003's original files): ``I-X`` opens an entity unless it continues one of
  the same type; ``B-X`` only separates two adjacent entities of the same type. Conversion:
  an ``I-X`` that does not follow ``B-X``/``I-X`` becomes ``B-X``. Nothing in IOB1 is invalid.
- **IOB2**: every entity opens with ``B-X``. An ``I-X`` that does not follow ``B-X``/``I-X``
  is an error of the data (seqeval's strict mode silently drops it); it is counted and either
  repaired to ``B-X`` or reported with its line (``token_classification.invalid_tags``).
- **IOBES**: ``S-X`` single, ``B-X I-X* E-X`` longer; ``S``→``B``, ``E``→``I``. An ``I``/``E``
  that does not continue an entity is invalid the same way; an entity left open (``B``
  without ``E``) is accepted as it stands (its extent is unambiguous).

:func:`iob2_spans` decodes IOB2 exactly as ``seqeval``'s strict mode with ``scheme=IOB2``:
an entity is ``B-X`` followed by any run of ``I-X``; a stray ``I-X`` is no entity. The
metrics (``metrics/entities.py``), prediction and analysis all read spans through it, so
"an entity" means one thing everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SCHEMES = ("iob2", "iob1", "iobes")
OUTSIDE = "O"


@dataclass(frozen=True)
class Span:
    """An entity over words ``[start, end)`` of one sentence."""

    type: str
    start: int
    end: int


def split_tag(tag: str) -> tuple[str, str] | None:
    """``"B-PER"`` → ``("B", "PER")``, ``"O"`` → ``("O", "")``; None for a malformed tag."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIES" and tag[2:].strip():
        return tag[0], tag[2:]
    return None


def entity_types(tags: Iterable[str]) -> list[str]:
    """Sorted entity types named by well-formed tags."""
    out = set()
    for t in tags:
        parts = split_tag(t)
        if parts is not None and parts[1]:
            out.add(parts[1])
    return sorted(out)


def iob2_labels(types: Sequence[str]) -> list[str]:
    """The model's label list for entity ``types``: ``O``, then ``B-X``, ``I-X`` per type."""
    return [OUTSIDE] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def detect_scheme(sequences: Iterable[Sequence[str]]) -> str:
    """``iobes`` when any ``E-``/``S-`` tag occurs, ``iob1`` when an ``I-X`` opens an entity
    and ``B-`` is only ever used between two entities of one type, else ``iob2``."""
    opens_with_i = b_elsewhere = False
    for tags in sequences:
        prev = (OUTSIDE, "")
        for tag in tags:
            parts = split_tag(tag)
            if parts is None:
                continue
            if parts[0] in "ES":
                return "iobes"
            if parts[0] == "I" and (prev[0] == OUTSIDE or prev[1] != parts[1]):
                opens_with_i = True
            if parts[0] == "B" and not (prev[0] in "BI" and prev[1] == parts[1]):
                b_elsewhere = True
            prev = parts
    return "iob1" if opens_with_i and not b_elsewhere else "iob2"


@dataclass
class Conversion:
    """One sentence in IOB2, and what conversion found: invalid tags (their word indices)
    and malformed ones (not ``O`` nor ``P-TYPE``)."""

    tags: list[str]
    invalid: list[int]
    malformed: list[int]


def to_iob2(tags: Sequence[str], scheme: str) -> Conversion:
    """``tags`` of ``scheme`` as IOB2; invalid continuations become ``B-X`` (and are listed).
    Malformed tags are listed and left as they are (the caller reports them)."""
    out: list[str] = []
    invalid: list[int] = []
    malformed: list[int] = []
    prev = (OUTSIDE, "")
    for i, tag in enumerate(tags):
        parts = split_tag(tag)
        if parts is None or (scheme != "iobes" and parts[0] in "ES"):
            malformed.append(i)
            out.append(tag)
            prev = (OUTSIDE, "")
            continue
        prefix, kind = parts
        continues = prev[0] in "BI" and prev[1] == kind
        if prefix == OUTSIDE:
            out.append(OUTSIDE)
        elif prefix in "BS":
            out.append(f"B-{kind}")
        elif continues:  # I or E that continues the open entity
            out.append(f"I-{kind}")
        else:
            if scheme != "iob1":
                invalid.append(i)
            out.append(f"B-{kind}")
        # an E or S closes its entity: what follows cannot continue it
        prev = (OUTSIDE, "") if prefix in "ES" else (prefix, kind)
    return Conversion(out, invalid, malformed)


def iob2_spans(tags: Sequence[str]) -> list[Span]:
    """Entities of an IOB2 sequence, as seqeval's strict IOB2 mode reads them."""
    spans: list[Span] = []
    i, n = 0, len(tags)
    while i < n:
        parts = split_tag(tags[i])
        if parts is not None and parts[0] == "B":
            j = i + 1
            while j < n and tags[j] == f"I-{parts[1]}":
                j += 1
            spans.append(Span(parts[1], i, j))
            i = j
        else:
            i += 1
    return spans


def spans_to_iob2(spans: Iterable[Span], length: int) -> list[str]:
    """The IOB2 tags of non-overlapping ``spans`` over ``length`` words."""
    tags = [OUTSIDE] * length
    for s in spans:
        tags[s.start] = f"B-{s.type}"
        for k in range(s.start + 1, s.end):
            tags[k] = f"I-{s.type}"
    return tags


def iob2_to_iobes(tags: Sequence[str]) -> list[str]:
    """IOB2 written as IOBES (for export to tools that want it)."""
    out = [OUTSIDE] * len(tags)
    for s in iob2_spans(tags):
        if s.end - s.start == 1:
            out[s.start] = f"S-{s.type}"
            continue
        out[s.start] = f"B-{s.type}"
        for k in range(s.start + 1, s.end - 1):
            out[k] = f"I-{s.type}"
        out[s.end - 1] = f"E-{s.type}"
    return out
