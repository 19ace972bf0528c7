"""The graders on hand-made completions, including failures: a grader that raises or
returns a non-number scores 0 and is reported; bad grader configs are one ConfigError."""

from __future__ import annotations

from typing import Any

import pytest

from tunesmith.config.schema import GraderConfig
from tunesmith.errors import ConfigError
from tunesmith.rewards.graders import build_graders, grade


def _one(spec: dict[str, Any], text: str, row: dict[str, Any] | None = None) -> float:
    g = build_graders([GraderConfig.model_validate(spec)])
    out = grade(g, [text], [row or {}])
    assert not out.failures, out.failures
    return out.total[0]


def half(completion: str, row: dict[str, Any]) -> Any:
    return row.get("ret", 0.5)


def test_builtin_graders() -> None:
    assert _one({"type": "exact", "field": "a"}, " Paris ", {"a": "Paris"}) == 1.0
    assert _one({"type": "exact", "field": "a", "ignore_case": True}, "paris", {"a": "Paris"})
    assert _one({"type": "regex", "pattern": r"answer: (\w+)", "field": "a"},
                "so answer: 42", {"a": "42"}) == 1.0
    assert _one({"type": "regex", "pattern": "yes"}, "no") == 0.0
    assert _one({"type": "json_valid"}, 'Sure: {"a": 1}') == 1.0
    assert _one({"type": "json_valid"}, "{not json}") == 0.0
    assert _one({"type": "numeric", "field": "a", "tolerance": 0.01}, "it is 3.14", {"a": 3.141})
    assert _one({"type": "numeric", "field": "a"}, "about 1,000 or 7", {"a": "1000"}) == 0.0
    assert _one({"type": "json_fields", "field": "t"}, '{"a": 1, "b": 2}',
                {"t": {"a": 1, "b": 3}}) == 0.5


def test_json_schema() -> None:
    pytest.importorskip("jsonschema")
    spec = {"type": "json_schema", "json_schema": {
        "type": "object", "required": ["intent"],
        "properties": {"intent": {"enum": ["refund", "cancel"]}}}}
    assert _one(spec, '{"intent": "refund"}') == 1.0
    assert _one(spec, '{"intent": "hello"}') == 0.0


def test_weighted_sum() -> None:
    g = build_graders([GraderConfig(type="json_valid", weight=0.25),
                       GraderConfig(type="regex", pattern="x", weight=2.0)])
    assert grade(g, ['{"x": 1}', "x"], [{}, {}]).total == [2.25, 2.0]


@pytest.mark.parametrize("bad", ["no", None, float("nan"), [1]])
def test_non_numbers_and_errors_score_zero_and_are_reported(bad: Any) -> None:
    g = build_graders([GraderConfig(type="python", function=f"{__name__}:half", name="h")])
    out = grade(g, ["a", "b"], [{"ret": bad}, {}])
    assert out.total == [0.0, 0.5]
    assert len(out.failures) == 1 and "not a finite number" in out.failures[0]
    missing = build_graders([GraderConfig(type="exact", field="gone")])
    out = grade(missing, ["a"], [{"other": 1}])
    assert out.total == [0.0] and "KeyError" in out.failures[0]


@pytest.mark.parametrize("spec", [{"type": "regex", "pattern": "("},
                                  {"type": "python", "function": "no.such.module:f"},
                                  {"type": "python", "function": "nocolon"},
                                  {"type": "exact"}])
def test_bad_configs(spec: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        build_graders([GraderConfig.model_validate(spec)])
    assert "grpo.graders[0]" in err.value.render()
