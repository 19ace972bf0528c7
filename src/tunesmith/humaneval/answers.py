"""A campaign's answers: generated once with fixed settings, or imported from ``tunesmith
eval`` predictions. Either way they are stored with the campaign, so every reviewer judges
the same text and a campaign can be re-read (and re-exported) without any model loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError, UsageError
from tunesmith.evaluate.results import load_eval_dir
from tunesmith.inference.generate import GenerationSettings, Prompt
from tunesmith.inference.prompts import prompt_of, prompts_from_file

# Fixed settings: greedy, so the answers are what the model says, not a lucky sample.
DEFAULT_SETTINGS = GenerationSettings(max_new_tokens=256, temperature=0.0, top_p=1.0, seed=0,
                                      batch_size=8)


@dataclass
class Answers:
    """Prompts, each model's answer per prompt, and where they came from."""

    prompts: list[Prompt]
    answers: dict[str, list[str]]  # model name -> one answer per prompt
    sources: dict[str, str]  # model name -> what was loaded (path, embedded name, eval dir)
    origin: dict[str, Any]  # settings used, or the eval directory imported


def parse_models(specs: list[str]) -> list[tuple[str, str]]:
    """``NAME=SOURCE`` or ``SOURCE`` (named after its last path part) → (name, source)."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep:
            source = spec
            name = Path(spec.rstrip("/")).name or spec
        if not name or not source:
            raise UsageError("a model is NAME=SOURCE or SOURCE", where="--model", got=spec,
                             fix="e.g. --model base=smollm2-135m-instruct --model "
                             "tuned=runs/my-dpo")
        out.append((name, source))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise UsageError("two models have the same name", where="--model", got=names,
                         fix="name them: --model base=PATH --model tuned=PATH")
    return out


def generate_answers(models: list[tuple[str, str]], prompt_file: Path,
                     settings: GenerationSettings = DEFAULT_SETTINGS, dtype: str = "auto",
                     limit: int | None = None) -> Answers:
    """Every model answers every prompt once (one model in memory at a time)."""
    # deferred: loads torch and transformers; `tunesmith --help` stays fast
    import gc

    from tunesmith.inference.generate import generate
    from tunesmith.models.load import load_for_inference

    _, prompts = prompts_from_file(prompt_file)
    prompts = prompts[:limit] if limit else prompts
    answers: dict[str, list[str]] = {}
    for name, source in models:
        model, tok = load_for_inference(source, dtype)
        answers[name] = generate(model, tok, prompts, settings)
        del model, tok
        gc.collect()
    return Answers(prompts, answers, dict(models),
                   {"generated": asdict(settings), "dtype": dtype, "prompts": str(prompt_file)})


def import_eval(eval_dir: Path, limit: int | None = None) -> Answers:
    """The predictions of a ``tunesmith eval`` directory of two or more generation models."""
    summary, records = load_eval_dir(eval_dir)
    if summary.get("task") != "generation":
        raise DataError("only generation evaluations have answers to compare", where=str(eval_dir),
                        got=summary.get("task"), fix="evaluate chat or instruction models on a "
                        "prompt file: tunesmith eval BASE TUNED --data FILE -o DIR")
    names = list(records)
    first = records[names[0]][:limit] if limit else records[names[0]]
    prompts = []
    for rec in first:
        row = rec.get("row") or {}
        try:
            prompts.append(prompt_of(row, rec.get("where", "")))
        except DataError:
            prompts.append(rec["input"])
    answers = {}
    for name in names:
        by_index = {r["index"]: r["prediction"] for r in records[name]}
        answers[name] = [by_index.get(r["index"], "") for r in first]
    sources = {m["name"]: str(m.get("path") or m["name"]) for m in summary["models"]}
    return Answers(prompts, answers, sources, {"eval_dir": str(Path(eval_dir).resolve()),
                                               "settings": summary.get("settings")})
