"""The ``eval``, ``analyze`` and ``audit`` commands; ``register(app)`` adds them to the CLI.

Each command parses options, calls one function (``runner.run_eval``,
``analysis.run_analyze``, ``audit.run_audit``) and prints a short summary; every number
and file comes from those functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@contextmanager
def _progress(label: str) -> Iterator[Callable[[str, int, int], None]]:
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"{label} {escape(name)}", total=total)
            bar.update(tasks[name], completed=done, total=total)

        yield update


def _split(values: Optional[list[str]]) -> list[str]:
    return [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]


def eval_command(
    models: Annotated[list[str], typer.Argument(
        help="Models: embedded names, checkpoint or run dirs, hub ids. The first is the "
        "baseline of the comparison.")],
    data: Annotated[Optional[str], typer.Option(
        "--data", "-d", help="Evaluation file (JSONL, CSV, Parquet) in any training format "
        "or with custom fields.")] = None,
    task: Annotated[str, typer.Option(help="auto, generation, lm, classification or "
                                      "zero-shot.")] = "auto",
    metrics: Annotated[Optional[list[str]], typer.Option(
        "--metrics", "-m", help="Comma-separated: em, f1, bleu, chrf, rouge (generation); "
        "loss, perplexity, token_accuracy (lm); accuracy, macro_f1 (labels); accuracy, "
        "example_f1, micro_f1, macro_f1, hamming_loss (multi-label).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o",
        help="Output directory (default: RUN/eval/<data name> or evals/<model>-<time>).")
    ] = None,
    prompt_template: Annotated[Optional[str], typer.Option(
        help="Build the prompt from fields, e.g. 'Translate to French:\\n{source}'.")] = None,
    reference_field: Annotated[Optional[str], typer.Option(
        help="Field holding the expected output (default: the format's answer, or target, "
        "answer, summary...).")] = None,
    text_field: Annotated[Optional[str], typer.Option(
        help="Text field for label tasks (default: the classifier's, else text).")] = None,
    text_pair_field: Annotated[Optional[str], typer.Option(
        help="Second text field of sentence-pair classifiers.")] = None,
    label_field: Annotated[Optional[str], typer.Option(
        help="Label field for label tasks (default: the classifier's, else label).")] = None,
    labels: Annotated[Optional[str], typer.Option(
        help="Zero-shot: class texts in id order, comma-separated.")] = None,
    label_separator: Annotated[Optional[str], typer.Option(
        help="Multi-label: split string labels on this (default: the classifier's training "
        "setting); JSON lists need none.")] = None,
    threshold: Annotated[Optional[float], typer.Option(
        help="Multi-label: probability at or above which a class is predicted (default: "
        "the classifier's training threshold).")] = None,
    normalize: Annotated[bool, typer.Option(
        help="Zero-shot: rank labels by mean (not total) token log-likelihood.")] = False,
    max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    batch_size: int = 8,
    max_length: Annotated[Optional[int], typer.Option(
        help="Token limit (default: the classifier's, else 2048).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use the first N rows.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for CIs.")] = 1000,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    shots: Annotated[int, typer.Option(
        help="Few-shot baseline: K solved examples from --shots-from as earlier chat turns "
        "(generation and zero-shot).")] = 0,
    shots_from: Annotated[Optional[str], typer.Option(
        help="File of solved examples (the task's training rows) to draw shots from.")] = None,
    shots_select: Annotated[str, typer.Option(
        help="random (seeded), bm25 or embedding (nearest to the input).")] = "random",
    rag: Annotated[Optional[str], typer.Option(
        help="Retrieval baseline: an index from `tunesmith rag index`; top passages go "
        "before the question.")] = None,
    rag_k: Annotated[int, typer.Option(help="Passages retrieved per example.")] = 3,
    embedder: Annotated[Optional[str], typer.Option(
        help="Sentence encoder for --shots-select embedding (default minilm-l6).")] = None,
    general: Annotated[bool, typer.Option(
        help="Score the packaged general-ability suite (HellaSwag, MMLU, PIQA samples) "
        "instead of --data; two or more models: each against the first.")] = False,
    lm_eval_tasks: Annotated[Optional[Path], typer.Option(
        help="With --general: also write the suite as local lm-eval tasks here.")] = None,
) -> None:
    """Evaluate models on a file: metrics, predictions, side-by-side comparison, report.

    Every eval reports prompt tokens and latency per example beside quality."""
    if general or data is None:
        return _general(models, general, output, limit, bootstrap, seed, dtype, lm_eval_tasks)
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.evaluate.tasks import EvalSettings

    settings = EvalSettings(task=task, metrics=_split(metrics), prompt_template=prompt_template,
                            reference_field=reference_field, text_field=text_field,
                            text_pair_field=text_pair_field,
                            label_field=label_field, labels=_split([labels]) if labels else None,
                            label_separator=label_separator, threshold=threshold,
                            normalize=normalize, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, seed=seed, system=system,
                            batch_size=batch_size, max_length=max_length, limit=limit,
                            bootstrap=bootstrap, dtype=dtype, shots=shots, shots_from=shots_from,
                            shots_select=shots_select, embedder=embedder, rag=rag, rag_k=rag_k)
    with _progress("eval") as update:
        summary = run_eval(models, data, output, settings, update)
    table = Table(title=f"{summary['task']} · {summary['examples']} examples",
                  title_justify="left")
    table.add_column("metric")
    for m in summary["models"]:
        table.add_column(escape(m["name"]), justify="right")
    cells = [metric_cells(m["metrics"]) for m in summary["models"]]
    for k in cells[0]:
        table.add_row(escape(k), *[c.get(k, "-") for c in cells])
    if all("cost" in m for m in summary["models"]):
        table.add_row("prompt tokens", *[f"{m['cost']['prompt_tokens']:.1f}"
                                         for m in summary["models"]])
        table.add_row("latency ms", *[f"{m['cost']['latency_ms']:.1f}"
                                      for m in summary["models"]])
    out.print(table)
    for c in summary.get("comparison", []):
        mark = "[bold]*[/]" if c["significant"] else " "
        out.print(f"{mark} {c['metric']}: {escape(c['model'])} − {escape(c['baseline'])} = "
                  f"{c['delta']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] p={c['p_value']:.3f}")
    out.print(f"→ {summary['out_dir']}/report.html")


def metric_cells(metrics: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A model's metrics as table cells: numbers as they are, nested blocks (per category or
    entity type: ``tool-calls``' ``{"simple": {"ast_accuracy": .., "ast_ci95": [lo, hi]}}``)
    flattened to ``simple · ast_accuracy`` with the block's 95 % interval beside its value."""
    cells: dict[str, str] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            cells.update(metric_cells(value, f"{name} · "))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        elif isinstance(value, int):
            cells[name] = str(value)
        else:
            ci = metrics.get(key.replace("_accuracy", "_ci95"))
            cells[name] = f"{value:.4f}" + (
                f" [{ci[0]:.2f}, {ci[1]:.2f}]" if key.endswith("_accuracy")
                and isinstance(ci, list) and len(ci) == 2 else "")
    return cells


def _general(models: list[str], general: bool, output: Optional[Path], limit: Optional[int],
             bootstrap: int, seed: int, dtype: str, lm_eval_tasks: Optional[Path]) -> None:
    """``eval --general``: the suite's scores (and lm-eval task files on request)."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.errors import UsageError
    from tunesmith.evaluate.forgetting import run_general_eval
    from tunesmith.evaluate.general import write_lm_eval_tasks
    from tunesmith.evaluate.runner import default_out_dir

    if not general:
        raise UsageError("nothing to evaluate on", where="--data",
                         fix="give --data FILE, or --general for the general-ability suite")
    if lm_eval_tasks is not None:
        names = write_lm_eval_tasks(lm_eval_tasks, limit=limit)
        out.print(f"lm-eval tasks → {lm_eval_tasks}: lm_eval --model hf --model_args "
                  f"pretrained=MODEL_DIR --tasks {','.join(names)} --include_path "
                  f"{lm_eval_tasks}")
    result = run_general_eval(models, output or default_out_dir(models, "general"),
                              limit=limit, n_boot=bootstrap, seed=seed, dtype=dtype)
    if "comparisons" in result:
        for c in result["comparisons"]:
            out.print(f"{escape(c['after_model'])}: {c['after']:.4f} vs {c['before']:.4f} → "
                      f"{c['delta']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]")
    else:
        lo, hi = result["ci95"]
        out.print(f"general-ability accuracy {result['score']:.4f} [{lo:.4f}, {hi:.4f}] on "
                  f"{result['items']} items; " + ", ".join(
                      f"{n} {v['acc']:.4f}" for n, v in result["sets"].items()))
    out.print(f"→ {result['out_dir']}/general.json")


def analyze_command(
    eval_dir: Annotated[Path, typer.Argument(help="Directory written by `tunesmith eval`.")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Output directory (default: EVAL_DIR/analysis).")] = None,
    slice_by: Annotated[Optional[list[str]], typer.Option(
        help="Metadata fields to slice by (default: fields with 2-30 short values).")] = None,
    top: Annotated[int, typer.Option(help="Worst examples to show.")] = 20,
    queue_size: Annotated[int, typer.Option(help="Rows in the relabel queue.")] = 200,
    alpha: Annotated[float, typer.Option(help="Significance level of slice flags.")] = 0.05,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples per slice.")] = 1000,
) -> None:
    """Worst examples, confusions, slices with significance flags, and a relabel queue."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.evaluate.analysis import run_analyze

    result = run_analyze(eval_dir, output, _split(slice_by) or None, top, queue_size, alpha,
                         bootstrap)
    for name, a in result["models"].items():
        flagged = [r for r in a["slices"] if r["flagged"]]
        out.print(f"[bold]{escape(name)}[/]: {a['errors']} errors, {len(flagged)} flagged "
                  f"slices, relabel queue {result['out_dir']}/{a['queue_file']}")
        for r in flagged[:10]:
            out.print(f"  ⚑ {escape(r['dimension'])}={escape(r['slice'])} (n={r['n']}): "
                      f"{r['metric']} {r['value']:.4f} vs rest {r['rest']:.4f}, "
                      f"p={r['p_holm']:.3g}")
    out.print(f"→ {result['out_dir']}/report.html")


def audit_command(
    model: Annotated[str, typer.Argument(help="Model name, checkpoint or run dir.")],
    data: Annotated[str, typer.Option("--data", "-d", help="CrowS-Pairs CSV/JSONL (causal LMs) "
                                      "or texts to swap terms in (classifiers).")],
    kind: Annotated[str, typer.Option(help="auto, crows-pairs or counterfactual.")] = "auto",
    threshold: Annotated[Optional[float], typer.Option(
        help="Verdict threshold: stereotype preference rate (default 0.6) or flip rate "
        "(default 0.05).")] = None,
    terms: Annotated[Optional[Path], typer.Option(
        help="Extra term pairs: lines `group,term_a,term_b`.")] = None,
    groups: Annotated[Optional[list[str]], typer.Option(help="Only these term groups.")] = None,
    text_field: Annotated[Optional[str], typer.Option(
        help="Text field (counterfactual; default: the classifier's, else text).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use the first N rows.")] = None,
    batch_size: int = 16,
    max_length: Annotated[Optional[int], typer.Option(
        help="Token limit (default: the classifier's, else 512).")] = None,
    examples: Annotated[int, typer.Option(help="Examples per category.")] = 3,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Output directory (default: RUN/audit or audits/...).")] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
) -> None:
    """Bias audit: CrowS-Pairs likelihoods (causal LMs) or term swaps (classifiers)."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.evaluate.audit import run_audit, verdict_line

    with _progress("audit") as update:
        result = run_audit(model, data, output, kind, threshold, terms, _split(groups) or None,
                           text_field, limit, batch_size, max_length, examples, dtype,
                           lambda d, n: update(model, d, n))
    colour = {"pass": "green", "warn": "yellow", "fail": "red", "info": "blue"}
    for row in [result["overall"], *result["categories"]]:
        v = row["verdict"]
        out.print(f"[{colour[v]}]{v.upper():5}[/] "
                  f"{escape(verdict_line(row, result['kind'], result['threshold']))}")
    out.print(f"→ {result['out_dir']}/report.html")


def register(app: typer.Typer) -> None:
    """Add ``eval``, ``analyze`` and ``audit`` to the ``tunesmith`` app."""
    app.command("eval")(eval_command)
    app.command("analyze")(analyze_command)
    app.command("audit")(audit_command)
