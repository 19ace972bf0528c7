"""A campaign's answers: generated once with fixed settings, or imported from ``tunesmith
eval`` predictions. Either way they are stored with the campaign, so every reviewer judges
the same text and a campaign can be re-read (and re-exported) without any model loaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError, UsageError
from tunesmith.evaluate.results import load_eval_dir
from tunesmith.inference.generate import GenerationSettings, Prompt
from tunesmith.inference.prompts import prompt_of, prompts_from_file

# Fixed settings: greedy by default, so the answers are what the model says, not a lucky
# sample (a temperature above 0 samples, seeded).
DEFAULT_SETTINGS = GenerationSettings(max_new_tokens=256, temperature=0.0, top_p=1.0, seed=0,
                                      batch_size=8)


MAX_NEW_TOKENS = 8192
MAX_TEMPERATURE = 5.0


def settings_for(max_new_tokens: int = 256, temperature: float = 0.0, seed: int = 0,
                 batch_size: int = 8) -> GenerationSettings:
    """The generation settings of a campaign; UsageError names the bad one (by its flag)."""
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise UsageError("the answer length is out of range", where="--max-new-tokens",
                         got=max_new_tokens, fix=f"a whole number from 1 to {MAX_NEW_TOKENS}, "
                         "e.g. 256")
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise UsageError("the temperature is out of range", where="--temperature",
                         got=temperature, fix="0 for greedy (the default: every reviewer "
                         f"judges what the model says), up to {MAX_TEMPERATURE:g} to sample")
    if batch_size < 1:
        raise UsageError("the batch size must be at least 1", where="--batch-size",
                         got=batch_size, fix="e.g. 8")
    return GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=1.0, seed=seed, batch_size=batch_size)


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
                     limit: int | None = None,
                     progress: Callable[[str, int, int], None] | None = None) -> Answers:
    """Every model answers every prompt once (one model in memory at a time).

    ``progress(model, done, total)`` is called after each batch, ``done`` and ``total``
    counting answers over all models (the studio's task page shows it)."""
    # deferred: loads torch and transformers; `tunesmith --help` stays fast
    import gc

    from tunesmith.inference.generate import generate
    from tunesmith.models.load import load_for_inference

    _, prompts = prompts_from_file(prompt_file)
    prompts = prompts[:limit] if limit else prompts
    total, done = len(prompts) * len(models), 0
    answers: dict[str, list[str]] = {}
    step = max(1, settings.batch_size)
    for name, source in models:
        model, tok = load_for_inference(source, dtype)
        answers[name] = []
        # batch by batch so progress can be reported; generate() reseeds each call, so the
        # answers depend only on the settings, not on when they were asked for
        for start in range(0, len(prompts), step):
            answers[name] += generate(model, tok, prompts[start:start + step], settings)
            done += len(prompts[start:start + step])
            if progress is not None:
                progress(name, done, total)
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
