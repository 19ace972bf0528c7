"""PII scrubbing: each kind found and counted; look-alike numbers left alone."""

from __future__ import annotations

import pytest

from tunesmith.data.prepare.fields import map_texts
from tunesmith.data.prepare.pii import PiiScrubber, luhn_ok


@pytest.mark.parametrize("text, kind", [
    ("write to jane.doe+news@mail.example.co.uk today", "email"),
    ("call +1 (415) 555-2671 now", "phone"),
    ("call 020 7946 0958 now", "phone"),
    ("call 555-1234 now", "phone"),
    ("call +33612345678 now", "phone"),
    ("server at 192.168.10.254 is down", "ip"),
    ("ping 2001:db8::8a2e:370:7334 please", "ip"),
    ("card 4111 1111 1111 1111 expires", "card"),
    ("card 5500-0000-0000-0004 expires", "card"),
    ("card 378282246310005 expires", "card"),
])
def test_each_kind_is_found_and_replaced(text: str, kind: str) -> None:
    new, counts = PiiScrubber().scrub(text)
    assert counts == {kind: 1}
    assert f"[{kind.upper()}]" in new
    assert not any(ch.isdigit() for ch in new.replace("[", "").split()[1:2][0])


@pytest.mark.parametrize("text", [
    "The meeting is on 2023-01-15 at 12:30:45.",
    "Population: 100 000 000 people; price 1,234,567.89 dollars.",
    "ISBN 978-3-16-148410-0 and version v1.2.3.4 and 3.14159",
    "The years 2019-2020 were odd; order number 4111111111111112 is not a card.",
    "Use std::vector<int> in C++ and a::b in Rust.",
    "Write to me at the office, not by mail.",
])
def test_look_alikes_are_left_alone(text: str) -> None:
    new, counts = PiiScrubber().scrub(text)
    assert counts == {} and new == text


def test_counts_per_kind_and_rows_are_exact() -> None:
    scrubber = PiiScrubber(placeholder="<{KIND}>")
    rows = [
        {"instruction": "Email a@b.io and c@d.org", "input": "", "output": "IP 10.0.0.1"},
        {"instruction": "nothing here", "input": "", "output": "ok"},
        {"instruction": "call +44 20 7946 0958", "input": "", "output": "a@b.io"},
    ]
    out = []
    for row in rows:
        scrubber.begin_row()
        out.append(map_texts(row, "alpaca", scrubber.scrub_text))
        scrubber.end_row()
    assert dict(scrubber.stats.found) == {"email": 3, "ip": 1, "phone": 1}
    assert dict(scrubber.stats.rows) == {"email": 2, "ip": 1, "phone": 1}
    assert scrubber.stats.rows_changed == 2
    assert out[0]["instruction"] == "Email <EMAIL> and <EMAIL>"
    assert out[1] == rows[1]


def test_only_requested_kinds_are_scrubbed() -> None:
    new, counts = PiiScrubber(kinds=["email"]).scrub("a@b.io 10.0.0.1")
    assert new == "[EMAIL] 10.0.0.1" and counts == {"email": 1}
    with pytest.raises(ValueError):
        PiiScrubber(kinds=["ssn"])


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
