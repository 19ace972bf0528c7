"""Text cleaning and length filters, counting every change they make.

Each text field goes through, in order: mojibake repair (ftfy), optional HTML stripping,
Unicode normalisation, control/invisible character removal and whitespace normalisation.
The order matters: mojibake must be repaired before normalisation would bake the broken
characters in, and HTML entities decode to characters that later steps then normalise.

Cleaning never changes the meaning of the text: internal runs of spaces and leading
indentation are kept because code answers depend on them.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from tunesmith.data.prepare.config import CleanConfig
from tunesmith.data.prepare.fields import iter_texts, map_texts, required_texts_empty

# A UTF-8 lead byte read as Latin-1/cp1252 (Â..ô) followed by a continuation byte read the
# same way: the fingerprint of UTF-8 decoded with the wrong codec. Text without it cannot
# hold that kind of mojibake, so ftfy (about 30 µs a call) only runs when it matches.
_MOJIBAKE_HINT = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192"
    "\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]")
# C0/C1 controls except tab (\x09), newline (\x0a) and carriage return (\x0d, handled as a
# line end), plus zero-width space, word joiner, BOM and soft hyphen. ZWJ/ZWNJ stay: they
# are meaningful in emoji sequences and Indic/Persian scripts.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff\u00ad]")
_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_LINE_SEPS = re.compile("\r\n|\r|\u2028|\u2029|\x85")
_TRAILING = re.compile(r"[ \t]+(?=\n)")
_BLANK_RUNS = re.compile(r"\n{3,}")
# anything normalise_whitespace would change apart from the ends: most texts have none
_WS_WORK = re.compile("[\r\u2028\u2029\x85\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"
                      "|[ \t]\n|\n\n\n")
_TAG_HINT = re.compile(r"<[A-Za-z/!][^>]*>|&(?:[A-Za-z]+|#\d+|#x[0-9A-Fa-f]+);")
_BLOCK_TAGS = frozenset({"p", "br", "div", "li", "ul", "ol", "tr", "table", "h1", "h2", "h3",
                         "h4", "h5", "h6", "blockquote", "pre", "hr", "section", "article"})


class _TextExtractor(HTMLParser):
    """Collect the text of an HTML fragment; block tags become line breaks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """Remove tags, scripts and styles; decode entities. Text without markup is unchanged."""
    if not _TAG_HINT.search(text):
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return html.unescape("".join(parser.parts))


def fix_mojibake(text: str) -> str:
    """Repair UTF-8 that was decoded as Latin-1/cp1252 (``donâ€™t`` -> ``don’t``)."""
    if text.isascii() or not _MOJIBAKE_HINT.search(text):
        return text
    # deferred: ftfy is heavy and only this path needs it
    import ftfy

    return ftfy.fix_encoding(text)


def normalise_whitespace(text: str) -> str:
    """Unify line ends and odd spaces, drop trailing spaces and extra blank lines, trim."""
    if not _WS_WORK.search(text):
        return text.strip()
    text = _LINE_SEPS.sub("\n", text)
    text = _ODD_SPACES.sub(" ", text)
    text = _TRAILING.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


@dataclass
class CleanStats:
    """What cleaning did: text fields changed per kind of fix, rows touched, rows dropped."""

    fields_changed: Counter[str] = field(default_factory=Counter)
    rows_changed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"rows_changed": self.rows_changed,
                "fields_changed": dict(sorted(self.fields_changed.items())),
                "dropped": dict(sorted(self.dropped.items()))}


class Cleaner:
    """Apply ``CleanConfig`` to records of one format and decide the length filters."""

    def __init__(self, cfg: CleanConfig, fmt: str) -> None:
        self.cfg, self.fmt = cfg, fmt
        self.stats = CleanStats()
        self._row_kinds: set[str] = set()

    def clean_text(self, text: str) -> str:
        """Clean one string, noting which fixes changed it."""
        cfg, kinds = self.cfg, self._row_kinds
        if cfg.fix_mojibake:
            new = fix_mojibake(text)
            if new != text:
                kinds.add("mojibake")
                self.stats.fields_changed["mojibake"] += 1
                text = new
        if cfg.strip_html:
            new = strip_html(text)
            if new != text:
                kinds.add("html")
                self.stats.fields_changed["html"] += 1
                text = new
        if cfg.unicode != "none" and not text.isascii():
            new = unicodedata.normalize(cfg.unicode, text)
            if new != text:
                kinds.add("unicode")
                self.stats.fields_changed["unicode"] += 1
                text = new
        if cfg.remove_control:
            new = _CONTROL.sub("", text)
            if new != text:
                kinds.add("control_chars")
                self.stats.fields_changed["control_chars"] += 1
                text = new
        if cfg.whitespace:
            new = normalise_whitespace(text)
            if new != text:
                kinds.add("whitespace")
                self.stats.fields_changed["whitespace"] += 1
                text = new
        return text

    def clean_row(self, data: dict[str, Any]) -> tuple[dict[str, Any], str | None, str]:
        """Clean a record; return ``(new record, drop reason or None, detail)``.

        Drop reasons: ``empty`` (a required text is empty after cleaning), ``too_short``,
        ``too_long`` (all text fields together, in characters).
        """
        self._row_kinds = set()
        new = map_texts(data, self.fmt, self.clean_text)
        if self._row_kinds:
            self.stats.rows_changed += 1
        empty = required_texts_empty(new, self.fmt)
        if empty:
            self.stats.dropped["empty"] += 1
            return new, "empty", f"'{empty}' is empty after cleaning"
        total = sum(len(t) for _, t in iter_texts(new, self.fmt))
        if total < self.cfg.min_chars:
            self.stats.dropped["too_short"] += 1
            return new, "too_short", f"{total} characters < min_chars {self.cfg.min_chars}"
        if self.cfg.max_chars is not None and total > self.cfg.max_chars:
            self.stats.dropped["too_long"] += 1
            return new, "too_long", f"{total} characters > max_chars {self.cfg.max_chars}"
        return new, None, ""
