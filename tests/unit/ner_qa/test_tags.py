"""Tag schemes: detection, conversion to IOB2 (with invalid tags counted), span decoding."""

from __future__ import annotations

from tunesmith.data.tags import (
    Span,
    detect_scheme,
    iob2_labels,
    iob2_spans,
    iob2_to_iobes,
    spans_to_iob2,
    split_tag,
    to_iob2,
)


def test_split_tag() -> None:
    assert split_tag("B-PER") == ("B", "PER") and split_tag("O") == ("O", "")
    assert split_tag("I_creative-work") == ("I", "creative-work")
    assert split_tag("PER") is None and split_tag("X-PER") is None and split_tag("B-") is None


def test_iob1_to_iob2() -> None:
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]
    conv = to_iob2(iob1, "iob1")
    assert conv.tags == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]
    assert conv.invalid == [] and conv.malformed == []  # nothing is invalid in IOB1
    assert detect_scheme([iob1]) == "iob1"


def test_iob2_invalid_continuation_is_counted_and_repaired() -> None:
    conv = to_iob2(["O", "I-PER", "I-PER", "B-LOC", "I-ORG"], "iob2")
    assert conv.tags == ["O", "B-PER", "I-PER", "B-LOC", "B-ORG"]
    assert conv.invalid == [1, 4]
    assert detect_scheme([["B-PER", "I-PER", "O", "I-LOC"]]) == "iob2"


def test_iobes_to_iob2_and_back() -> None:
    iobes = ["S-PER", "O", "B-ORG", "I-ORG", "E-ORG", "B-LOC", "E-LOC", "E-LOC"]
    conv = to_iob2(iobes, "iobes")
    assert conv.tags == ["B-PER", "O", "B-ORG", "I-ORG", "I-ORG", "B-LOC", "I-LOC", "B-LOC"]
    assert conv.invalid == [7]  # an E- after a closed entity
    assert detect_scheme([iobes]) == "iobes"
    assert iob2_to_iobes(["B-PER", "O", "B-ORG", "I-ORG", "I-ORG"]) == \
        ["S-PER", "O", "B-ORG", "I-ORG", "E-ORG"]


def test_malformed_tags_are_listed() -> None:
    conv = to_iob2(["PER", "O", "E-LOC"], "iob2")
    assert conv.malformed == [0, 2]


def test_spans_match_seqeval_strict_reading() -> None:
    tags = ["B-PER", "I-PER", "I-LOC", "B-LOC", "B-LOC", "I-LOC", "O", "I-ORG"]
    assert iob2_spans(tags) == [Span("PER", 0, 2), Span("LOC", 3, 4), Span("LOC", 4, 6)]
    assert spans_to_iob2(iob2_spans(tags), len(tags)) == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "O", "O"]
    assert iob2_labels(["LOC", "PER"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
