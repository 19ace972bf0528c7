"""OpenAI's grader objects (reinforcement fine-tuning) as tunesmith graders:
``f(completion, row) -> float`` built from the JSON object a client sends.

Supported shapes (the ``type`` field):

* ``string_check``: ``input`` and ``reference`` templates, ``operation`` ``eq`` / ``ne`` /
  ``like`` (the reference is a substring of the input) / ``ilike`` (case-blind ``like``);
  1.0 or 0.0.
* ``text_similarity``: ``input``, ``reference``, ``evaluation_metric`` one of
  ``fuzzy_match`` (difflib's ratio of the two strings), ``bleu`` (sacrebleu's sentence BLEU
  / 100), ``gleu`` (NLTK's sentence GLEU on whitespace tokens), ``rouge_1`` ... ``rouge_5``,
  ``rouge_l`` (rouge_score's F-measure, stemmed); the reward is the score in [0, 1].
  ``pass_threshold`` is checked and kept, but the reward is the score (as in RFT; the
  threshold only labels pass/fail in OpenAI's evals). ``cosine`` (an embeddings model) and
  ``meteor`` (WordNet data) are refused.
* ``python``: ``source`` defining ``grade(sample, item) -> float``; executed in the training
  process when the graders are built (trusted code: see :func:`python_source_grader`).
  ``image_tag`` is accepted and ignored.
* ``multi``: ``graders`` (an object of named graders, or one grader named by its ``name``)
  and ``calculate_output``, an arithmetic formula over those names: numbers, ``+ - * / ^``
  (``^`` and ``**`` are powers), parentheses and ``min max abs floor ceil exp sqrt log``.

Templates: ``{{sample.output_text}}`` (the completion), ``{{sample.output_json.key}}`` (a key
of the JSON object in it) and ``{{item.field}}`` / ``{{item.a.b}}`` / ``{{item.list.0}}``
(the training row's fields). A missing field makes that completion's grade fail (reward 0,
counted, logged) rather than the run.

``score_model`` and ``label_model`` need a grader model and are refused.
:func:`check_grader` checks an object without running anything and raises
:class:`GraderSpecError` naming the field (``graders.a.operation``); :func:`build_grader`
checks, then builds.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from tunesmith.rewards.json_text import first_json_object

GradeFn = Callable[[str, dict[str, Any]], Any]
TYPES = ("string_check", "text_similarity", "python", "multi")
MODEL_TYPES = ("score_model", "label_model")
OPERATIONS = ("eq", "ne", "like", "ilike")
METRICS = ("fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4",
           "rouge_5", "rouge_l")
REFUSED_METRICS = {"cosine": "it needs an embeddings model",
                   "meteor": "it needs NLTK's WordNet data, which tunesmith does not ship"}
FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil,
    "exp": math.exp, "sqrt": math.sqrt, "log": math.log}
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv, ast.Pow: operator.pow, ast.BitXor: operator.pow,
          ast.Mod: operator.mod}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_SOURCE = 256 * 1024  # characters of a python grader's source
MAX_FORMULA = 1000  # characters of calculate_output
TEMPLATE = re.compile(r"\{\{\s*(sample|item)((?:\.[\w-]+)*)\s*\}\}")
_NAME = re.compile(r"^[A-Za-z_]\w{0,63}$")
KNOWN_KEYS = {"string_check": {"type", "name", "input", "reference", "operation"},
              "text_similarity": {"type", "name", "input", "reference", "evaluation_metric",
                                  "pass_threshold"},
              "python": {"type", "name", "source", "image_tag", "pass_threshold"},
              "multi": {"type", "name", "graders", "calculate_output"}}


class GraderSpecError(ValueError):
    """A grader object that cannot be used; ``param`` is the field's dotted path."""

    def __init__(self, message: str, param: str = "") -> None:
        super().__init__(message)
        self.param = param


# -- checking (no code runs) ---------------------------------------------------------------
def check_grader(obj: Any, where: str = "", nested: bool = False) -> None:
    """Raise GraderSpecError naming the first problem of grader object ``obj``."""
    at = f"{where}." if where else ""
    if not isinstance(obj, dict):
        raise GraderSpecError(f"a grader must be an object with a 'type' ({', '.join(TYPES)})"
                              f", got {type(obj).__name__}", where)
    kind = obj.get("type")
    if kind in MODEL_TYPES:
        raise GraderSpecError(f"grader type {kind!r} needs a grader model, which tunesmith "
                              "does not run; use a python grader (source defining "
                              "grade(sample, item)) instead", f"{at}type")
    if kind not in TYPES or (nested and kind == "multi"):
        allowed = [t for t in TYPES if not (nested and t == "multi")]
        raise GraderSpecError(f"grader type {kind!r} is not supported; use one of "
                              f"{', '.join(allowed)}", f"{at}type")
    unknown = sorted(set(obj) - KNOWN_KEYS[kind])
    if unknown:
        raise GraderSpecError(f"unknown field {unknown[0]!r} for a {kind} grader (fields: "
                              f"{', '.join(sorted(KNOWN_KEYS[kind]))})", f"{at}{unknown[0]}")
    if "name" in obj and not isinstance(obj["name"], str):
        raise GraderSpecError("'name' must be a string", f"{at}name")
    if kind in ("string_check", "text_similarity"):
        for key in ("input", "reference"):
            _need_str(obj, key, at)
            _check_template(obj[key], f"{at}{key}")
    if kind == "string_check" and obj.get("operation") not in OPERATIONS:
        raise GraderSpecError(f"'operation' must be one of {', '.join(OPERATIONS)} (got "
                              f"{obj.get('operation')!r})", f"{at}operation")
    if kind == "text_similarity":
        metric = obj.get("evaluation_metric")
        if metric in REFUSED_METRICS:
            raise GraderSpecError(f"evaluation_metric {metric!r} is not supported: "
                                  f"{REFUSED_METRICS[metric]}; use one of {', '.join(METRICS)}",
                                  f"{at}evaluation_metric")
        if metric not in METRICS:
            raise GraderSpecError(f"'evaluation_metric' must be one of {', '.join(METRICS)} "
                                  f"(got {metric!r})", f"{at}evaluation_metric")
    if kind in ("text_similarity", "python") and obj.get("pass_threshold") is not None:
        value = obj["pass_threshold"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise GraderSpecError(f"'pass_threshold' must be a number (got {value!r})",
                                  f"{at}pass_threshold")
    if kind == "python":
        _check_source(obj, at)
    if kind == "multi":
        _check_multi(obj, at)


def _need_str(obj: dict[str, Any], key: str, at: str, limit: int | None = None) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise GraderSpecError(f"'{key}' must be a non-empty string (got {value!r})",
                              f"{at}{key}")
    if limit is not None and len(value) > limit:
        raise GraderSpecError(f"'{key}' is {len(value)} characters long; at most {limit} are "
                              "allowed", f"{at}{key}")
    return value


def _check_template(text: str, param: str) -> None:
    for m in re.finditer(r"\{\{(.*?)\}\}", text):
        ok = TEMPLATE.fullmatch(m.group(0))
        if ok and ok.group(1) == "sample":
            ok = ok.group(2).split(".")[1:2] in (["output_text"], ["output_json"],
                                                 ["output_tools"], ["choices"])
        if not ok:
            raise GraderSpecError(f"template {m.group(0)!r} is not one tunesmith fills: use "
                                  "{{sample.output_text}}, {{sample.output_json.KEY}} or "
                                  "{{item.FIELD}}", param)


def _check_source(obj: dict[str, Any], at: str) -> None:
    source = _need_str(obj, "source", at, MAX_SOURCE)
    if obj.get("image_tag") is not None and not isinstance(obj["image_tag"], str):
        raise GraderSpecError("'image_tag' must be a string", f"{at}image_tag")
    try:
        tree = ast.parse(source, filename="<grader source>")
    except SyntaxError as exc:
        raise GraderSpecError(f"the source does not parse: {exc.msg} at line {exc.lineno}",
                              f"{at}source") from None
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "grade"]
    if not defs:
        raise GraderSpecError("the source must define a top-level function "
                              "grade(sample, item) returning a number", f"{at}source")
    args = defs[-1].args
    if len(args.posonlyargs) + len(args.args) < 2 and args.vararg is None:
        raise GraderSpecError("grade must take two arguments: grade(sample, item)",
                              f"{at}source")


def _subgraders(obj: dict[str, Any], at: str) -> dict[str, Any]:
    graders = obj.get("graders")
    if isinstance(graders, dict) and "type" in graders and isinstance(graders["type"], str):
        name = graders.get("name")  # one grader, as the openai client's type describes it
        return {name if isinstance(name, str) else graders["type"]: graders}
    if not isinstance(graders, dict) or not graders:
        raise GraderSpecError("'graders' must be a non-empty object of named graders, e.g. "
                              '{"exact": {"type": "string_check", ...}}', f"{at}graders")
    return graders


def _check_multi(obj: dict[str, Any], at: str) -> None:
    graders = _subgraders(obj, at)
    for name, sub in graders.items():
        if not _NAME.match(name):
            raise GraderSpecError(f"grader name {name!r} must be an identifier (letters, "
                                  "digits, _) to be used in calculate_output",
                                  f"{at}graders.{name}")
        check_grader(sub, f"{at}graders.{name}", nested=True)
    formula = _need_str(obj, "calculate_output", at, MAX_FORMULA)
    try:
        tree = ast.parse(formula.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise GraderSpecError(f"calculate_output does not parse: {exc.msg}",
                              f"{at}calculate_output") from None
    for node in ast.walk(tree):
        problem = _formula_problem(node, set(graders))
        if problem:
            raise GraderSpecError(f"calculate_output: {problem}", f"{at}calculate_output")


def _formula_problem(node: ast.AST, names: set[str]) -> str | None:
    if isinstance(node, (ast.Expression, ast.Load, *BINARY, *UNARY)):
        return None
    if isinstance(node, ast.BinOp):
        return None if type(node.op) in BINARY else "only + - * / ^ and % are allowed"
    if isinstance(node, ast.UnaryOp):
        return None if type(node.op) in UNARY else "only unary + and - are allowed"
    if isinstance(node, ast.Constant):
        ok = isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        return None if ok else f"{node.value!r} is not a number"
    if isinstance(node, ast.Name):
        if node.id in names or node.id in FUNCTIONS:
            return None
        return f"{node.id!r} names no grader (graders: {', '.join(sorted(names))})"
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS and not node.keywords:
            return None
        return f"only the functions {', '.join(FUNCTIONS)} may be called"
    return f"{type(node).__name__} is not allowed (numbers, grader names, + - * / ^, " \
           f"{', '.join(FUNCTIONS)})"


# -- building ------------------------------------------------------------------------------
def build_grader(obj: dict[str, Any], allow_python: bool = True) -> GradeFn:
    """A grade function for OpenAI grader object ``obj`` (checked first)."""
    check_grader(obj)
    if not allow_python and uses_python(obj):
        raise GraderSpecError("python graders are disabled here", "type")
    return _build(obj)


def uses_python(obj: dict[str, Any]) -> bool:
    """Whether checked grader object ``obj`` runs user code (a python grader, or a multi
    grader holding one)."""
    if obj["type"] == "multi":
        return any(uses_python(g) for g in _subgraders(obj, "").values())
    return obj["type"] == "python"


def _build(obj: dict[str, Any]) -> GradeFn:
    kind = obj["type"]
    if kind == "string_check":
        return _string_check(obj)
    if kind == "text_similarity":
        return _text_similarity(obj)
    if kind == "python":
        return python_source_grader(obj["source"])
    return _multi(obj)


def sample_of(completion: str) -> dict[str, Any]:
    """OpenAI's ``sample`` for one completion: its text and the JSON object in it (or None)."""
    return {"output_text": completion, "output_json": first_json_object(completion),
            "output_tools": [], "choices": [{"index": 0, "message": {
                "role": "assistant", "content": completion}}]}


def render(template: str, sample: dict[str, Any], item: dict[str, Any]) -> str:
    """Fill ``{{sample.…}}`` / ``{{item.…}}``; KeyError naming a missing path."""
    def fill(m: re.Match[str]) -> str:
        value: Any = sample if m.group(1) == "sample" else item
        path = m.group(1)
        for part in m.group(2).split(".")[1:]:
            path += f".{part}"
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise KeyError(f"template {m.group(0)}: {path} does not exist")
        if value is None:
            raise KeyError(f"template {m.group(0)}: {path} is null")
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return TEMPLATE.sub(fill, template)


def _pair(obj: dict[str, Any], text: str, row: dict[str, Any]) -> tuple[str, str]:
    sample = sample_of(text)
    return render(obj["input"], sample, row), render(obj["reference"], sample, row)


def _string_check(obj: dict[str, Any]) -> GradeFn:
    op = obj["operation"]

    def grade(text: str, row: dict[str, Any]) -> float:
        got, want = _pair(obj, text, row)
        if op == "eq":
            return float(got == want)
        if op == "ne":
            return float(got != want)
        if op == "ilike":
            got, want = got.lower(), want.lower()
        return float(want in got)
    return grade


def _text_similarity(obj: dict[str, Any]) -> GradeFn:
    score = similarity(obj["evaluation_metric"])
    return lambda text, row: score(*_pair(obj, text, row))


def similarity(metric: str) -> Callable[[str, str], float]:
    """``(input, reference) -> score in [0, 1]`` for one of :data:`METRICS`."""
    if metric == "fuzzy_match":
        return lambda a, b: difflib.SequenceMatcher(None, a, b).ratio()
    if metric == "bleu":
        # deferred: sacrebleu is heavy and only this metric needs it
        from sacrebleu.metrics import BLEU

        bleu = BLEU(effective_order=True)
        return lambda a, b: bleu.sentence_score(a, [b]).score / 100.0
    if metric == "gleu":
        # deferred: nltk is heavy and only this metric needs it
        from nltk.translate.gleu_score import sentence_gleu

        return lambda a, b: float(sentence_gleu([b.split()], a.split()))
    # deferred: rouge_score is heavy and only these metrics need it
    from rouge_score.rouge_scorer import RougeScorer

    key = "rougeL" if metric == "rouge_l" else f"rouge{metric[-1]}"
    scorer = RougeScorer([key], use_stemmer=True)
    return lambda a, b: float(scorer.score(b, a)[key].fmeasure)


def python_source_grader(source: str) -> GradeFn:
    """Execute ``source`` (it must define ``grade(sample, item)``) and wrap its ``grade``.

    This runs the client's code with the training process's rights: the same trust as the
    ``python`` grader by import path, so only people allowed to train on the machine may
    send it (the jobs API: API key holders; see docs/fine-tuning-jobs.md for the switch that
    turns it off). It is not a sandbox."""
    namespace: dict[str, Any] = {"__name__": "tunesmith_python_grader"}
    try:
        exec(compile(source, "<python grader>", "exec"), namespace)  # noqa: S102 - trusted, see above
    except Exception as exc:  # noqa: BLE001 - any error of the client's module body
        raise GraderSpecError(f"running the source raised {type(exc).__name__}: {exc}",
                              "source") from None
    fn = namespace.get("grade")
    if not callable(fn):
        raise GraderSpecError("the source must define grade(sample, item)", "source")
    return lambda text, row: fn(sample_of(text), row)


def _multi(obj: dict[str, Any]) -> GradeFn:
    subs = {name: _build(sub) for name, sub in _subgraders(obj, "").items()}
    tree = ast.parse(obj["calculate_output"].replace("^", "**"), mode="eval")

    def grade(text: str, row: dict[str, Any]) -> float:
        values = {name: _number(fn(text, row), name) for name, fn in subs.items()}
        return _evaluate(tree.body, values)
    return grade


def _number(value: Any, name: str) -> float:
    if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
        return float(value)
    raise TypeError(f"grader {name} returned {value!r}, not a finite number")


def _evaluate(node: ast.AST, values: dict[str, float]) -> float:
    """The checked formula (see :func:`_formula_problem`) on the sub-graders' scores."""
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        return UNARY[type(node.op)](_evaluate(node.operand, values))
    if isinstance(node, ast.BinOp):
        return BINARY[type(node.op)](_evaluate(node.left, values),
                                     _evaluate(node.right, values))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return float(FUNCTIONS[node.func.id](*(_evaluate(a, values) for a in node.args)))
