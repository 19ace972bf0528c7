"""A fine-tuning job request → checked job fields and the ``RunConfig`` it trains with.

The request has OpenAI's shape (``model``, ``training_file``, ``validation_file``,
``hyperparameters`` or ``method: {type: supervised|dpo|reinforcement, <type>:
{hyperparameters}}``, ``suffix``, ``seed``, ``metadata``) plus an optional tunesmith extension,
``"tunesmith": {"section.key": value, ...}``, which overrides any key of the training config
(for example ``{"method.type": "full", "data.max_length": 256, "train.max_steps": 20}``).

``"auto"`` hyperparameters resolve to documented defaults once the training file's size is
known: ``n_epochs`` 3, ``batch_size`` min(8, examples), ``learning_rate_multiplier`` 1 (times
the base rate in ``config.schema.BASE_LR``: supervised 2e-4 for LoRA, 2e-5 for full/freeze;
dpo and reinforcement 5e-5 for LoRA, 1e-6 for full/freeze), ``beta`` 0.1.

Reinforcement jobs (``method.reinforcement: {grader, hyperparameters}``) train ``task: grpo``
with the OpenAI grader object as a grader of type ``openai``
(:mod:`tunesmith.rewards.openai_graders`); their ``"auto"`` values: ``n_epochs`` 1,
``batch_size`` min(4, examples) prompts, ``compute_multiplier`` 1 (G = round(4 x it),
at least 2, completions per prompt), ``eval_interval`` one evaluation per epoch (with a
validation file), ``eval_samples`` 1 and ``reasoning_effort`` "default" (both accepted and
ignored: evaluation is one greedy completion per prompt; the models do not reason on
request). Every problem becomes an ``APIError``
(400, or 404 for an unknown model or file) naming the parameter. Every value is bounded
(lengths, counts, finite numbers, storable text), and the base model is one the server may
train (:func:`resolve_base`).
"""

from __future__ import annotations

import math
import os
import random
import re
from pathlib import Path
from typing import Any

from tunesmith.config.load import validate_dict
from tunesmith.config.schema import BASE_LR, RunConfig
from tunesmith.data.templates import BUILTIN_TEMPLATES
from tunesmith.errors import ConfigError
from tunesmith.io import looks_like_hub_id
from tunesmith.models.registry import EMBEDDED
from tunesmith.recipes import RECIPES
from tunesmith.rewards.openai_graders import GraderSpecError, check_grader, uses_python
from tunesmith.serve import paths
from tunesmith.serve.api.errors import APIError, model_not_found, shown
from tunesmith.serve.api.schemas import text_problem
from tunesmith.serve.jobs.models import FileRow
from tunesmith.serve.settings import ServeSettings
from tunesmith.train.engine import plan_steps

MIN_TRAIN_EXAMPLES = 10  # OpenAI's minimum
AUTO = {"n_epochs": 3, "learning_rate_multiplier": 1.0, "beta": 0.1, "compute_multiplier": 1.0,
        "eval_samples": 1, "reasoning_effort": "default"}
AUTO_RL = {"n_epochs": 1}  # reinforcement: every epoch samples G completions per prompt
MAX_BATCH = {"reinforcement": 4}  # "auto" batch size: at most this many (others: 8)
BASE_GENERATIONS = 4  # G at compute_multiplier 1
TASK_OF_METHOD = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}
LR_OF_METHOD = {"supervised": "sft", "dpo": "dpo", "reinforcement": "dpo"}  # BASE_LR's rows
REASONING_EFFORTS = ("default", "low", "medium", "high")
PYTHON_GRADERS_ENV = "TUNESMITH_PYTHON_GRADERS"  # "0" / "off": refuse python graders
MAX_BASE_MODEL = 512  # characters of `model` (a directory path under --allow-base-dir)
MAX_FILE_ID = 64
MAX_METADATA = (16, 64, 512)  # pairs, characters of a key, of a value (OpenAI's limits)
MAX_OVERRIDES = (64, 128)  # keys of `tunesmith`, characters of one key
MAX_STEPS = 2 ** 31 - 1  # optimizer steps of one job (the step counters are SQL INTEGERs)
LIMITS = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256),
          "learning_rate_multiplier": (float, 1e-6, 10.0), "beta": (float, 1e-6, 2.0),
          "compute_multiplier": (float, 0.01, 16.0), "eval_interval": (int, 1, MAX_STEPS),
          "eval_samples": (int, 1, 1000)}
METHOD_HPARAMS = {"supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
                  "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta"),
                  "reinforcement": ("n_epochs", "batch_size", "learning_rate_multiplier",
                                    "compute_multiplier", "eval_interval", "eval_samples",
                                    "reasoning_effort")}
FILE_KIND = {"supervised": ("chat", "completion"), "dpo": ("preference",),
             "reinforcement": ("reinforcement",)}
FILE_HINT = {"reinforcement": " (rows of messages ending with a user message, with the fields "
             "the grader reads beside them)"}
DATA_FORMAT = {"chat": "messages", "completion": "prompt_completion"}  # dpo: recognised
RESERVED = ("name", "task", "output", "model.name", "model.trust_remote_code", "data.train",
            "data.validation", "data.format", "data.mixture", "grpo.graders",
            "grpo.prompt_field")
_SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_REPO_CHARS = re.compile(r"^[\w.-]+/[\w.-]+$")  # a hub id has no spaces, colons or slashes
_KNOWN = {"model", "training_file", "validation_file", "hyperparameters", "method", "suffix",
          "seed", "metadata", "integrations", "tunesmith"}


def dpo_available() -> bool:
    return "dpo" in RECIPES


def parse_request(body: Any) -> dict[str, Any]:
    """Check the request's types and shape; returns the fields a job row needs."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    _check_values(body, "")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {unknown[0]}",
                       param=unknown[0], code="unknown_parameter")
    for key in ("model", "training_file"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise APIError(400, f"Missing required parameter: '{key}'." if key not in body
                           else f"'{key}' must be a non-empty string.", param=key,
                           code="missing_required_parameter" if key not in body
                           else "invalid_type")
    _check_length(body, "model", MAX_BASE_MODEL)
    _check_length(body, "training_file", MAX_FILE_ID)
    _optional_str(body, "validation_file")
    _check_length(body, "validation_file", MAX_FILE_ID)
    suffix = _optional_str(body, "suffix")
    if suffix is not None and not _SUFFIX.match(suffix):
        raise APIError(400, "'suffix' must be 1-64 characters from letters, digits, '.', '_' "
                       f"and '-' (got {suffix!r}).", param="suffix", code="invalid_value")
    seed = body.get("seed")
    if seed is None:
        seed = random.randrange(2 ** 31)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 31:
        raise APIError(400, f"'seed' must be an integer between 0 and 2147483647 (got {seed!r}).",
                       param="seed", code="invalid_value")
    if body.get("integrations"):
        raise APIError(400, "Integrations (wandb) are not supported by tunesmith; metrics are in "
                       "the job's events and result file.", param="integrations",
                       code="unsupported_parameter")
    metadata = body.get("metadata")
    pairs, key_len, value_len = MAX_METADATA
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > pairs or any(
            not isinstance(v, str) or len(k) > key_len or len(v) > value_len
            for k, v in metadata.items())):
        raise APIError(400, f"'metadata' must be an object of at most {pairs} pairs: keys of at "
                       f"most {key_len} characters, string values of at most {value_len} "
                       f"(got {shown(metadata)}).", param="metadata", code="invalid_value")
    method_type, hparams = _method(body)
    overrides = body.get("tunesmith") or {}
    if not isinstance(overrides, dict):
        raise APIError(400, "'tunesmith' must be an object of config overrides, e.g. "
                       '{"train.max_steps": 20}.', param="tunesmith", code="invalid_type")
    n_keys, key_len = MAX_OVERRIDES
    if len(overrides) > n_keys or any(len(k) > key_len for k in overrides):
        raise APIError(400, f"'tunesmith' may hold at most {n_keys} config keys of at most "
                       f"{key_len} characters each (got {len(overrides)} keys).",
                       param="tunesmith", code="invalid_value")
    for key, value in overrides.items():
        # a whole section ("model": {...}) would set its reserved keys too ("model.name")
        if any(key == r or key.startswith(r + ".") or r.startswith(key + ".")
               for r in RESERVED):
            raise APIError(400, f"'tunesmith.{key}' cannot be overridden: the job sets it.",
                           param=f"tunesmith.{key}", code="invalid_value")
        if key.endswith("chat_template") and isinstance(value, str) \
                and value not in BUILTIN_TEMPLATES and "{" not in value:
            raise APIError(400, f"'tunesmith.{key}' must be a built-in template "
                           f"({', '.join(BUILTIN_TEMPLATES)}) or a Jinja string: a job cannot "
                           f"read a file of the server (got {shown(value)}).",
                           param=f"tunesmith.{key}", code="invalid_value")
    return {"model": body["model"], "training_file": body["training_file"],
            "validation_file": body.get("validation_file"), "suffix": suffix, "seed": seed,
            "metadata": metadata, "method_type": method_type, "hyperparameters": hparams,
            "overrides": overrides, "grader": _grader(body) if method_type == "reinforcement"
            else None}


def _check_values(value: Any, where: str) -> None:
    """Refuse what JSON cannot mean and no field can hold, wherever it is in the body: text
    with a NUL or an unpaired surrogate (PostgreSQL and UTF-8 refuse both) and the NaN or
    Infinity that Python's JSON parser accepts (a config would train on them)."""
    problem = None
    if isinstance(value, str):
        problem = text_problem(value)
    elif isinstance(value, float) and not math.isfinite(value):
        problem = f"{value!r} is not a number JSON allows; send a finite number"
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_values(key, where)
            _check_values(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_values(item, f"{where}.{i}")
    if problem:
        raise APIError(400, f"Invalid value for '{where or 'body'}': {problem}.",
                       param=where or None, code="invalid_value")


def _check_length(body: dict[str, Any], key: str, limit: int) -> None:
    value = body.get(key)
    if isinstance(value, str) and len(value) > limit:
        raise APIError(400, f"'{key}' is {len(value)} characters long; at most {limit} are "
                       f"allowed (got {shown(value)}).", param=key, code="invalid_value")


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise APIError(400, f"'{key}' must be a string (got {shown(value)}).", param=key,
                       code="invalid_type")
    return value


def _method(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(method type, requested hyperparameters) from ``method`` or legacy ``hyperparameters``."""
    legacy = body.get("hyperparameters")
    if legacy is not None and not isinstance(legacy, dict):
        raise APIError(400, "'hyperparameters' must be an object, e.g. {\"n_epochs\": 3} "
                       f"(got {shown(legacy)}).", param="hyperparameters", code="invalid_type")
    method = body.get("method")
    if method is None:
        method = {"type": "supervised", "supervised": {"hyperparameters": legacy or {}}}
    if not isinstance(method, dict) or not isinstance(method.get("type"), str):
        raise APIError(400, "'method' must be an object with a 'type' (supervised, dpo or "
                       "reinforcement).", param="method", code="invalid_value")
    kind = method["type"]
    if kind not in METHOD_HPARAMS:
        raise APIError(400, f"Method type {shown(kind)} is not supported; use 'supervised', "
                       "'dpo' or 'reinforcement'.",
                       param="method.type", code="invalid_value")
    if kind == "reinforcement" and "grpo" not in RECIPES:
        raise APIError(400, "Method 'reinforcement' needs the GRPO recipe (task: grpo), which "
                       "this tunesmith installation does not have.", param="method.type",
                       code="unsupported_method")
    if kind == "dpo" and not dpo_available():
        raise APIError(400, "Method 'dpo' needs the DPO recipe (task: dpo), which this "
                       "tunesmith installation does not have; use method type 'supervised'.",
                       param="method.type", code="unsupported_method")
    section = method.get(kind) or {}
    if not isinstance(section, dict):
        raise APIError(400, f"'method.{kind}' must be an object.", param=f"method.{kind}",
                       code="invalid_type")
    allowed = {"hyperparameters", "grader"} if kind == "reinforcement" else {"hyperparameters"}
    extra = sorted(set(section) - allowed)
    if extra:
        raise APIError(400, f"Unrecognized argument 'method.{kind}.{extra[0]}'; a {kind} "
                       f"method takes {' and '.join(sorted(allowed))}.",
                       param=f"method.{kind}.{extra[0]}", code="unknown_parameter")
    requested = section.get("hyperparameters") or {}
    where = f"method.{kind}.hyperparameters" if body.get("method") is not None \
        else "hyperparameters"
    if not isinstance(requested, dict):
        raise APIError(400, f"'{where}' must be an object.", param=where, code="invalid_type")
    if legacy and body.get("method") is not None:
        if kind != "supervised":
            raise APIError(400, "Top-level 'hyperparameters' only apply to supervised jobs; "
                           f"put them in method.{kind}.hyperparameters.",
                           param="hyperparameters", code="invalid_value")
        requested = {**legacy, **requested}
    for key, value in requested.items():
        if key not in METHOD_HPARAMS[kind]:
            raise APIError(400, f"Unknown hyperparameter {shown(key)} for {kind} jobs; use "
                           f"{', '.join(METHOD_HPARAMS[kind])}.", param=f"{where}.{key}",
                           code="invalid_value")
        _check_hparam(key, value, f"{where}.{key}")
    return kind, {k: requested.get(k, "auto") for k in METHOD_HPARAMS[kind]}


def _grader(body: dict[str, Any]) -> dict[str, Any]:
    """The checked grader object of a reinforcement job (no code runs here)."""
    where = "method.reinforcement.grader"
    grader = (body["method"].get("reinforcement") or {}).get("grader")
    if grader is None:
        raise APIError(400, f"Missing required parameter: '{where}' (a string_check, "
                       "text_similarity, python or multi grader object).", param=where,
                       code="missing_required_parameter")
    try:
        check_grader(grader)
    except GraderSpecError as exc:
        param = f"{where}.{exc.param}" if exc.param else where
        raise APIError(400, f"Invalid grader at '{param}': {exc}.", param=param,
                       code="invalid_value") from None
    return grader


def python_graders_allowed(settings: ServeSettings) -> bool:
    """Whether this server runs python graders (the client's code, in the job's training
    process): yes unless ``settings.extra["python_graders"]`` is false or the environment
    sets TUNESMITH_PYTHON_GRADERS to 0/false/off/no."""
    if "python_graders" in settings.extra:
        return bool(settings.extra["python_graders"])
    return os.environ.get(PYTHON_GRADERS_ENV, "1").strip().lower() not in (
        "0", "false", "off", "no")


def check_python_allowed(settings: ServeSettings, grader: dict[str, Any] | None) -> None:
    if grader is not None and uses_python(grader) and not python_graders_allowed(settings):
        raise APIError(400, "Python graders are disabled on this server (they run the "
                       f"client's code; its operator set {PYTHON_GRADERS_ENV}=0). Use "
                       "string_check, text_similarity or multi graders.",
                       param="method.reinforcement.grader", code="python_grader_disabled")


def _check_hparam(key: str, value: Any, param: str) -> None:
    if value == "auto" or value is None:
        return
    if key == "reasoning_effort":
        if value not in REASONING_EFFORTS:
            raise APIError(400, f"'{param}' must be one of {', '.join(REASONING_EFFORTS)} "
                           f"(got {shown(value)}).", param=param, code="invalid_value")
        return
    typ, lo, hi = LIMITS[key]
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if typ is float else int)
    if not ok or not lo <= value <= hi:
        kind = "an integer" if typ is int else "a number"
        raise APIError(400, f"'{param}' must be \"auto\" or {kind} between {lo:g} and {hi:g} "
                       f"(got {shown(value)}).", param=param, code="invalid_value")


def resolve_hparams(requested: dict[str, Any], n_train: int, method: str = "supervised"
                    ) -> dict[str, Any]:
    """Replace ``"auto"`` by the documented defaults (``eval_interval``: None, one
    evaluation per epoch)."""
    auto = {**AUTO, **(AUTO_RL if method == "reinforcement" else {})}
    out = {}
    for key, value in requested.items():
        if value in ("auto", None):
            value = (min(MAX_BATCH.get(method, 8), n_train) if key == "batch_size"
                     else auto.get(key))
        out[key] = value
    return out


def check_file(row: FileRow | None, file_id: str, param: str, method: str) -> FileRow:
    if row is None:
        raise APIError(404, f"File {file_id} not found.", param=param, code="file_not_found")
    if row.purpose != "fine-tune":
        raise APIError(400, f"File {file_id} has purpose {row.purpose!r}; fine-tuning needs "
                       "a file uploaded with purpose 'fine-tune'.", param=param,
                       code="invalid_file_purpose")
    if row.kind not in FILE_KIND[method]:
        need = " or ".join(FILE_KIND[method])
        raise APIError(400, f"File {file_id} holds {row.kind} examples but {method} jobs need "
                       f"{need} examples{FILE_HINT.get(method, '')}.", param=param,
                       code="invalid_file_format")
    if param == "training_file" and row.rows < MIN_TRAIN_EXAMPLES:
        raise APIError(400, f"Training file {file_id} has {row.rows} example(s), but must have "
                       f"at least {MIN_TRAIN_EXAMPLES} examples.", param=param,
                       code="invalid_training_file")
    return row


def resolve_base(settings: ServeSettings, served: dict[str, Any], model: str) -> str:
    """What ``model.name`` gets, from what a job may train: a fine-tuned model of this server
    (its run dir), a served model (the source it was loaded from), an embedded model, a
    directory under ``settings.allow_base_dirs``, or a hub id.

    Anything else is the same 404 whether or not such a path exists on the server, so that
    the answer tells a client nothing about the server's files (a client that could name any
    directory could also train on, and so read, any model or data the server can)."""
    found = paths.resolve_model_name(settings.data_dir, model)
    if found is not None:
        return str(found)
    handle = served.get(model)
    if handle is not None:
        if handle.kind != "lm":
            raise APIError(400, f"Model {model} is a classifier; fine-tuning jobs train chat "
                           "models.", param="model", code="invalid_model")
        return str(handle.source)
    if model in EMBEDDED:
        if EMBEDDED[model].kind != "causal-lm":
            raise APIError(400, f"Model {model} is an encoder; fine-tuning jobs train chat "
                           "models.", param="model", code="invalid_model")
        return model
    allowed = settings.allowed_base_dir(model)
    if allowed is not None:
        return str(allowed)
    if looks_like_hub_id(model) and _REPO_CHARS.match(model):
        return model
    raise model_not_found(model)


def build_config(job_id: str, data_dir: Path, base: str, method: str,
                 hparams: dict[str, Any], seed: int, train_file: FileRow,
                 val_file: FileRow | None, overrides: dict[str, Any],
                 grader: dict[str, Any] | None = None) -> dict[str, Any]:
    """The raw training config (validated here, stored on the job, re-validated by the worker)."""
    raw: dict[str, Any] = {
        "name": job_id, "task": TASK_OF_METHOD[method],
        "model": {"name": base},
        "method": {"type": "lora"},
        "data": {"train": str(paths.file_path(data_dir, train_file.id))},
        "train": {"epochs": float(hparams["n_epochs"]), "batch_size": hparams["batch_size"],
                  "seed": seed},
        "output": {"dir": str(paths.job_run_dir(data_dir, job_id).parent), "tensorboard": False},
    }
    if train_file.kind in DATA_FORMAT:
        raw["data"]["format"] = DATA_FORMAT[train_file.kind]
    if val_file is not None:
        raw["data"]["validation"] = str(paths.file_path(data_dir, val_file.id))
    if method == "dpo":
        raw["dpo"] = {"beta": hparams["beta"]}
    if method == "reinforcement":
        assert grader is not None
        raw["grpo"] = {"prompt_field": "messages", "num_generations": max(
            2, round(BASE_GENERATIONS * hparams["compute_multiplier"])), "graders": [
            {"type": "openai", "name": grader.get("name") or grader["type"], "openai": grader}]}
    for key, value in overrides.items():
        _set(raw, key, value)
    lr_given = "train.lr" in overrides
    cfg = _validate(raw)
    if not lr_given:
        raw["train"]["lr"] = (BASE_LR[LR_OF_METHOD[method]][cfg.method.type]
                              * hparams["learning_rate_multiplier"])
    cfg = _validate(raw)
    per_epoch, total = _plan(train_file.rows, cfg)
    if "train.save_every" not in overrides:  # a resumable checkpoint per epoch, like OpenAI
        raw["train"]["save_every"] = max(1, min(per_epoch, total))
        raw["train"].setdefault("keep_last", 3)
        if val_file is not None and "train.eval_every" not in overrides:
            raw["train"]["eval_every"] = raw["train"]["save_every"]
    if hparams.get("eval_interval") and val_file is not None \
            and "train.eval_every" not in overrides:
        raw["train"]["eval_every"] = hparams["eval_interval"]
    _validate(raw)
    return raw


def _plan(n_train: int, cfg: RunConfig) -> tuple[int, int]:
    """(steps per epoch, total steps); a job too long to count its steps is refused."""
    try:
        per_epoch, total = plan_steps(n_train, cfg)
    except OverflowError:  # epochs x steps per epoch beyond a float
        per_epoch, total = 0, MAX_STEPS + 1
    if total > MAX_STEPS:
        raise APIError(400, f"This job would take more than {MAX_STEPS} optimizer steps "
                       f"(train.epochs {cfg.train.epochs:g}, train.max_steps "
                       f"{cfg.train.max_steps}); lower them.", param="tunesmith",
                       code="invalid_value")
    return per_epoch, total


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _validate(raw: dict[str, Any]) -> RunConfig:
    try:
        return validate_dict(raw, source="fine-tuning job")
    except ConfigError as exc:
        detail = "; ".join(exc.problems) or exc.what
        raise APIError(400, f"Invalid training configuration: {detail}", param="tunesmith",
                       code="invalid_value") from None
