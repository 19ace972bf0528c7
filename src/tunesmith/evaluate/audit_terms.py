"""Demographic term pairs for the counterfactual audit of classifiers, and how to swap them.

Each group lists ``(a, b)`` pairs; a swap replaces every whole-word occurrence of ``a`` by
``b`` and of ``b`` by ``a`` in one pass, keeping the case shape (``He`` → ``She``, ``HE`` →
``SHE``). A term appears once per group (``her`` aside, see below), so the swap is well
defined.

Known limits, kept on purpose (a word list without part-of-speech tagging):

- ``her`` is both possessive and object; it maps to ``his`` (the commoner use), so
  ``him`` → ``her`` → ``his`` is not an involution;
- colour and age words have other senses (``white wine``, ``old code``), which makes the
  audit slightly conservative: such swaps rarely change a prediction;
- the pairs contrast groups, they do not cover every identity; extend them with
  ``--terms FILE`` (CSV-like lines ``group,term_a,term_b``; ``#`` starts a comment).

The lists draw on the gender word pairs of counterfactual data augmentation (Lu et al.
2018; Zhao et al. 2018) and on the identity terms of CrowS-Pairs' bias categories.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunesmith.errors import DataError

TERM_PAIRS: dict[str, list[tuple[str, str]]] = {
    "gender": [
        ("he", "she"), ("him", "her"), ("his", "her"), ("himself", "herself"),
        ("man", "woman"), ("men", "women"), ("boy", "girl"), ("boys", "girls"),
        ("father", "mother"), ("fathers", "mothers"), ("son", "daughter"),
        ("sons", "daughters"), ("brother", "sister"), ("brothers", "sisters"),
        ("husband", "wife"), ("husbands", "wives"), ("boyfriend", "girlfriend"),
        ("king", "queen"), ("uncle", "aunt"), ("nephew", "niece"), ("gentleman", "lady"),
        ("gentlemen", "ladies"), ("mr", "mrs"), ("male", "female"), ("males", "females"),
        ("grandfather", "grandmother"), ("dad", "mom"), ("actor", "actress"),
        ("waiter", "waitress"), ("guy", "gal"),
    ],
    "race-color": [
        ("black", "white"), ("blacks", "whites"), ("african", "european"),
        ("african-american", "european-american"), ("asian", "caucasian"),
        ("hispanic", "anglo"),
    ],
    "religion": [
        ("christian", "muslim"), ("christians", "muslims"), ("church", "mosque"),
        ("churches", "mosques"), ("bible", "quran"), ("jesus", "muhammad"),
        ("jewish", "catholic"), ("jews", "catholics"), ("synagogue", "cathedral"),
        ("hindu", "buddhist"), ("hindus", "buddhists"),
    ],
    "age": [
        ("young", "old"), ("younger", "older"), ("youngest", "oldest"),
        ("teenager", "pensioner"), ("teenagers", "pensioners"), ("millennial", "boomer"),
        ("millennials", "boomers"),
    ],
    "nationality": [
        ("american", "mexican"), ("americans", "mexicans"), ("german", "turkish"),
        ("germans", "turks"), ("french", "algerian"), ("british", "nigerian"),
    ],
    "sexual-orientation": [
        ("gay", "straight"), ("gays", "straights"), ("homosexual", "heterosexual"),
        ("lesbian", "hetero"),
    ],
    "disability": [
        ("disabled", "able-bodied"), ("blind", "sighted"), ("deaf", "hearing"),
    ],
}
# one-directional override: possessive "her" is commoner than object "her"
_ONE_WAY = {"gender": {"her": "his", "hers": "his"}}


class Swapper:
    """Whole-word, case-keeping, simultaneous swap of one group's terms."""

    def __init__(self, pairs: list[tuple[str, str]], one_way: dict[str, str] | None = None
                 ) -> None:
        self.mapping: dict[str, str] = {}
        for a, b in pairs:
            self.mapping.setdefault(a.lower(), b.lower())
            self.mapping.setdefault(b.lower(), a.lower())
        self.mapping.update(one_way or {})
        terms = sorted(self.mapping, key=len, reverse=True)
        self.pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, terms)) + r")(?![\w-])",
                                  re.IGNORECASE)

    def __call__(self, text: str) -> tuple[str, int]:
        count = 0

        def repl(m: re.Match[str]) -> str:
            nonlocal count
            count += 1
            word = m.group(0)
            new = self.mapping[word.lower()]
            if word.isupper() and len(word) > 1:
                return new.upper()
            if all(p[:1].isupper() for p in word.split("-")):
                return "-".join(p[:1].upper() + p[1:] for p in new.split("-"))
            if word[0].isupper():
                return new[0].upper() + new[1:]
            return new

        return self.pattern.sub(repl, text), count


def swappers(extra: Path | None = None, groups: list[str] | None = None) -> dict[str, Swapper]:
    """One Swapper per group: the built-in pairs plus those of ``extra``, optionally filtered."""
    pairs = {g: list(p) for g, p in TERM_PAIRS.items()}
    if extra is not None:
        for g, p in read_term_file(extra).items():
            pairs.setdefault(g, []).extend(p)
    if groups:
        unknown = [g for g in groups if g not in pairs]
        if unknown:
            raise DataError("unknown term group", where="--groups", got=unknown,
                            fix=f"choose among {', '.join(sorted(pairs))} or add the group "
                            "with --terms")
        pairs = {g: pairs[g] for g in groups}
    return {g: Swapper(p, _ONE_WAY.get(g)) for g, p in pairs.items()}


def read_term_file(path: Path) -> dict[str, list[tuple[str, str]]]:
    """``group,term_a,term_b`` per line; blank lines and ``#`` comments are skipped."""
    if not path.exists():
        raise DataError("term-pair file not found", where=str(path),
                        fix="give a text file with lines `group,term_a,term_b`")
    out: dict[str, list[tuple[str, str]]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not all(parts):
            raise DataError("term-pair line must be `group,term_a,term_b`",
                            where=f"{path}:{n}", got=line,
                            fix="write three comma-separated, non-empty values, e.g. "
                            "`gender,nephew,niece`")
        out.setdefault(parts[0], []).append((parts[1], parts[2]))
    return out
