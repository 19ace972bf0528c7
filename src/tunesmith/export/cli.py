"""The ``tunesmith export`` command; the CLI adds it with :func:`register`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape


def register(app: typer.Typer) -> None:
    """Add ``export`` to ``app`` (called once from ``tunesmith.cli``)."""
    app.command("export")(export_command)


def export_command(
    model: Annotated[str, typer.Argument(
        help="Run directory (its final/, else best/, else latest checkpoint), checkpoint or "
        "adapter directory, or embedded model name.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to create.")],
    format: Annotated[str, typer.Option(
        "--format", "-f", help="hf (Hugging Face safetensors checkpoint) or gguf (llama.cpp / "
        "Ollama; Llama-architecture models).")] = "hf",
    merge: Annotated[bool, typer.Option(
        "--merge", help="Merge a LoRA adapter into its base (float32) instead of exporting "
        "the adapter alone (GGUF always merges).")] = False,
    quantize: Annotated[str | None, typer.Option(
        "--quantize", "-q", help="hf: none, int8 (CPU: int8 weights + dynamic activations), "
        "f16, bf16. gguf: f16 (default), f32, bf16, q8_0, q5_1, q5_0, q4_1, q4_0.")] = None,
    eval_file: Annotated[Path | None, typer.Option(
        "--eval-file", help="Score the export against its float32 source on this file "
        "(`tunesmith eval` task auto-detected); the change goes into the card.")] = None,
    speed: Annotated[bool, typer.Option(
        "--speed/--no-speed", help="Measure tokens/s or examples/s (int8, gguf).")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")
                         ] = False,
    keep_float: Annotated[str | None, typer.Option(
        "--keep-float", help="int8: comma-separated linear layers kept in float32 (default "
        "for LMs: head,down_proj,first-layer,last-layer; classifiers: head; 'none' = "
        "quantize all). Items: head, first-layer, last-layer, a module name or glob.")
        ] = None,
) -> None:
    """Export a trained model: merged checkpoint, int8 for CPU, or GGUF (+ Ollama Modelfile)."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.export.card import quantization_line
    from tunesmith.export.run import export

    err = Console(stderr=True, soft_wrap=True)
    command = "tunesmith " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if sys.argv[1:2] == ["export"] else None
    keep = None if keep_float is None else [
        k.strip() for k in keep_float.split(",") if k.strip() and k.strip() != "none"]
    result = export(model, format, merge, quantize, output, eval_file, overwrite, speed,
                    command, keep)
    for line in result.info.get("checks") or []:
        err.print(f"check: {escape(line)}", highlight=False)
    if result.info.get("quantization"):
        err.print(escape(quantization_line(result.info["quantization"])), highlight=False)
    err.print(f"[green]exported[/] → {escape(str(result.out_dir))} "
              f"({', '.join(result.files)})", highlight=False)
