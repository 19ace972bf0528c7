"""OpenAI grader objects (string_check, text_similarity, python, multi) on hand-made
completions: scores equal to the libraries' own figures, templates, failures counted as
reward 0, and bad objects refused with the field's path."""

from __future__ import annotations

import difflib
from typing import Any

import pytest

from tunesmith.config.schema import GraderConfig
from tunesmith.errors import ConfigError
from tunesmith.rewards.graders import build_graders, grade
from tunesmith.rewards.openai_graders import GraderSpecError, build_grader, check_grader

OUT = "{{sample.output_text}}"
ROW = {"answer": "Paris", "meta": {"city": "Paris", "tags": ["a", "b"]},
       "messages": [{"role": "user", "content": "Capital of France?"}]}


def _check(op: str, text: str, ref: str = "{{item.answer}}") -> float:
    return build_grader({"type": "string_check", "name": "s", "input": OUT,
                         "reference": ref, "operation": op})(text, ROW)


def test_string_check_operations_and_templates() -> None:
    assert _check("eq", "Paris") == 1.0 and _check("eq", "paris") == 0.0
    assert _check("ne", "Lyon") == 1.0 and _check("ne", "Paris") == 0.0
    assert _check("like", "It is Paris.") == 1.0 and _check("like", "it is paris") == 0.0
    assert _check("ilike", "it is PARIS") == 1.0
    assert _check("eq", "Paris", "{{ item.meta.city }}") == 1.0
    assert _check("eq", "b", "{{item.meta.tags.1}}") == 1.0
    json_key = build_grader({"type": "string_check", "input": "{{sample.output_json.city}}",
                             "reference": "{{item.answer}}", "operation": "eq"})
    assert json_key('{"city": "Paris"}', ROW) == 1.0


def test_a_missing_template_field_fails_that_completion_only() -> None:
    g = build_graders([GraderConfig.model_validate({"type": "openai", "name": "s", "openai": {
        "type": "string_check", "input": "{{sample.output_json.city}}",
        "reference": "{{item.answer}}", "operation": "eq"}})])
    out = grade(g, ["not json", '{"city": "Paris"}'], [ROW, ROW])
    assert out.total == [0.0, 1.0]
    assert len(out.failures) == 1 and "sample.output_json" in out.failures[0]


def test_text_similarity_equals_the_libraries() -> None:
    from nltk.translate.gleu_score import sentence_gleu
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import BLEU

    text, ref = "the cat sat on the red mat", "the cat sat on the mat"
    row = {"ref": ref}

    def sim(metric: str) -> float:
        return build_grader({"type": "text_similarity", "input": OUT, "reference":
                             "{{item.ref}}", "evaluation_metric": metric,
                             "pass_threshold": 0.5})(text, row)

    assert sim("fuzzy_match") == pytest.approx(difflib.SequenceMatcher(None, text, ref).ratio())
    bleu = BLEU(effective_order=True).sentence_score(text, [ref]).score / 100
    assert sim("bleu") == pytest.approx(bleu) and 0 < bleu < 1
    assert sim("gleu") == pytest.approx(sentence_gleu([ref.split()], text.split()))
    rouge = RougeScorer(["rouge2", "rougeL"], use_stemmer=True).score(ref, text)
    assert sim("rouge_2") == pytest.approx(rouge["rouge2"].fmeasure)
    assert sim("rouge_l") == pytest.approx(rouge["rougeL"].fmeasure)
    assert build_grader({"type": "text_similarity", "input": OUT, "reference": OUT,
                         "evaluation_metric": "rouge_1"})("same words", {}) == 1.0


def test_python_source_grader_gets_sample_and_item() -> None:
    source = ("import json\n"
              "def grade(sample, item):\n"
              "    got = sample['output_json'] or {}\n"
              "    return float(got.get('city') == item['answer']) + len(item['messages'])\n")
    g = build_grader({"type": "python", "name": "py", "source": source,
                      "image_tag": "2025-05-08"})
    assert g('{"city": "Paris"}', ROW) == 2.0 and g("no", ROW) == 1.0
    with pytest.raises(GraderSpecError) as off:
        build_grader({"type": "python", "source": source}, allow_python=False)
    assert "disabled" in str(off.value)


def test_multi_grader_formula() -> None:
    obj = {"type": "multi", "name": "m", "calculate_output":
           "0.5 * exact + 0.5 * max(like, 0) - abs(-0) + sqrt(4) ^ 2 / 8",
           "graders": {"exact": {"type": "string_check", "input": OUT,
                                 "reference": "{{item.answer}}", "operation": "eq"},
                       "like": {"type": "string_check", "input": OUT,
                                "reference": "{{item.answer}}", "operation": "ilike"}}}
    g = build_grader(obj)
    assert g("Paris", ROW) == pytest.approx(1.5)  # 0.5 + 0.5 + 4/8
    assert g("in paris", ROW) == pytest.approx(1.0)
    single = {"type": "multi", "calculate_output": "2 * ok", "graders": {
        "type": "string_check", "name": "ok", "input": OUT, "reference": "x",
        "operation": "eq"}}
    assert build_grader(single)("x", {}) == 2.0


@pytest.mark.parametrize("obj, param, words", [
    ({"type": "score_model", "model": "gpt-4o"}, "type", ["grader model", "python"]),
    ({"type": "string_check", "input": OUT, "reference": "x", "operation": "regex"},
     "operation", ["eq, ne, like, ilike"]),
    ({"type": "string_check", "input": "{{sample.output}}", "reference": "x",
      "operation": "eq"}, "input", ["{{sample.output}}"]),
    ({"type": "string_check", "input": OUT, "operation": "eq"}, "reference", ["non-empty"]),
    ({"type": "string_check", "input": OUT, "reference": "x", "operation": "eq", "x": 1},
     "x", ["unknown field"]),
    ({"type": "text_similarity", "input": OUT, "reference": "x",
      "evaluation_metric": "cosine"}, "evaluation_metric", ["embeddings"]),
    ({"type": "text_similarity", "input": OUT, "reference": "x",
      "evaluation_metric": "bleu", "pass_threshold": "high"}, "pass_threshold", ["number"]),
    ({"type": "python", "source": "def grade(sample, item) return 1"}, "source",
     ["does not parse"]),
    ({"type": "python", "source": "def score(sample, item):\n    return 1\n"}, "source",
     ["grade(sample, item)"]),
    ({"type": "multi", "graders": {}, "calculate_output": "1"}, "graders", ["non-empty"]),
    ({"type": "multi", "graders": {"a": {"type": "multi"}}, "calculate_output": "a"},
     "graders.a.type", ["not supported"]),
    ({"type": "multi", "graders": {"a": {"type": "string_check", "input": OUT,
                                         "reference": "x", "operation": "eq"}},
      "calculate_output": "a + b"}, "calculate_output", ["'b' names no grader"]),
    ({"type": "multi", "graders": {"a": {"type": "string_check", "input": OUT,
                                         "reference": "x", "operation": "eq"}},
      "calculate_output": "__import__('os').system('true')"}, "calculate_output",
     ["may be called"]),
])
def test_bad_grader_objects_name_the_field(obj: dict[str, Any], param: str,
                                           words: list[str]) -> None:
    with pytest.raises(GraderSpecError) as err:
        check_grader(obj)
    assert err.value.param == param
    for word in words:
        assert word in str(err.value), str(err.value)


def test_source_that_raises_is_a_config_error() -> None:
    spec = {"type": "openai", "openai": {"type": "python",
                                         "source": "import no_such_module_x\n"
                                                   "def grade(s, i):\n    return 1\n"}}
    with pytest.raises(ConfigError) as err:
        build_graders([GraderConfig.model_validate(spec)])
    text = err.value.render()
    assert "grpo.graders[0]" in text and "ModuleNotFoundError" in text
    with pytest.raises(ConfigError) as none:
        build_graders([GraderConfig.model_validate({"type": "openai"})])
    assert "needs `openai`" in none.value.render()
