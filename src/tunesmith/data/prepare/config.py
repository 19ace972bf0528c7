"""Options of ``tunesmith data prepare``: one pydantic model, loadable from YAML.

The same model backs the command-line flags and ``--config FILE``: the file is read first,
then every flag the user actually gave overrides it (flags default to ``None`` so "not
given" and "given the default value" can be told apart). A mistake in either becomes one
``ConfigError`` naming the field path, the value and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.errors import ConfigError

FormatName = Literal["auto", "preference", "messages", "alpaca", "prompt_completion",
                     "classification", "text", "token_classification", "extractive_qa"]
PiiKind = Literal["email", "phone", "ip", "card"]
SPLIT_NAMES = ("train", "validation", "test")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CleanConfig(_Section):
    unicode: Literal["NFC", "NFKC", "none"] = Field(
        "NFC", description="Unicode normal form applied to every text field (NFKC also folds "
        "full-width and compatibility characters; 'none' keeps text as is).")
    fix_mojibake: bool = Field(True, description="Repair UTF-8 text that was decoded as "
                               "Latin-1/cp1252 (e.g. 'cafÃ©' -> 'café') with ftfy.")
    remove_control: bool = Field(True, description="Delete control characters (except tab "
                                 "and newline) and invisible zero-width spaces / BOMs.")
    whitespace: bool = Field(True, description="Normalise line ends and odd spaces, strip "
                             "trailing spaces, at most one blank line in a row, trim ends.")
    strip_html: bool = Field(False, description="Remove HTML tags and decode entities. Off by "
                             "default: it would also eat code such as 'vector<int>'.")
    min_chars: int = Field(1, ge=0, description="Drop rows whose text (all text fields "
                           "together) is shorter than this many characters after cleaning.")
    max_chars: int | None = Field(None, ge=1, description="Drop rows whose text is longer "
                                  "than this many characters (none: no limit).")


class DedupConfig(_Section):
    exact: bool = Field(True, description="Drop rows whose normalised text (case, spacing and "
                        "Unicode form ignored) repeats an earlier row.")
    near: bool = Field(True, description="Drop near-duplicates found with MinHash LSH.")
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="Estimated Jaccard similarity "
                             "of character n-gram sets above which two rows are near-duplicates.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: "
                          "more accurate estimates, slower).")
    ngram: int = Field(5, ge=1, le=32, description="Character n-gram (shingle) size.")
    seed: int = Field(1, description="Seed of the MinHash permutations.")


class PiiConfig(_Section):
    enabled: bool = Field(False, description="Replace personal data with placeholders.")
    kinds: list[PiiKind] = Field(default_factory=lambda: ["email", "phone", "ip", "card"],
                                 description="Which kinds of personal data to scrub.")
    placeholder: str = Field("[{KIND}]", description="Replacement text; {KIND} becomes "
                             "EMAIL, PHONE, IP or CARD.")


class SplitConfig(_Section):
    train: float = Field(0.9, ge=0.0, le=1.0, description="Share of rows for train.")
    validation: float = Field(0.05, ge=0.0, le=1.0, description="Share for validation.")
    test: float = Field(0.05, ge=0.0, le=1.0, description="Share for test.")
    seed: int = Field(42, description="Seed of the split; the same seed and data give the "
                      "same split whatever the row order.")
    stratify_by: str | None = Field("auto", description="Field whose value proportions every "
                                    "split keeps ('auto': the label for classification data; "
                                    "null: no stratification).")
    group_by: str | None = Field(None, description="Field (dotted path for nested values) "
                                 "whose rows always land in the same split.")

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios train+validation+test must add up to 1, got {total:g}")
        return self

    def ratios(self) -> dict[str, float]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


class ContaminationConfig(_Section):
    enabled: bool = Field(True, description="Check train rows against the evaluation rows "
                          "(validation, test and eval_files).")
    ngram: int = Field(13, ge=3, le=32, description="Word n-gram length counted as overlap.")
    min_exact_words: int = Field(3, ge=1, description="Identical text fields with fewer "
                                 "words than this (e.g. 'Yes.') are not counted as "
                                 "contamination.")
    eval_files: list[str] = Field(default_factory=list, description="Extra evaluation files "
                                  "(any supported format) to check the train split against.")
    remove: bool = Field(False, description="Drop contaminated train rows instead of only "
                         "reporting them.")


class TagsConfig(_Section):
    """How NER rows (``token_classification``: ``tokens`` + ``ner_tags``) are read, as the
    training section of the same name reads them."""

    labels: list[str] | None = Field(None, description="Tag names in id order, for integer "
                                     "ner_tags (the hub dataset's feature names); with it, "
                                     "tag names outside the list are errors.")
    scheme: Literal["auto", "iob2", "iob1", "iobes"] = Field(
        "auto", description="Tag scheme; 'auto' detects it from the first 1,000 rows.")
    invalid_tags: Literal["repair", "error"] = Field(
        "repair", description="An I- tag without its B-: 'repair' keeps the row (training "
        "reads the tag as B-; counted and listed), 'error' rejects the row.")


class PrepareConfig(_Section):
    """Everything ``tunesmith data prepare`` does, section by section."""

    kind: Literal["data-prepare"] = Field("data-prepare", description="Marks this YAML as a "
                                          "data-preparation config (not a training config).")
    inputs: list[str] = Field(default_factory=list, description="Input files or directories.")
    output: str | None = Field(None, description="Output directory (created; must not exist "
                               "unless overwrite is true).")
    output_format: Literal["jsonl", "parquet"] = Field("jsonl", description="File format of "
                                                      "the split files.")
    overwrite: bool = Field(False, description="Replace an existing output directory.")
    format: FormatName = Field("auto", description="Record format; 'auto' detects it from the "
                               "first rows.")
    label_field: str = Field("label", description="Field holding the class label "
                             "(classification data).")
    strict: bool = Field(False, description="Fail on the first bad row instead of reporting "
                         "and skipping it.")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig)
    token_classification: TagsConfig = Field(default_factory=TagsConfig)

    @field_validator("format", mode="before")
    @classmethod
    def _chat_is_messages(cls, value: object) -> object:
        return "messages" if value == "chat" else value  # the name before one vocabulary

    @field_validator("label_field")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value


def build_config(raw: dict[str, Any], source: str = "options") -> PrepareConfig:
    """Validate a nested dict into a ``PrepareConfig``, or raise one ``ConfigError``."""
    try:
        return PrepareConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"]) or "(top level)"
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            problems.append(f"{path}: {err['msg']}{shown}")
        raise ConfigError(f"invalid data-prepare configuration in {source}", where=source,
                          problems=problems,
                          fix="correct the fields listed; see docs/data-prepare.md for every "
                          "option") from None


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config into a dict; relative input/eval paths are made relative to it."""
    # deferred: yaml is heavy and only this path needs it
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError("config file not found", where=str(file),
                          fix="check the path given to --config")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else str(file)
        raise ConfigError("config file is not valid YAML", where=where, got=str(exc).split("\n")[0],
                          fix="fix the YAML syntax (indentation, quotes, colons)") from None
    if not isinstance(raw, dict):
        raise ConfigError("config file must hold a mapping of options", where=str(file),
                          got=type(raw).__name__,
                          fix="write 'key: value' lines, e.g. 'inputs: [...]'")
    base = file.parent
    for key in ("inputs",):
        if isinstance(raw.get(key), list):
            raw[key] = [_rebase(p, base) for p in raw[key]]
    if isinstance(raw.get("output"), str):
        raw["output"] = _rebase(raw["output"], base)
    cont = raw.get("contamination")
    if isinstance(cont, dict) and isinstance(cont.get("eval_files"), list):
        cont["eval_files"] = [_rebase(p, base) for p in cont["eval_files"]]
    return raw


def _rebase(value: object, base: Path) -> object:
    if not isinstance(value, str) or Path(value).is_absolute():
        return value
    return str(base / value)


def merge_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply ``{"a.b": value}`` overrides (``None`` values skipped) onto a nested dict."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = merged
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
            node[part] = child = dict(child)
            node = child
        node[leaf] = value
    return merged


def parse_split_spec(spec: str) -> dict[str, float]:
    """Parse ``--split``: ``0.8,0.1,0.1`` or ``train=0.8,validation=0.1,test=0.1``."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    fix = "write --split 0.8,0.1,0.1 (train,validation,test) or train=0.8,test=0.2"
    result: dict[str, float] = {}
    try:
        if parts and all("=" in p for p in parts):
            for p in parts:
                name, value = (x.strip() for x in p.split("=", 1))
                aliases = {"val": "validation", "valid": "validation", "dev": "validation"}
                name = aliases.get(name, name)
                if name not in SPLIT_NAMES:
                    raise ConfigError("unknown split name in --split", where="--split", got=name,
                                      fix=f"use {', '.join(SPLIT_NAMES)}")
                result[name] = float(value)
            for name in SPLIT_NAMES:
                result.setdefault(name, 0.0)
        elif 1 <= len(parts) <= 3 and not any("=" in p for p in parts):
            values = [float(p) for p in parts] + [0.0] * (3 - len(parts))
            result = dict(zip(SPLIT_NAMES, values, strict=True))
        else:
            raise ValueError
    except ValueError:
        raise ConfigError("cannot read --split", where="--split", got=spec, fix=fix) from None
    if any(v < 0 for v in result.values()) or abs(sum(result.values()) - 1.0) > 1e-6:
        raise ConfigError("split ratios must be non-negative and add up to 1", where="--split",
                          got=spec, fix=fix)
    return result
