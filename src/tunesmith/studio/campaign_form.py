"""The New-campaign form: read it, check every field, and say what to run.

Every problem is kept with the field it belongs to (what, where, got, fix — the CLI's error
text) so the page shows each one beside its input, all at once. A form without problems
becomes either the ``tunesmith humaneval create`` command line that the studio runs as a
task (generation: each model loads once, in its own process) or, for a ``tunesmith eval``
directory (no model to load), answers imported on the spot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.humaneval import answers as A
from tunesmith.humaneval import people
from tunesmith.humaneval.campaigns import check_new_campaign
from tunesmith.inference.prompts import prompts_from_file
from tunesmith.io import looks_like_hub_id
from tunesmith.models.registry import EMBEDDED
from tunesmith.studio.datasets import resolve_dataset
from tunesmith.studio.render import error_parts

SOURCES = ("generate", "eval")
RESERVED = ("create", "tasks")  # the studio's own pages under /studio/humaneval/
DEFAULTS = {"source": "generate", "max_new_tokens": "256", "temperature": "0", "seed": "0",
            "overlap": "1", "limit": ""}
PROGRESS = re.compile(r"^answers (\d+)/(\d+) \((.*)\)$", re.MULTILINE)


@dataclass
class Plan:
    """A checked form: the values to show again, the problems per field, what to do."""

    values: dict[str, Any]
    problems: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    models: list[tuple[str, str]] = field(default_factory=list)
    reviewers: list[str] = field(default_factory=list)
    prompts: Path | None = None
    eval_dir: Path | None = None
    numbers: dict[str, Any] = field(default_factory=dict)

    def problem(self, name: str, exc: TunesmithError) -> None:
        self.problems.setdefault(name, []).append(error_parts(exc))

    def argv(self, data_dir: Path, db_url: str | None) -> list[str]:
        """``tunesmith humaneval create ...`` for a generation campaign."""
        n = self.numbers
        argv = ["humaneval", "create", self.values["name"], "--prompts", str(self.prompts)]
        for name, source in self.models:
            argv += ["--model", f"{name}={source}"]
        argv += ["--max-new-tokens", str(n["max_new_tokens"]),
                 "--temperature", f"{n['temperature']:g}", "--seed", str(n["seed"]),
                 "--overlap", str(n["overlap"])]
        if n.get("limit"):
            argv += ["--limit", str(n["limit"])]
        for r in self.reviewers:
            argv += ["--reviewer", r]
        argv += ["--data-dir", str(data_dir)]
        return argv + (["--db", db_url] if db_url else [])


def _number(plan: Plan, name: str, kind: type, label: str, fix: str) -> Any:
    text = str(plan.values.get(name) or "").strip()
    if not text and name == "limit":
        return None
    try:
        return kind(text)
    except ValueError:
        plan.problem(name, UsageError(f"{label} must be a {'whole ' if kind is int else ''}"
                                      "number", where=name, got=text, fix=fix))
        return None


def _numbers(plan: Plan) -> None:
    n = plan.numbers
    n["max_new_tokens"] = _number(plan, "max_new_tokens", int, "the answer length", "e.g. 256")
    n["temperature"] = _number(plan, "temperature", float, "the temperature",
                               "0 for greedy, e.g. 0.7 to sample")
    n["seed"] = _number(plan, "seed", int, "the seed", "e.g. 0")
    n["overlap"] = _number(plan, "overlap", int, "reviewers per item",
                           "1, or 2+ for agreement")
    n["limit"] = _number(plan, "limit", int, "the number of prompts", "leave it empty for all")
    # the ranges are the CLI's own (humaneval.answers.settings_for), field by field
    for name, kwargs in (("max_new_tokens", {"max_new_tokens": n["max_new_tokens"]}),
                         ("temperature", {"temperature": n["temperature"]})):
        if kwargs[name] is not None:
            try:
                A.settings_for(**kwargs)
            except UsageError as exc:
                plan.problem(name, exc)
    if n["overlap"] is not None and n["overlap"] < 1:
        plan.problem("overlap", UsageError("reviewers per item must be at least 1",
                                           where="overlap", got=n["overlap"],
                                           fix="1, or 2+ for agreement"))
    if n["limit"] is not None and n["limit"] < 1:
        plan.problem("limit", UsageError("the number of prompts must be at least 1",
                                         where="limit", got=n["limit"],
                                         fix="leave it empty for all"))


def _model_known(source: str, served: set[str]) -> bool:
    """Embedded, served, on disk, or a hub id (``owner/name`` whose owner is not a local
    directory: ``runs/typo`` is a missing run, not a download)."""
    if source in EMBEDDED or source in served or Path(source).expanduser().exists():
        return True
    return looks_like_hub_id(source) and not Path(source.split("/")[0]).is_dir()


def _models(plan: Plan, picked: list[str], extra: str, served: set[str]) -> None:
    specs = [s for s in picked if s.strip()]
    specs += [s.strip() for s in extra.split(",") if s.strip()]
    try:
        models = A.parse_models(specs)
    except UsageError as exc:
        plan.problem("models", exc)
        return
    if len(models) < 2:
        plan.problem("models", UsageError(
            "a campaign compares two or more models", where="models",
            got=[n for n, _ in models] or None,
            fix="tick two or more runs or served models, or type NAME=MODEL entries "
            "(comma-separated)"))
    for name, source in models:
        if not _model_known(source, served):
            plan.problem("models", UsageError(
                "no such model", where=name, got=source,
                fix="a run or model directory on the server, an embedded name ("
                f"{', '.join(sorted(EMBEDDED)[:3])}, ...) or a hub id"))
    plan.models = [(n, str(Path(s).expanduser().resolve()) if Path(s).expanduser().exists()
                    else s) for n, s in models]


def _reviewers(plan: Plan) -> None:
    names = [x.strip() for x in str(plan.values.get("reviewers") or "").split(",")
             if x.strip()]
    for n in names:
        try:
            people.check_name(n)
        except UsageError as exc:
            plan.problem("reviewers", exc)
    if len(set(names)) != len(names):
        plan.problem("reviewers", UsageError("a reviewer is named twice", where="reviewers",
                                             got=names, fix="give each reviewer once"))
    plan.reviewers = names


def check_form(db: Any, data_dir: Path, values: dict[str, Any], picked: list[str],
               served: set[str]) -> Plan:
    """Every field checked; ``plan.problems`` is empty when the campaign can be made.
    ``values['prompts']`` is an uploaded dataset's name or a path on the server."""
    plan = Plan({**DEFAULTS, **{k: v for k, v in values.items() if v is not None}})
    name = str(plan.values.get("name") or "").strip()
    plan.values["name"] = name
    try:
        if name in RESERVED:
            raise UsageError("that name is one of the studio's pages", where="name", got=name,
                             fix="choose another name, e.g. base-vs-tuned")
        check_new_campaign(db, name)
    except UsageError as exc:
        plan.problem("name", exc)
    source = str(plan.values.get("source") or "generate")
    if source not in SOURCES:
        plan.problem("source", UsageError("unknown source of answers", where="source",
                                          got=source, fix=" or ".join(SOURCES)))
    _numbers(plan)
    _reviewers(plan)
    if source == "eval":
        _eval_dir(plan)
    elif source == "generate":
        _models(plan, picked, str(plan.values.get("extra_models") or ""), served)
        _prompts(plan, data_dir)
    return plan


def _prompts(plan: Plan, data_dir: Path) -> None:
    text = str(plan.values.get("prompts") or "").strip()
    if not text:
        plan.problem("prompts", UsageError(
            "no prompt file", where="prompts",
            fix="upload one (JSONL/CSV/Parquet rows with messages, prompt or instruction) "
            "or give its path on the server"))
        return
    try:
        path = resolve_dataset(data_dir, text).resolve()
        _, prompts = prompts_from_file(path)
    except TunesmithError as exc:
        plan.problem("prompts", exc)
        return
    if not prompts:
        plan.problem("prompts", UsageError("the prompt file holds no rows", where=text,
                                           fix="one prompt per line (JSONL) or row (CSV)"))
        return
    plan.prompts = path


def _eval_dir(plan: Plan) -> None:
    text = str(plan.values.get("eval_dir") or "").strip()
    if not text:
        plan.problem("eval_dir", UsageError(
            "give the evaluation directory", where="eval directory",
            fix="pick a finished evaluation, or the -o directory of `tunesmith eval BASE "
            "TUNED --data FILE`"))
        return
    try:
        plan.eval_dir = Path(text).expanduser()
        plan.numbers["answers"] = A.import_eval(plan.eval_dir, plan.numbers.get("limit"))
    except TunesmithError as exc:
        plan.problem("eval_dir", exc)


def task_progress(log: str) -> dict[str, Any] | None:
    """The last ``answers DONE/TOTAL (MODEL)`` line of a creation task's output."""
    found = PROGRESS.findall(log)
    if not found:
        return None
    done, total, model = found[-1]
    return {"done": int(done), "total": int(total), "model": model}
