"""The ``sweep`` command; ``register(app)`` adds it to the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunesmith.errors import TrainingError

out = Console(soft_wrap=True)


def sweep_command(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="section.key=value overrides applied to every trial.")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help=(
        "What to search, repeatable: KEY=a,b,c (choices; a|b|c when values hold commas), "
        "KEY=LOW:HIGH, KEY=log:LOW:HIGH, KEY=int:LOW:HIGH."))] = None,
    trials: Annotated[int, typer.Option(help="Trials in all (a resumed sweep counts the "
                                             "finished ones).")] = 8,
    metric: Annotated[str | None, typer.Option(help=(
        "Validation metric to optimise (default: train.early_stopping.metric)."))] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help=(
        "Sweep directory (default: <output.dir>/<name>-sweep)."))] = None,
    keep: Annotated[str, typer.Option(help="Models kept: best (only the best trial's) or "
                                           "all.")] = "best",
    prune: Annotated[bool, typer.Option(help="Stop trials whose validation metric falls "
                                             "behind the median of earlier trials.")] = True,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted sweep.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing sweep.")] = False,
) -> None:
    """Search hyper-parameters: train one run per trial, keep the best (Optuna TPE)."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.sweep.space import parse_space
    from tunesmith.sweep.study import SweepSpec, run_sweep

    spec = SweepSpec(config, list(overrides or []), parse_space(list(param or [])), trials,
                     metric, out_dir, keep, prune)

    def show(record: dict[str, Any]) -> None:
        value = record["value"]
        shown = f"{value:.4f}" if value is not None else record["state"]
        out.print(f"{escape(record['name'])}: {escape(shown)}  {_values(record['values'])}"
                  + (f"  ({escape(record['reason'])})" if record["reason"] else ""))

    def start(name: str, values: dict[str, str]) -> None:
        out.print(f"{escape(name)}: training with {_values(values)}")

    result = run_sweep(spec, resume=resume, overwrite=overwrite, on_trial=show, on_start=start)
    table = Table(title=f"sweep on {result.metric}")
    for col in ("trial", "state", "value", *(p.key for p in spec.params), "steps", "s"):
        table.add_column(col, overflow="fold")
    for r in result.trials:
        value = r["value"]
        table.add_row(r["name"], r["state"], "" if value is None else f"{value:.4f}",
                      *(escape(str(r["values"].get(p.key, ""))) for p in spec.params),
                      str(r["steps"] or ""), str(r["seconds"] or ""))
    out.print(table)
    if result.best is None:
        raise TrainingError("no trial of the sweep completed", where=str(result.sweep_dir),
                            fix="read the reasons in trials.jsonl; widen the ranges, add "
                            "trials or use --no-prune")
    out.print(f"[green]best[/] {result.best['name']}: {result.metric} "
              f"{result.best['value']:.4f} → {result.sweep_dir / 'best.yaml'}; "
              f"model: {result.best['model']}")


def _values(values: dict[str, str]) -> str:
    return escape("  ".join(f"{k}={v}" for k, v in values.items()))


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)
