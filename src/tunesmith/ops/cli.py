"""The ``doctor``, ``plan`` and ``merge`` commands (registered from ``tunesmith/cli.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True)
COLORS = {"ok": "green", "warning": "yellow", "error": "red"}


def doctor(json_out: Annotated[bool, typer.Option("--json", help="Findings as JSON.")] = False,
           output_dir: Annotated[Path, typer.Option(help="Where runs are written.")] = Path(
               "runs")) -> None:
    """Check this machine: versions against the tested set, CPU features and precision,
    threads, free disk and memory, embedded models, CUDA devices — each problem with its
    fix. Exits 1 when something will make training fail."""
    # deferred: torch (read by the probe); keeps `tunesmith --help` fast
    from tunesmith.io import cache_root
    from tunesmith.ops.doctor import diagnose, probe

    findings = diagnose(probe([output_dir.resolve(), cache_root()]))
    if json_out:
        sys.stdout.write(json.dumps([f.__dict__ for f in findings], indent=1) + "\n")
    else:
        table = Table()
        for col in ("check", "", "detail", "fix"):
            table.add_column(col)
        for f in findings:
            table.add_row(f.check, f"[{COLORS[f.level]}]{f.level}[/]", f.detail, f.fix)
        out.print(table)
    if any(f.level == "error" for f in findings):
        raise typer.Exit(1)


def plan(config: Annotated[Path, typer.Argument(help="YAML config file.")],
         overrides: Annotated[Optional[list[str]], typer.Argument(
             help="section.key=value overrides, e.g. train.lr=1e-4.")] = None,
         steps: Annotated[int, typer.Option(help="Calibration steps (run, then discarded).")
                          ] = 4,
         json_out: Annotated[bool, typer.Option("--json", help="The plan as JSON.")] = False,
         output: Annotated[Path | None, typer.Option(
             "-o", "--output", help="Also write the plan, its verdict and one-line summary "
             "to DIR/plan.json (the studio's new-run form reads it).")] = None,
         ) -> None:
    """Estimate peak memory and time to finish from a few real steps on your data and model:
    the breakdown (weights, gradients, optimizer, activations and logits at the longest
    batch) and whether it fits. Exits 1 when it does not."""
    # deferred: torch, the config schema and the recipes; keeps `tunesmith --help` fast
    from tunesmith.config import load_config
    from tunesmith.ops.plan import GIB
    from tunesmith.ops.plan import plan as make_plan

    cfg = load_config(config, overrides)
    p = make_plan(cfg, steps)
    if output is not None:
        from tunesmith.io import atomic_write_json

        output.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output / "plan.json", {**p.as_dict(), "verdict": p.verdict(cfg),
                                                 "line": p.line(cfg)})
    if json_out:
        sys.stdout.write(json.dumps(p.as_dict(), indent=1) + "\n")
    else:
        table = Table(title=f"plan for {cfg.name} ({p.device})")
        table.add_column("part")
        table.add_column("GiB", justify="right")
        for part in ("baseline", "weights", "other", "gradients", "optimizer",
                     "activations", "logits", "peak", "available"):
            table.add_row(part, f"{getattr(p, part) / GIB:.3f}")
        out.print(table)
        out.print(f"longest micro-batch {p.longest_tokens} padded tokens (calibration "
                  f"{p.calibration_tokens}); {p.total_steps} steps at {p.step_seconds:.3f} s: "
                  f"~{p.seconds / 60:.1f} min")
        out.print(p.verdict(cfg))
    if not p.fits:
        raise typer.Exit(1)


def merge(models: Annotated[list[str], typer.Argument(
              help="Adapters (LoRA runs, their final/ or checkpoints), or checkpoints of one "
              "run for --method average.")],
          output: Annotated[Path, typer.Option("-o", "--output", help="Where the plain "
                                                "checkpoint goes.")],
          method: Annotated[str, typer.Option(help="linear | ties | dare_ties | average."
                                              )] = "linear",
          weights: Annotated[Optional[str], typer.Option(
              help="Comma-separated weight per model (default: equal).")] = None,
          density: Annotated[float, typer.Option(help="ties/dare_ties: share of each task "
                                                 "vector kept.")] = 0.5,
          seed: Annotated[int, typer.Option(help="dare_ties' random drop.")] = 0) -> None:
    """Combine LoRA adapters of one base (PEFT's linear, TIES, DARE-TIES), or average
    checkpoints of one run, into a plain Hugging Face checkpoint."""
    # deferred: torch and peft; keeps `tunesmith --help` fast
    from tunesmith.errors import UsageError
    from tunesmith.export.merge_adapters import average_checkpoints, merge_adapters

    try:
        w = [float(x) for x in weights.split(",")] if weights else None
    except ValueError:
        raise UsageError("weights must be numbers", where="--weights", got=weights,
                         fix="e.g. --weights 0.6,0.4") from None
    if method == "average":
        average_checkpoints(models, output, w)
    else:
        merge_adapters(models, output, method, w, density, seed)
    out.print(f"[green]merged[/] {len(models)} models ({method}) → {output}")


def register(app: typer.Typer) -> None:
    app.command()(doctor)
    app.command()(plan)
    app.command()(merge)

