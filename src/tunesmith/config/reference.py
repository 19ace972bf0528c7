"""Print the config reference (every key, type, default, description) as Markdown.

``python -m tunesmith.config.reference`` regenerates the README's reference table; a test
checks the README lists every key.
"""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from tunesmith.config.schema import RunConfig


def rows(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    out = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _submodel(info.annotation)
        if sub is not None and info.description is None:
            out += rows(sub, key + ".")
            continue
        if sub is not None:
            out.append((key, "section", "", info.description or ""))
            out += rows(sub, key + ".")
            continue
        default: Any = "required" if info.is_required() else _fmt(
            info.get_default(call_default_factory=True))
        out.append((key, _type_name(info.annotation), default, info.description or ""))
    return out


def markdown() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, desc in rows():
        lines.append(f"| `{key}` | {typ} | {default} | {desc.replace('|', '/')} |")
    return "\n".join(lines)


def _submodel(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _type_name(ann: Any) -> str:
    """A readable type: ``int (>= 8) or 'auto' or null``, never a raw typing repr."""
    origin, args = get_origin(ann), get_args(ann)
    if ann is type(None):
        return "null"
    if origin is Annotated:
        bounds = [f"{sym} {getattr(m, attr)}" for m in args[1:] for attr, sym in _BOUNDS
                  if hasattr(m, attr)]
        return _type_name(args[0]) + (f" ({', '.join(bounds)})" if bounds else "")
    if origin in (Union, UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, set):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "")


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, BaseModel):
        return ""
    return f"`{value}`"


if __name__ == "__main__":
    print(markdown())
