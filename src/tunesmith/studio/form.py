"""The New-run form, generated from ``config.schema.RunConfig``.

Every field of the schema is one input, named by its dotted path (``train.lr``), with the
field's ``description`` as help text and its default shown. Each input holds YAML text, and
the form is read exactly as the CLI reads overrides: ``path=text`` parsed with
``yaml.safe_load`` (``config.load.load_raw``), applied over the starting config (a shipped
YAML file or an earlier run's ``config.yaml``) and validated by ``config.load.validate_dict``
— the validator of ``tunesmith train`` and ``tunesmith validate``. So the command the page
shows (``tunesmith train START.yaml key=value ...``) is the form, and every problem comes
back with its field path, which puts it beside its input.
"""

from __future__ import annotations

import copy
import re
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel

from tunesmith.config.load import config_to_yaml, load_raw, validate_dict
from tunesmith.config.schema import RunConfig
from tunesmith.errors import ConfigError
from tunesmith.io import looks_like_hub_id
from tunesmith.models.registry import EMBEDDED

OPEN_SECTIONS = ("", "model", "method", "data", "train")
TASK_SECTIONS = {"classification": "classification", "dpo": "dpo", "distill": "distill"}
_PATH = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)(?= \(got|:| )")


@dataclass
class Field:
    """One input of the form."""

    path: str
    help: str
    default_text: str
    choices: list[str] | None = None  # a select (Literal, bool)
    multiline: bool = False  # lists of objects (data.mixture): a YAML text area


@dataclass
class Section:
    name: str  # "" is the top level (name, task)
    title: str
    help: str
    fields: list[Field] = field(default_factory=list)


def yaml_text(value: Any) -> str:
    """A value as the text a user would type after ``key=`` (round-trips through YAML)."""
    if value is None:
        return "null"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _unwrap(ann: Any) -> list[Any]:
    """The members of a union / Optional / Annotated annotation."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(ann)[0])
    if origin in (Union, types.UnionType):
        return [m for a in typing.get_args(ann) for m in _unwrap(a)]
    return [ann]


def _choices(members: list[Any]) -> list[str] | None:
    values: list[str] = []
    for m in members:
        if m is type(None):
            values.append("null")
        elif typing.get_origin(m) is Literal:
            values += [yaml_text(v) for v in typing.get_args(m)]
        elif m is bool:
            values += ["true", "false"]
        else:
            return None  # free text (a number, a string) is allowed too
    return values


def _fields(model: type[BaseModel], prefix: str, out: list[Field]) -> None:
    defaults = model.model_construct()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        members = [m for m in _unwrap(info.annotation) if m is not type(None)]
        sub = next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)),
                   None)
        if sub is not None:
            _fields(sub, path + ".", out)  # e.g. train.early_stopping.*, method.unfreeze.*
            continue
        default = getattr(defaults, name, None)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        nested_list = any(isinstance(a, type) and issubclass(a, BaseModel)
                          for m in members for a in typing.get_args(m))
        out.append(Field(path=path, help=info.description or "",
                         default_text=yaml_text(default),
                         choices=_choices(_unwrap(info.annotation)),
                         multiline=nested_list))


def build_sections() -> list[Section]:
    """The form's sections, in the schema's order (top-level fields first)."""
    every: list[Field] = []
    _fields(RunConfig, "", every)
    top = Section("", "Run", "What to train and where its outputs go.",
                  [f for f in every if "." not in f.path])
    sections = [top]
    for name, info in RunConfig.model_fields.items():
        inside = [f for f in every if f.path.startswith(name + ".")]
        if inside:
            sub = next(m for m in _unwrap(info.annotation) if isinstance(m, type))
            sections.append(Section(name, name, info.description or (sub.__doc__ or "").strip(),
                                    inside))
    return sections


SECTIONS = build_sections()
FIELDS = {f.path: f for s in SECTIONS for f in s.fields}


_ABSENT = object()


def _get(raw: Any, path: str) -> Any:
    """The value at a dotted path, or ``_ABSENT``."""
    node = raw
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def start_values(raw: dict[str, Any]) -> dict[str, str]:
    """The text each input shows for a starting config: its value there, else the default."""
    values = {p: _get(raw, p) for p in FIELDS}
    return {p: f.default_text if values[p] is _ABSENT else yaml_text(values[p])
            for p, f in FIELDS.items()}


@dataclass
class FormResult:
    """What the page shows for one state of the form."""

    overrides: list[str]  # `path=text`, in form order
    raw: dict[str, Any] | None
    yaml: str | None
    command: str
    field_problems: dict[str, list[str]]
    other_problems: list[str]

    @property
    def ok(self) -> bool:
        return self.yaml is not None and not self.field_problems and not self.other_problems


def evaluate(start_path: str | None, start_raw: dict[str, Any],
             values: dict[str, str], check_paths: bool = True) -> FormResult:
    """Apply the inputs that differ from the start as overrides; validate like the CLI."""
    base = start_values(start_raw)
    overrides = [f"{p}={values[p]}" for p in FIELDS
                 if p in values and values[p].strip() != base[p]]
    command = "tunesmith train " + (shlex.quote(start_path) if start_path else "CONFIG.yaml")
    command += "".join(" " + shlex.quote(o) for o in overrides)
    field_problems: dict[str, list[str]] = {}
    other: list[str] = []
    text = None
    raw, problems = _apply(start_raw, overrides)
    try:
        text = config_to_yaml(validate_dict(raw, source="studio form"))
    except ConfigError as exc:
        problems += exc.problems or [exc.what]
    if check_paths:  # as `tunesmith validate`, even while other fields are wrong
        problems += missing_paths(raw)
    for problem in problems:
        path = _problem_path(problem)
        if path is not None:
            field_problems.setdefault(path, []).append(problem)
        else:
            other.append(problem)
    return FormResult(overrides, raw, text if not problems else None, command, field_problems,
                      other)


def _apply(start_raw: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The start with the overrides applied (``config.load.load_raw``, one by one so that
    text that is not YAML is reported on its own field)."""
    merged = copy.deepcopy(start_raw)
    problems = []
    for item in overrides:
        try:
            _merge(merged, load_raw(None, [item]))
        except yaml.YAMLError as exc:
            key = item.partition("=")[0]
            problems.append(f"{key}: not a YAML value ({getattr(exc, 'problem', exc)}) — quote "
                            "text that contains ':', '#', '[' or '{'")
    return merged, problems


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _problem_path(problem: str) -> str | None:
    match = _PATH.match(problem)
    if not match:
        return None
    path = match.group(1)
    while path and path not in FIELDS:  # an unknown key's parent, a list item's field
        path = path.rpartition(".")[0]
    return path or None


def missing_paths(raw: dict[str, Any]) -> list[str]:
    """What ``tunesmith validate`` adds to the schema: data files and the model must exist."""
    problems = []
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    for key in ("train", "validation"):
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).exists() \
                and not looks_like_hub_id(value):
            problems.append(f"data.{key}: file not found: {value} (relative to {Path.cwd()})")
    if not data.get("train") and not data.get("mixture"):
        problems.append("data.train: no training data given — upload a file on the Datasets "
                        "page and use its path, or give a path on the server")
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    name = model.get("name", FIELDS["model.name"].default_text)
    if isinstance(name, str) and name not in EMBEDDED and not Path(name).expanduser().exists() \
            and not looks_like_hub_id(name):
        problems.append(f"model.name: not an embedded model, directory or hub id: {name}")
    return problems
