"""Graders: ``f(completion, row) -> float``, built from ``grpo.graders`` and summed with
their weights into one reward per completion.

Built-in types (the row is the prompts-file record the completion answers; ``field`` names
the reference in it):

* ``exact``: 1 when the stripped completion equals the reference (``ignore_case``);
* ``regex``: 1 when ``pattern`` is found; with ``field``, when its first group (or the whole
  match) equals the reference;
* ``json_valid``: 1 when the completion holds a JSON object (the first ``{...}`` span);
* ``json_schema``: 1 when that object conforms to ``json_schema`` (jsonschema);
* ``json_fields``: the share of the reference object's keys whose values the completion's
  object matches (0 when there is no object);
* ``numeric``: 1 when the last number in the completion is within ``tolerance`` of the
  reference;
* ``python``: ``function`` (``package.module:name``), imported when the run starts and called
  as ``f(completion: str, row: dict) -> float`` (a bool or int counts as a number).
* ``openai``: an OpenAI grader object (``string_check``, ``text_similarity``, ``python``
  with ``source``, ``multi``): :mod:`tunesmith.rewards.openai_graders`.

A grader that raises, or returns something that is not a finite number, does not stop the
step: :func:`grade` counts it as reward 0 and returns the failure (with its traceback) for
the caller to log and count against ``grpo.max_grader_failures``.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunesmith.config.schema import GraderConfig
from tunesmith.errors import ConfigError
from tunesmith.rewards.json_text import first_json_object
from tunesmith.rewards.openai_graders import GraderSpecError, build_grader

GradeFn = Callable[[str, dict[str, Any]], Any]
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass
class Grader:
    name: str
    weight: float
    fn: GradeFn


@dataclass
class Grades:
    """Rewards of a list of completions: the weighted total, each grader's own, failures."""

    total: list[float]
    by_grader: dict[str, list[float]]
    failures: list[str] = field(default_factory=list)


def _reference(row: dict[str, Any], name: str | None) -> Any:
    if name is None:
        raise ValueError("this grader needs `field`: the row's reference")
    if name not in row:
        raise KeyError(f"the prompt row has no field {name!r} (fields: {sorted(row)})")
    return row[name]


def _exact(c: GraderConfig) -> GradeFn:
    def fold(s: str) -> str:
        return s.strip().lower() if c.ignore_case else s.strip()
    return lambda text, row: float(fold(text) == fold(str(_reference(row, c.field))))


def _regex(c: GraderConfig) -> GradeFn:
    if not c.pattern:
        raise ValueError("a regex grader needs `pattern`")
    pattern = re.compile(c.pattern, re.IGNORECASE if c.ignore_case else 0)

    def grade(text: str, row: dict[str, Any]) -> float:
        m = pattern.search(text)
        if m is None or c.field is None:
            return float(m is not None)
        got = m.group(1) if m.groups() else m.group(0)
        want = str(_reference(row, c.field))
        return float(got.strip().lower() == want.strip().lower() if c.ignore_case
                     else got.strip() == want.strip())
    return grade


def _json_schema(c: GraderConfig) -> GradeFn:
    # deferred: jsonschema is an optional dependency (the `rl` extra), only this grader uses it
    try:
        import jsonschema
    except ImportError as exc:
        raise ValueError("the json_schema grader needs the jsonschema package: "
                         "pip install 'tunesmith[rl]'") from exc
    if c.json_schema is None:
        raise ValueError("a json_schema grader needs `json_schema`")
    validator = jsonschema.Draft202012Validator(c.json_schema)
    validator.check_schema(c.json_schema)

    def grade(text: str, row: dict[str, Any]) -> float:
        obj = first_json_object(text)
        return float(obj is not None and validator.is_valid(obj))
    return grade


def _json_fields(c: GraderConfig) -> GradeFn:
    def grade(text: str, row: dict[str, Any]) -> float:
        want = _reference(row, c.field)
        if isinstance(want, str):
            want = json.loads(want)
        if not isinstance(want, dict) or not want:
            raise ValueError(f"field {c.field!r} must hold a non-empty JSON object")
        got = first_json_object(text) or {}
        return sum(got.get(k) == v for k, v in want.items()) / len(want)
    return grade


def _numeric(c: GraderConfig) -> GradeFn:
    def grade(text: str, row: dict[str, Any]) -> float:
        want = float(str(_reference(row, c.field)).replace(",", ""))
        found = NUMBER.findall(text)
        return float(bool(found) and abs(float(found[-1].replace(",", "")) - want)
                     <= c.tolerance)
    return grade


def _python(c: GraderConfig) -> GradeFn:
    if not c.function or ":" not in c.function:
        raise ValueError("a python grader needs `function: package.module:name`")
    module, _, name = c.function.partition(":")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise ValueError(f"{c.function} is not callable")
    return fn


def _openai(c: GraderConfig) -> GradeFn:
    if c.openai is None:
        raise ValueError("an openai grader needs `openai`: an OpenAI grader object")
    try:
        return build_grader(c.openai)
    except GraderSpecError as exc:
        raise ValueError(f"openai.{exc.param}: {exc}" if exc.param else str(exc)) from None


BUILDERS: dict[str, Callable[[GraderConfig], GradeFn]] = {
    "exact": _exact, "regex": _regex, "json_schema": _json_schema,
    "json_valid": lambda c: lambda text, row: float(first_json_object(text) is not None),
    "json_fields": _json_fields, "numeric": _numeric, "python": _python, "openai": _openai}
NEEDS_FIELD = ("exact", "json_fields", "numeric")


def build_graders(configs: list[GraderConfig], where: str = "grpo.graders") -> list[Grader]:
    """Graders from their configs; one ConfigError naming the first that cannot be built
    (a pattern that does not compile, a function that does not import, a missing field)."""
    graders, names = [], set()
    for i, c in enumerate(configs):
        at = f"{where}[{i}]"
        try:
            if c.type in NEEDS_FIELD and not c.field:
                raise ValueError(f"a {c.type} grader needs `field`: the row's reference")
            fn = BUILDERS[c.type](c)
        except (ValueError, ImportError, AttributeError, re.error) as exc:
            raise ConfigError(f"grader {c.type} cannot be built: {exc}", where=at,
                              got=c.model_dump(exclude_defaults=True, by_alias=True),
                              fix="see the grader types in docs/preference-rl.md") from exc
        name = c.name or c.type
        if name in names:
            name = f"{name}_{i}"
        names.add(name)
        graders.append(Grader(name, c.weight, fn))
    return graders


def _as_reward(value: Any, name: str) -> float:
    if isinstance(value, (bool, int, float)):
        number = float(value)
        if math.isfinite(number):
            return number
    raise TypeError(f"grader {name} returned {value!r} ({type(value).__name__}), not a "
                    "finite number")


def grade(graders: list[Grader], completions: list[str], rows: list[dict[str, Any]]
          ) -> Grades:
    """Every grader on every (completion, row): a grader that raises or returns a
    non-number scores 0 for that completion and adds one failure (with its traceback)."""
    total = [0.0] * len(completions)
    by_grader: dict[str, list[float]] = {}
    failures = []
    for g in graders:
        scores = []
        for i, (text, row) in enumerate(zip(completions, rows)):
            try:
                value = _as_reward(g.fn(text, row), g.name)
            except Exception:  # any grader bug: counted, logged, reward 0
                failures.append(f"grader {g.name} on completion {i}:\n"
                                f"{traceback.format_exc()}")
                value = 0.0
            scores.append(value)
            total[i] += g.weight * value
        by_grader[g.name] = scores
    return Grades(total, by_grader, failures)
