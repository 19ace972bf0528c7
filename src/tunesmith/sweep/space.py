"""The search space of a sweep: ``--param`` specs parsed, checked and sampled.

A spec is ``section.key=VALUES``:

- ``a,b,c`` (or ``a|b|c`` when a value holds commas, e.g. ``[q_proj,v_proj]|[q_proj,k_proj]``):
  one of these values;
- ``LOW:HIGH``: a float, uniform; ``log:LOW:HIGH``: a float, log-uniform (learning rates);
- ``int:LOW:HIGH``: an integer, both ends included.

Each value is applied exactly like a ``section.key=value`` override of ``tunesmith train``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from tunesmith.errors import UsageError

RESERVED = ("name", "output.dir")  # every trial sets these itself
FIX = ("e.g. --param train.lr=log:1e-5:1e-3, --param method.r=int:4:32 or "
       "--param method.r=8,16,32")


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # "choice", "float", "log", "int"
    choices: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 0.0

    def candidates(self) -> list[str]:
        """Values that span the space (every choice, or both ends): each is checked against
        the config before the first trial trains."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [str(int(self.low)), str(int(self.high))]
        return [repr(self.low), repr(self.high)]

    def sample(self, trial: Any) -> str:
        """This parameter's value for an Optuna trial, as override text."""
        if self.kind == "choice":
            return str(trial.suggest_categorical(self.key, list(self.choices)))
        if self.kind == "int":
            return str(trial.suggest_int(self.key, int(self.low), int(self.high)))
        value = trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")
        return f"{value:.4g}"  # 4 significant digits: what a person would write

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} in {{{', '.join(self.choices)}}}"
        scale = {"log": "log-uniform", "float": "uniform", "int": "integer"}[self.kind]
        return f"{self.key} {scale} in [{self.low:g}, {self.high:g}]"


def parse_param(spec: str) -> Param:
    """Parse one ``--param`` spec or raise a UsageError naming it."""
    where = f"--param {spec}"
    key, sep, text = spec.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key or not text:
        raise UsageError("a sweep parameter must look like section.key=VALUES", where=where,
                         got=spec, fix=FIX)
    if key in RESERVED:
        raise UsageError(f"{key} cannot be swept: each trial sets it", where=where, got=spec,
                         fix="sweep training settings (train.*, method.*, ...)")
    head, _, rest = text.partition(":")
    if head in ("log", "int") or (rest and "," not in text and "|" not in text):
        return _parse_range(key, head, rest, text, where)
    choices = tuple(v.strip() for v in text.split("|" if "|" in text else ","))
    if len(choices) < 2 or any(not c for c in choices):
        raise UsageError("a list of choices needs two or more non-empty values", where=where,
                         got=text, fix=FIX)
    if len(set(choices)) != len(choices):
        raise UsageError("a value is listed twice", where=where, got=text, fix="list each once")
    return Param(key, "choice", choices=choices)


def _parse_range(key: str, head: str, rest: str, text: str, where: str) -> Param:
    kind = head if head in ("log", "int") else "float"
    ends = rest.split(":") if kind != "float" else text.split(":")
    if len(ends) != 2:
        raise UsageError("a range must be LOW:HIGH, log:LOW:HIGH or int:LOW:HIGH", where=where,
                         got=text, fix=FIX)
    try:
        low, high = (yaml.safe_load(e) for e in ends)
        if isinstance(low, bool) or isinstance(high, bool):
            raise TypeError
        low, high = (int(v) if kind == "int" else float(v) for v in (low, high))
        if kind == "int" and not all(float(e) == int(float(e)) for e in ends):
            raise ValueError
    except (TypeError, ValueError, yaml.YAMLError):
        raise UsageError(f"the ends of this range must be {'integers' if kind == 'int' else 'numbers'}",
                         where=where, got=text, fix=FIX) from None
    if not low < high:
        raise UsageError("the low end of a range must be below the high end", where=where,
                         got=text, fix="e.g. 1e-5:1e-3")
    if kind == "log" and low <= 0:
        raise UsageError("a log-uniform range must be positive", where=where, got=text,
                         fix="e.g. log:1e-5:1e-3")
    return Param(key, kind, low=low, high=high)


def parse_space(specs: list[str]) -> list[Param]:
    """All ``--param`` specs; at least one, each key once."""
    if not specs:
        raise UsageError("a sweep needs at least one --param", where="--param", fix=FIX)
    params = [parse_param(s) for s in specs]
    keys = [p.key for p in params]
    for key in keys:
        if keys.count(key) > 1:
            raise UsageError("a key is swept twice", where=f"--param {key}", got=key,
                             fix="give each key one --param")
    return params
