"""Find and replace personal data: e-mail addresses, phone numbers, IP addresses, card numbers.

Regular expressions find candidates; each kind then has a validator that rejects look-alikes
so that ordinary numbers survive: card numbers must pass the Luhn check, IP addresses must
parse (``ipaddress``), phone numbers need 9-15 digits (or the ``555-1234`` local form) and
must not look like a date or a thousands-grouped amount. Kinds are replaced in a fixed order
(e-mail, card, IP, phone) so a placeholder is never re-matched by a later kind.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

PII_KINDS = ("email", "card", "ip", "phone")

EMAIL_RE = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-])")
CARD_RE = re.compile(r"(?<![\d.,-])\d(?:[ -]?\d){12,18}(?![\d]|[.,]\d)")
IPV4_RE = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\w]|\.\d)")
IPV6_RE = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}"
    r"(?![\w]|[.-]\d)"
    r"|(?<![\w+])\+\d{8,15}(?!\w)")
_DATE_RE = re.compile(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})$")
_LOCAL_PHONE_RE = re.compile(r"^\d{3}[-.]\d{4}$")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits)


def _is_ipv6(match: str) -> bool:
    # "a::b" in code parses as IPv6 too; real addresses carry digits and several groups
    if not any(c.isdigit() for c in match) or sum(1 for g in match.split(":") if g) < 2:
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


def _is_phone(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    if _DATE_RE.match(match):
        return False
    if match.startswith("+") or "(" in match:
        return 8 <= len(digits) <= 15
    groups = re.split(r"[ .-]", match)
    # 100 000 000 or 1.234.567: amounts grouped by thousands, not phone numbers
    if len(groups) > 2 and all(len(g) == 3 for g in groups[1:]) and len(groups[0]) <= 3:
        return False
    if _LOCAL_PHONE_RE.match(match):
        return True
    return 9 <= len(digits) <= 15


_VALIDATORS: dict[str, tuple[tuple[re.Pattern[str], Callable[[str], bool] | None], ...]] = {
    "email": ((EMAIL_RE, None),),
    "card": ((CARD_RE, _is_card),),
    "ip": ((IPV4_RE, None), (IPV6_RE, _is_ipv6)),
    "phone": ((PHONE_RE, _is_phone),),
}


_DIGIT_RUN = re.compile(r"\d{2}")
_IP_HINT = re.compile(r"\d\.\d|[0-9A-Fa-f]?::?[0-9A-Fa-f]")


def _may_contain(kind: str, text: str) -> bool:
    if kind == "email":
        return "@" in text
    if kind == "ip":
        return _IP_HINT.search(text) is not None
    return _DIGIT_RUN.search(text) is not None


@dataclass
class PiiStats:
    """Replacements per kind and rows with at least one replacement of that kind."""

    found: Counter[str] = field(default_factory=Counter)
    rows: Counter[str] = field(default_factory=Counter)
    rows_changed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"replaced": dict(self.found), "rows_with": dict(self.rows),
                "rows_changed": self.rows_changed}


class PiiScrubber:
    """Replace the chosen kinds of personal data with placeholders such as ``[EMAIL]``."""

    def __init__(self, kinds: Iterable[str] = PII_KINDS, placeholder: str = "[{KIND}]") -> None:
        wanted = set(kinds)
        unknown = wanted - set(PII_KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds: {sorted(unknown)}")
        self.kinds = [k for k in PII_KINDS if k in wanted]
        self.placeholder = placeholder
        self.stats = PiiStats()
        self._row: Counter[str] = Counter()

    def scrub(self, text: str) -> tuple[str, Counter[str]]:
        """Return the text with personal data replaced and the count per kind."""
        counts: Counter[str] = Counter()
        for kind in self.kinds:
            if not _may_contain(kind, text):  # cheap pre-checks skip most texts
                continue
            repl = self.placeholder.replace("{KIND}", kind.upper())
            for pattern, valid in _VALIDATORS[kind]:

                def _sub(m: re.Match[str], kind: str = kind, repl: str = repl,
                         valid: Callable[[str], bool] | None = valid) -> str:
                    if valid is not None and not valid(m.group(0)):
                        return m.group(0)
                    counts[kind] += 1
                    return repl

                text = pattern.sub(_sub, text)
        return text, counts

    def scrub_text(self, text: str) -> str:
        """``scrub`` for use with ``fields.map_texts``: counts go to the current row."""
        new, counts = self.scrub(text)
        self._row.update(counts)
        return new

    def begin_row(self) -> None:
        self._row = Counter()

    def end_row(self) -> Counter[str]:
        """Fold the current row's counts into the totals and return them."""
        row = self._row
        if row:
            self.stats.found.update(row)
            self.stats.rows.update(row.keys())
            self.stats.rows_changed += 1
        self._row = Counter()
        return row
