"""``tunesmith baseline`` (zero-shot, K-shot, RAG and fine-tuned on one test set) and
``tunesmith models select`` (base models ranked on the user's data, ``select.py``).

This package sits beside ``sweep`` and ``demo`` (above the recipes) because it may train:
with ``--config`` the fine-tuned option is trained by the recipe first and its wall time
is the training cost in the decision table. The scoring, comparison and report are
``evaluate/baseline.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

out = Console(soft_wrap=True)


def _training_of_run(run: Path) -> dict[str, Any]:
    """Steps and throughput recorded by an existing run (its status.json)."""
    # deferred: the run state reader imports torch
    from tunesmith.train.run_state import read_status

    status = read_status(run) or {}
    return {"steps": status.get("steps"), "tokens_per_s": status.get("tokens_per_s")}


def baseline_command(
    model: Annotated[Optional[str], typer.Argument(
        help="Base model (default: the config's model.name).")] = None,
    test: Annotated[str, typer.Option("--test", help="Test file scored by every option.")] = "",
    train: Annotated[Optional[str], typer.Option(
        help="Training rows: the K-shot demonstrations (default: the config's data.train).")
    ] = None,
    shots: Annotated[int, typer.Option(help="K for the K-shot option (0: skip).")] = 3,
    shots_select: Annotated[str, typer.Option(help="random, bm25 or embedding.")] = "bm25",
    rag: Annotated[Optional[str], typer.Option(help="Index for the RAG options.")] = None,
    rag_k: Annotated[int, typer.Option(help="Passages per example.")] = 3,
    tuned: Annotated[Optional[str], typer.Option(
        help="An existing fine-tuned run or model directory.")] = None,
    config: Annotated[Optional[Path], typer.Option(
        help="Train the fine-tuned option with this config first.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Decide on this metric.")] = None,
    prompt_template: Optional[str] = None, reference_field: Optional[str] = None,
    max_new_tokens: int = 64, batch_size: int = 8, limit: Optional[int] = None,
    bootstrap: int = 1000, seed: int = 0, dtype: str = "auto",
) -> None:
    """Should I fine-tune? Every option on the same test set, with CIs and a decision."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.errors import UsageError
    from tunesmith.evaluate.baseline import options, run_baseline
    from tunesmith.evaluate.tasks import EvalSettings

    training = None
    if config is not None:
        # deferred: the config schema and the recipes load torch; keeps `--help` fast
        from tunesmith.config import load_config
        from tunesmith.recipes import run_task

        cfg = load_config(config, None)
        model, train = model or cfg.model.name, train or cfg.data.train
        started = time.perf_counter()
        result = run_task(cfg)
        tuned = str(result.run_dir / "final")
        training = {**_training_of_run(result.run_dir),
                    "seconds": round(time.perf_counter() - started, 1)}
    elif tuned is not None:
        run = Path(tuned)
        training = _training_of_run(run.parent if run.name in ("final", "best") else run)
    if not model or not test:
        raise UsageError("baseline needs a base model and a test file", where="command line",
                         fix="tunesmith baseline MODEL --test test.jsonl --train train.jsonl "
                         "[--rag INDEX] [--tuned RUN | --config CONFIG]")
    s = EvalSettings(prompt_template=prompt_template, reference_field=reference_field,
                     max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit,
                     bootstrap=bootstrap, seed=seed, dtype=dtype, shots_select=shots_select,
                     rag_k=rag_k)
    opts = options(model, s, train, shots, rag, tuned, training)
    res = run_baseline(opts, test, output or Path("baselines") / time.strftime(
        "%Y%m%d-%H%M%S"), metric, bootstrap, seed)
    for o in res["options"]:
        out.print(f"{escape(o['option']):18} {res['metric']} {o['value']:.4f} "
                  f"[{o['ci95'][0]:.4f}, {o['ci95'][1]:.4f}]  vs zero-shot "
                  f"{o['vs_zero_shot']:+.4f}  prompt tokens {o['prompt_tokens']:.0f}  "
                  f"latency {o['latency_ms']:.0f} ms")
    d = res["decision"]
    out.print(f"[bold]recommended: {escape(d['recommendation'])}[/] — {escape(d['reason'])}")
    out.print(f"→ {res['out_dir']}/report.html")


def select_command(
    data: Annotated[str, typer.Option("--data", "-d", help="Rows in a training format.")],
    candidates: Annotated[str, typer.Option(
        help="Comma-separated base models: embedded names, directories, hub ids.")],
    probe_steps: Annotated[int, typer.Option(
        help="Also train each candidate with LoRA for N steps and report its loss (0: no).")
    ] = 0,
    shots: Annotated[int, typer.Option(help="Also score K-shot (0: zero-shot only).")] = 0,
    train: Annotated[Optional[str], typer.Option(
        help="Rows for the shots and the probe (default: --data).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o")] = None,
    max_new_tokens: int = 64, batch_size: int = 8, limit: Optional[int] = None,
    bootstrap: int = 1000, dtype: str = "auto",
) -> None:
    """Rank candidate base models on your data: answer loss, task metric, probe, cost."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.advise.select import select
    from tunesmith.evaluate.tasks import EvalSettings

    names = [c.strip() for c in candidates.split(",") if c.strip()]
    s = EvalSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit,
                     bootstrap=bootstrap, dtype=dtype, shots_select="bm25")
    res = select(names, data, output or Path("selections") / time.strftime("%Y%m%d-%H%M%S"),
                 s, shots, train, probe_steps)
    for r in res["candidates"]:
        out.print(f"{escape(r['model'])}: loss {r['loss']:.4f}, {r['metric']} zero-shot "
                  f"{r['zero_shot']:.4f}" + (f", few-shot {r['few_shot']:.4f}" if shots else "")
                  + (f", probe loss {r['probe_loss']:.4f}" if r.get("probe_loss") else "")
                  + f", {r['parameters'] or '?'} parameters, {r['latency_ms']:.0f} ms")
    out.print(f"[bold]recommended: {escape(res['recommendation'])}[/] — "
              f"{escape(res['reason'])}")
    out.print(f"→ {res['out_dir']}/report.html")


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    """Add ``baseline`` and ``models select``."""
    app.command("baseline")(baseline_command)
    models_app.command("select")(select_command)
