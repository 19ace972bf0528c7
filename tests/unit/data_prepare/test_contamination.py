"""Contamination: planted exact and long n-gram overlaps are found, unrelated text is not."""

from __future__ import annotations

from tunesmith.data.prepare.contamination import EvalIndex

EVAL = [
    "Which river flows through the city of Vienna and then on to Budapest?",
    ("Summarise the plot of the novel in which a whale is hunted across the oceans by a "
    "captain consumed by revenge and obsession."),
    "Yes.",
]


def _index(ngram: int = 8) -> EvalIndex:
    index = EvalIndex(ngram=ngram, min_exact_words=3)
    for i, text in enumerate(EVAL):
        index.add([text], f"eval.jsonl:{i + 1}", "eval.jsonl")
    return index


def test_exact_match_after_normalisation_is_found() -> None:
    hits = _index().check_many([[("instruction", ("which river flows through the city of "
                                  "VIENNA and then on to budapest? "))]])
    assert hits[0] is not None and hits[0].kind == "exact"
    assert hits[0].eval_where == "eval.jsonl:1" and hits[0].field == "instruction"


def test_long_ngram_overlap_inside_other_text_is_found() -> None:
    train = ("Here is a task. Summarise the plot of the novel in which a whale is hunted "
             "across the oceans, then list three themes.")
    hit = _index().check_many([[("input", train)]])[0]
    assert hit is not None and hit.kind == "ngram" and hit.eval_where == "eval.jsonl:2"
    assert hit.overlap >= 3
    assert "whale is hunted" in hit.snippet


def test_unrelated_and_trivially_short_matches_are_not_flagged() -> None:
    rows = [[("output", "Yes.")],
            [("text", "Which river flows through Paris? The Seine does.")],
            [("text", "A captain hunted a whale.")]]
    assert _index().check_many(rows) == [None, None, None]


def test_one_hit_per_row_and_rows_keep_their_order() -> None:
    rows = [[("a", "nothing to see here at all")],
            [("a", EVAL[0]), ("b", EVAL[1])],
            [("a", "still nothing")]]
    hits = _index().check_many(rows)
    assert hits[0] is None and hits[2] is None
    assert hits[1] is not None and hits[1].field == "a"
    assert _index().rows_by_source == {"eval.jsonl": 3}


def test_empty_index_flags_nothing() -> None:
    assert EvalIndex().check_many([[("text", EVAL[1])]]) == [None]
