"""Figures an export reports: size on disk, speed, and the metric change on an eval file.

Speed is measured in this process with the current thread count (``OMP_NUM_THREADS``):
greedy generation of a fixed number of new tokens per prompt at batch size 1 (tokens/s), or
batched classification of fixed texts (examples/s). Both models are measured the same way
right after each other, so the ratio is what to read; absolute numbers depend on the
machine. The metric change reuses ``tunesmith eval`` (``evaluate.runner.run_eval``) with
the float32 source as the baseline, so differences come with paired-bootstrap intervals.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from tunesmith.evaluate.runner import run_eval
from tunesmith.evaluate.tasks import EvalSettings
from tunesmith.inference.generate import render_prompt

SPEED_PROMPTS = ["Write a haiku about CPUs.", "What is the capital of France?",
                 "Explain in one sentence what a language model is.",
                 "Give three tips for writing clear emails."]
SPEED_TEXTS = ["a gorgeous , witty , seductive movie .", "the plot is dull and the acting poor",
               "an uneven film with a few great moments", "i would not watch it again",
               "one of the best films of the year", "the soundtrack alone is worth it"]


def dir_size(path: Path, exclude: tuple[str, ...] = ("README.md", "Modelfile", "eval")) -> int:
    """Bytes of every file under ``path`` (the card, Modelfile and eval results excluded)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*")
               if f.is_file() and not set(f.relative_to(path).parts) & set(exclude))


def weight_bytes(model: torch.nn.Module, bytes_per_value: int = 4) -> int:
    """Size of the model's weights at ``bytes_per_value`` (tied tensors counted once)."""
    seen, total = set(), 0
    for p in list(model.parameters()) + list(model.buffers()):
        if p.data_ptr() in seen or not p.is_floating_point():
            continue
        seen.add(p.data_ptr())
        total += p.numel() * bytes_per_value
    return total


def lm_tokens_per_s(model: Any, tok: Any, new_tokens: int = 32,
                    prompts: list[str] = SPEED_PROMPTS) -> float:
    """Greedy generation of exactly ``new_tokens`` per prompt, batch 1, after one warm-up."""
    encoded = [tok(render_prompt(tok, p), return_tensors="pt",
                   add_special_tokens=not getattr(tok, "chat_template", None)) for p in prompts]
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
                  "pad_token_id": tok.pad_token_id, "temperature": None, "top_p": None, "top_k": None}
    with torch.inference_mode():
        model.generate(**encoded[0], **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})
        start = time.perf_counter()
        for enc in encoded:
            model.generate(**enc, **kwargs)
        elapsed = time.perf_counter() - start
    return new_tokens * len(encoded) / elapsed


def cls_examples_per_s(model: Any, tok: Any, texts: list[str] = SPEED_TEXTS,
                       repeat: int = 16, batch_size: int = 32, max_length: int = 128) -> float:
    """Batched classification of ``texts * repeat`` after one warm-up batch."""
    texts = list(texts) * repeat
    with torch.inference_mode():
        model(**tok(texts[:2], return_tensors="pt", padding=True))
        start = time.perf_counter()
        for s in range(0, len(texts), batch_size):
            model(**tok(texts[s:s + batch_size], return_tensors="pt", padding=True,
                        truncation=True, max_length=max_length))
        elapsed = time.perf_counter() - start
    return len(texts) / elapsed


def speed(model: Any, tok: Any, kind: str) -> dict[str, Any]:
    """``{"value": .., "unit": "tokens/s" | "examples/s", "threads": n}``."""
    if kind == "classifier":
        value, unit = cls_examples_per_s(model, tok), "examples/s"
    else:
        value, unit = lm_tokens_per_s(model, tok), "tokens/s"
    return {"value": round(value, 2), "unit": unit, "threads": torch.get_num_threads()}


def eval_change(reference: str, exported: str, eval_file: Path, out: Path,
                max_new_tokens: int = 64) -> dict[str, Any]:
    """Metrics of the float32 reference and the export on ``eval_file``, and the differences.

    Returns ``{"metrics": {m: {"reference", "export", "delta", "ci95"}}, "examples", "task",
    "out_dir"}``; the full evaluation (predictions, report) is written to ``out``.
    """
    settings = EvalSettings(dtype="float32", max_new_tokens=max_new_tokens, bootstrap=500)
    summary = run_eval([reference, exported], str(eval_file), out, settings)
    ref, exp = summary["models"][0]["metrics"], summary["models"][1]["metrics"]
    comp = {c["metric"]: c for c in summary.get("comparison", [])}
    metrics = {}
    for m in ref:
        if not isinstance(ref[m], (int, float)) or not isinstance(exp.get(m), (int, float)):
            continue
        c = comp.get(m, {})
        metrics[m] = {"reference": ref[m], "export": exp[m], "delta": exp[m] - ref[m],
                      "ci95": [c.get("low"), c.get("high")] if c else None}
    return {"metrics": metrics, "examples": summary["examples"], "task": summary["task"],
            "out_dir": str(out)}
