"""The ``doctor``, ``plan`` and ``merge`` commands (registered from ``tunesmith/cli.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

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
         overrides: Annotated[list[str] | None, typer.Argument(
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
          method: Annotated[str, typer.Option(help="linear | ties | dare_ties | average; "
                                              "with --eval, several comma-separated "
                                              "candidates.")] = "linear",
          weights: Annotated[list[str] | None, typer.Option(
              help="Comma-separated weight per model (default: equal); with --eval, repeat "
              "it for more candidates.")] = None,
          density: Annotated[float, typer.Option(help="ties/dare_ties: share of each task "
                                                 "vector kept.")] = 0.5,
          seed: Annotated[int, typer.Option(help="dare_ties' random drop.")] = 0,
          eval_file: Annotated[str | None, typer.Option(
              "--eval", help="Evaluate every candidate (each method x weights) on this file "
              "(any format `tunesmith eval` reads) and keep the best.")] = None,
          metric: Annotated[str | None, typer.Option(
              help="--eval: the deciding metric (default: the task's primary one).")] = None,
          general: Annotated[bool, typer.Option(
              "--general", help="--eval: also score each candidate on the general-ability "
              "suite and refuse those that forgot (vs the base model).")] = False,
          general_tolerance: Annotated[float, typer.Option(
              help="--general: the accuracy drop allowed (the 95% CI upper bound of the "
              "drop must not pass it).")] = 0.02,
          general_limit: Annotated[int | None, typer.Option(
              help="--general: the first N items of each suite set.")] = None,
          task: Annotated[str, typer.Option(help="--eval: auto, generation, lm, "
                                            "classification or zero-shot.")] = "auto",
          limit: Annotated[int | None, typer.Option(help="--eval: the first N rows.")
                           ] = None,
          max_new_tokens: Annotated[int, typer.Option(help="--eval: generation tasks.")
                                    ] = 256,
          keep_candidates: Annotated[bool, typer.Option(
              "--keep-candidates", help="--eval: keep the other candidates in "
              "OUTPUT/candidates/.")] = False,
          ) -> None:
    """Combine LoRA adapters of one base (PEFT's linear, TIES, DARE-TIES), or average
    checkpoints of one run, into a plain Hugging Face checkpoint. With --eval, merge every
    candidate, evaluate each and keep the best (the eval gate of `promote`)."""
    # deferred: torch and peft; keeps `tunesmith --help` fast
    from tunesmith.errors import UsageError
    from tunesmith.export.merge_adapters import average_checkpoints, merge_adapters

    try:
        sets = [[float(x) for x in w.split(",")] for w in weights or []]
    except ValueError:
        raise UsageError("weights must be numbers", where="--weights", got=weights,
                         fix="e.g. --weights 0.6,0.4") from None
    methods = [m.strip() for m in method.split(",") if m.strip()]
    if eval_file is not None:
        from tunesmith.evaluate.tasks import EvalSettings
        from tunesmith.ops.merge_gate import merge_with_gate

        settings = EvalSettings(task=task, limit=limit, max_new_tokens=max_new_tokens,
                                seed=seed)
        table = merge_with_gate(models, output, methods, list(sets) or [None], eval_file,
                                metric, settings, density, seed, general, general_tolerance,
                                general_limit, keep_candidates)
        _print_candidates(table)
        out.print(f"[green]kept[/] {table['kept']} (best {table['metric']}) → {output}")
        return
    if len(methods) != 1 or len(sets) > 1:
        raise UsageError("several methods or weight sets need --eval to choose between them",
                         where="--method / --weights", got=[method, *(weights or [])],
                         fix="give one, or add --eval TEST_FILE to keep the best")
    w = sets[0] if sets else None
    if methods[0] == "average":
        average_checkpoints(models, output, w)
    else:
        merge_adapters(models, output, methods[0], w, density, seed)
    out.print(f"[green]merged[/] {len(models)} models ({method}) → {output}")


def _print_candidates(table: dict) -> None:
    name = table["metric"]
    t = Table(title=f"merge candidates on {table['eval_file']} ({table['examples']} examples)")
    general = table["general"] is not None
    for col in ("candidate", name, "95% CI", *(("general Δ", "gate") if general else ()),
                "kept"):
        t.add_column(col)
    for r in table["candidates"]:
        t.add_row(r["candidate"], f"{r[name]:.4f}", f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]",
                  *((f"{r['general_delta']:+.4f}", "pass" if r["passed"] else "refused")
                    if general else ()), "✓" if r["candidate"] == table["kept"] else "")
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command()(doctor)
    app.command()(plan)
    app.command()(merge)

