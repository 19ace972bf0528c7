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


def register(app: typer.Typer) -> None:
    app.command()(doctor)

