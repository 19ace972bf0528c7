"""Load a YAML config, apply ``section.key=value`` overrides and validate it.

Every problem is reported at once in a single ``ConfigError``: the field path, the value
given, what is wrong and the fix; an unknown key suggests the nearest valid one.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunesmith.config.schema import RunConfig
from tunesmith.errors import ConfigError


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None
                ) -> RunConfig:
    """Read ``path`` (or start from defaults when None), apply overrides, validate."""
    raw = load_raw(path, overrides)
    return validate_dict(raw, source="command line" if path is None else str(path))


def load_raw(path: str | os.PathLike[str] | None, overrides: list[str] | None = None
             ) -> dict[str, Any]:
    """The config as written (``path``, or nothing) with ``overrides`` applied, unvalidated:
    what a derived config file (a sweep's best.yaml) is written from."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides or []:
        _apply_override(raw, item)
    return raw


def validate_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict into a RunConfig or raise one ConfigError listing every problem."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = _merge_union_members([_describe(err, raw) for err in exc.errors()])
        raise ConfigError(f"invalid configuration ({len(problems)} problem"
                          f"{'s' if len(problems) != 1 else ''})", where=source,
                          problems=problems) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError("config file not found", where=str(path),
                          fix="check the path; example configs are in configs/")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"config is not valid YAML ({getattr(exc, 'problem', exc)})",
                          where=where, fix="fix the YAML syntax (indentation, colons, quotes)"
                          ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping of sections", where=str(path),
                          got=type(data).__name__, fix="start with e.g. `model:` / `train:`")
    return data


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError("override must look like section.key=value", where="command line",
                          got=item, fix="e.g. train.lr=1e-4")
    key, _, text = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError("override has an empty key", where="command line", got=item,
                          fix="e.g. train.lr=1e-4")
    value = yaml.safe_load(text) if text.strip() else None
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


# pydantic names the member of a union that failed inside ``loc`` (e.g. ``constrained-int``,
# ``literal['auto']``); such parts are not config keys
_UNION_MEMBER = re.compile(r"^(function-|tagged-|constrained-|literal\[)|"
                           r"^(int|float|str|bool|none|list\[.*\]|dict\[.*\]|tuple\[.*\])$")


def _merge_union_members(problems: list[str]) -> list[str]:
    """One line per field: the failures of a union's members joined with "or"."""
    merged: dict[str, str] = {}
    for text in problems:
        head, sep, msg = text.partition(": ")
        if sep and head in merged:
            merged[head] += f", or {msg[0].lower()}{msg[1:]}"
        else:
            merged[head if sep else text] = text
    return list(merged.values())


def _describe(err: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"] if not _UNION_MEMBER.match(str(p))]
    path = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent, name = loc[:-1], loc[-1]
        valid = _fields_at(parent)
        near = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
        hint = f"did you mean `{'.'.join(parent + [near[0]])}`?" if near else \
            f"valid keys here: {', '.join(valid)}"
        return f"{path}: unknown key — {hint}"
    value = _lookup(raw, loc)
    shown = "" if value is _MISSING else f" (got {value!r})"
    msg = err["msg"]
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{path}{shown}: must be one of {expected}"
    if kind == "value_error" and not loc:
        return f"{msg.removeprefix('Value error, ')} — change one of those fields"
    return f"{path}{shown}: {msg}"


_MISSING = object()


def _lookup(raw: Any, loc: list[str]) -> Any:
    node = raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _fields_at(path: list[str]) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in path:
        info = model.model_fields.get(part)
        if info is None:
            return []
        ann = info.annotation
        sub = _model_in(ann)
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def _model_in(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def config_to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (written to each run directory)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
