"""Cleaning: each fix does its job, is counted, and keeps meaningful text intact."""

from __future__ import annotations

from tunesmith.data.prepare.clean import Cleaner, fix_mojibake, normalise_whitespace, strip_html
from tunesmith.data.prepare.config import CleanConfig


def test_mojibake_is_repaired_and_clean_text_untouched() -> None:
    assert fix_mojibake("donâ€™t panic, cafÃ© au lait") == "don’t panic, café au lait"
    for ok in ("plain ascii", "naïve café — déjà vu", "Ελληνικά", "日本語のテキスト"):
        assert fix_mojibake(ok) == ok


def test_whitespace_keeps_indentation_and_inner_spaces() -> None:
    code = "def f(x):\r\n    return  x  \r\n\r\n\r\n\r\n# done\u00a0here  "
    assert normalise_whitespace(code) == "def f(x):\n    return  x\n\n# done here"
    assert normalise_whitespace("  already clean  ") == "already clean"


def test_html_stripping() -> None:
    html = "<p>Hello <b>world</b> &amp; friends</p><script>alert(1)</script><br>bye"
    assert strip_html(html).split() == ["Hello", "world", "&", "friends", "bye"]
    assert strip_html("if a < b and c > d") == "if a < b and c > d"


def test_cleaner_counts_each_fix_and_rows() -> None:
    cleaner = Cleaner(CleanConfig(strip_html=True), "alpaca")
    row = {"instruction": "Fix\u200b this\x07 text ", "input": "<i>cafÃ©</i>",
           "output": "ﬁne\u0301", "category": "keep\x07me"}
    new, reason, _ = cleaner.clean_row(row)
    assert reason is None
    assert new["instruction"] == "Fix this text"
    assert new["input"] == "café"
    assert new["output"] == "ﬁné"  # NFC composes the accent; NFKC would also split the ligature
    assert new["category"] == "keep\x07me", "non-text fields are carried through"
    assert row["instruction"] == "Fix\u200b this\x07 text ", "input record is not modified"
    stats = cleaner.stats.as_dict()
    assert stats["rows_changed"] == 1
    assert stats["fields_changed"] == {"control_chars": 1, "html": 1, "mojibake": 1,
                                       "unicode": 1, "whitespace": 1}


def test_nfkc_option_and_disabled_steps() -> None:
    cleaner = Cleaner(CleanConfig(unicode="NFKC"), "text")
    assert cleaner.clean_row({"text": "ﬁne ＡＢＣ"})[0]["text"] == "fine ABC"
    off = Cleaner(CleanConfig(unicode="none", fix_mojibake=False, remove_control=False,
                              whitespace=False), "text")
    weird = {"text": " cafÃ©\x07 "}
    assert off.clean_row(weird)[0] == weird


def test_filters_empty_short_long() -> None:
    cleaner = Cleaner(CleanConfig(min_chars=10, max_chars=40), "alpaca")
    assert cleaner.clean_row({"instruction": " \u200b ", "output": "x" * 20})[1] == "empty"
    assert cleaner.clean_row({"instruction": "hi", "input": "", "output": "yo"})[1] == "too_short"
    assert cleaner.clean_row({"instruction": "q" * 30, "output": "a" * 30})[1] == "too_long"
    ok = {"instruction": "question?", "input": "", "output": "answer."}
    assert cleaner.clean_row(ok)[1] is None
    assert cleaner.stats.dropped == {"empty": 1, "too_short": 1, "too_long": 1}


def test_chat_message_contents_are_cleaned_and_empty_turns_dropped() -> None:
    cleaner = Cleaner(CleanConfig(), "messages")
    row = {"messages": [{"role": "system", "content": ""},
                        {"role": "user", "content": "  Hi\u00a0there "},
                        {"role": "assistant", "content": "Hello!\r\n", "weight": 1}]}
    new, reason, _ = cleaner.clean_row(row)
    assert reason is None
    assert [m["content"] for m in new["messages"]] == ["", "Hi there", "Hello!"]
    assert new["messages"][2]["weight"] == 1
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]}
    assert cleaner.clean_row(bad)[1] == "empty"
