"""``tunesmith serve``, ``monitor``, ``feedback export`` and ``promote``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from tunesmith.errors import UsageError
from tunesmith.serve.settings import DEFAULT_DATA_DIR, ServeSettings, parse_adapters

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Path, typer.Option(
    "--data-dir", help="Server state: SQLite database, uploaded files, fine-tuned models.")]
DbUrl = Annotated[Optional[str], typer.Option(
    "--db", help="SQLAlchemy URL instead of the SQLite file in --data-dir, e.g. "
    "postgresql+psycopg://user:pw@host/db.")]


def serve(models: Annotated[Optional[list[str]], typer.Argument(
              metavar="MODEL_OR_RUN", help="Models to serve: embedded names, checkpoint or run directories, hub ids; "
              "NAME=PATH chooses the served name.")] = None,
          adapter: Annotated[Optional[list[str]], typer.Option(
              "--adapter", help="NAME=RUN: a LoRA run served as NAME, sharing its base model "
              "in memory with the other adapters on it. Repeatable.")] = None,
          host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")
                          ] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
          api_key: Annotated[Optional[str], typer.Option(
              "--api-key", envvar="TUNESMITH_API_KEY",
              help="Require `Authorization: Bearer KEY` on every route but /health.")] = None,
          data_dir: DataDir = Path(DEFAULT_DATA_DIR), db: DbUrl = None,
          dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16")] = "auto",
          max_tokens_limit: Annotated[int, typer.Option(
              help="Largest max_tokens a request may ask for.")] = 4096,
          max_body_mb: Annotated[float, typer.Option(
              help="Largest JSON request body, in MiB.")] = 1.0,
          allow_base_dir: Annotated[Optional[list[Path]], typer.Option(
              "--allow-base-dir", help="A directory whose model directories fine-tuning jobs "
              "may name as their base model. Repeatable; by default jobs train only served, "
              "embedded, fine-tuned or hub models.")] = None,
          log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
          rag: Annotated[Optional[list[str]], typer.Option(
              "--rag", help="NAME=INDEX: answer chat requests to NAME with passages retrieved "
              "from INDEX (`tunesmith rag index`); responses name them. Repeatable.")] = None,
          engine: Annotated[str, typer.Option(
              help="builtin (continuous batching in this process), upstream (delegate "
              "generation to --upstream-url), llamacpp (llama-cpp-python on the run's GGUF "
              "export, cached; LoRA runs as GGUF adapters).")] = "builtin",
          gguf_quant: Annotated[str, typer.Option(
              "--gguf-quant", help="--engine llamacpp: the GGUF's weight type (f32, f16, bf16, "
              "q8_0, q5_0, q5_1, q4_0, q4_1).")] = "q8_0",
          upstream_url: Annotated[Optional[str], typer.Option(
              "--upstream-url", help="--engine upstream: base URL of an OpenAI-compatible "
              "server (vllm serve, llama-server, tunesmith serve) serving the same names.")
                                  ] = None,
          max_batch: Annotated[int, typer.Option(
              help="Rows (choices) decoded together per step, per base model.")] = 16,
          max_tokens_in_flight: Annotated[int, typer.Option(
              help="KV-cache tokens (prompt + max_tokens per row) the running batch may "
              "reach, per base model.")] = 65536,
          max_queue: Annotated[int, typer.Option(
              help="Requests waiting per base model; more get 429 with Retry-After.")] = 256,
          ) -> None:
    """Serve models behind an OpenAI-compatible API (chat, completions, classify, jobs)."""
    # deferred: optional (the serve extra); loads torch; keeps `tunesmith --help` fast
    import uvicorn

    from tunesmith.serve.app import create_app

    if dtype not in ("auto", "float32", "bfloat16"):
        raise UsageError("unknown --dtype", where="--dtype", got=dtype,
                         fix="use auto, float32 or bfloat16")
    settings = ServeSettings(models=list(models or []), adapters=parse_adapters(adapter or []),
                             host=host, port=port, api_key=api_key, data_dir=data_dir,
                             db_url=db, dtype=dtype, max_tokens_limit=max_tokens_limit,
                             max_body_bytes=int(max_body_mb * (1 << 20)),
                             allow_base_dirs=list(allow_base_dir or []),
                             rag=parse_rag(rag or []), engine=engine,
                             upstream_url=upstream_url, max_batch=max_batch,
                             max_tokens_in_flight=max_tokens_in_flight, max_queue=max_queue,
                             extra={"gguf_quant": gguf_quant})
    for flag, value in (("--max-batch", max_batch), ("--max-tokens-in-flight",
                                                     max_tokens_in_flight),
                        ("--max-queue", max_queue)):
        if value < (0 if flag == "--max-queue" else 1):
            raise UsageError(f"{flag} is too small", where=flag, got=str(value),
                             fix=f"give {flag} a positive number")
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        err.print(f"[yellow]warning:[/] serving on {host} without --api-key: anyone who can "
                  "reach this address can use the models and the jobs API")
    app = create_app(settings)
    names = ", ".join(app.state.pool.handles) or "(none yet: fine-tuned job models load on use)"
    err.print(f"serving {names} on http://{host}:{port}/v1"
              + (" (API key required)" if settings.api_key else ""))
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def parse_rag(values: list[str]) -> dict[str, str]:
    """``NAME=INDEX`` pairs; each index's manifest is checked now, before serving."""
    # deferred: loads the rag package's readers only when --rag is given
    from tunesmith.rag.index import read_manifest

    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise UsageError("--rag takes NAME=INDEX", where="--rag", got=v,
                             fix="e.g. --rag support-bot=./my-index")
        read_manifest(Path(path))
        out[name] = str(Path(path).resolve())
    return out


def monitor(data_dir: DataDir = Path(DEFAULT_DATA_DIR), db: DbUrl = None,
            output: Annotated[Path, typer.Option("-o", "--output",
                                                 help="Report directory.")] = Path("monitor"),
            run: Annotated[Optional[str], typer.Option(
                "--run", help="Training run: compare served input lengths with its training "
                "data's.")] = None,
            data: Annotated[Optional[Path], typer.Option(
                "--data", help="Reference data file instead of the run's training file "
                "(tokenized with the run's tokenizer).")] = None,
            model: Annotated[Optional[str], typer.Option(
                help="Only requests to this served model.")] = None,
            since_hours: Annotated[Optional[float], typer.Option(
                "--since-hours", help="Only the last N hours.")] = None,
            ) -> None:
    """Latency percentiles, error rate, throughput and input-length drift of a server."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.serve.ops.report import build_monitor_report

    summary, html = build_monitor_report(_db_url(data_dir, db), output, run=run, data=data,
                                         model=model, since_hours=since_hours)
    lat = summary["latency_ms"]
    out.print(f"{summary['requests']} requests, error rate {summary['error_rate']:.2%}, "
              f"{summary['throughput_rps']:.3g} req/s; latency p50 {lat['p50']:.1f} ms, "
              f"p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms")
    if summary.get("drift"):
        d = summary["drift"]
        out.print(f"input-length drift vs {d['reference']}: PSI {d['psi']:.3f}, KS "
                  f"{d['ks']:.3f} (p={d['ks_p']:.3g}) → {d['verdict']}")
    err.print(f"wrote {html}")


def feedback_export(output: Annotated[Path, typer.Option("-o", "--output",
                                                         help="JSONL file to write.")],
                    data_dir: DataDir = Path(DEFAULT_DATA_DIR), db: DbUrl = None,
                    format: Annotated[str, typer.Option(
                        "--format", help="sft (messages), dpo (prompt/chosen/rejected) or "
                        "kto (prompt/completion/label: every rating).")
                                      ] = "sft",
                    model: Annotated[Optional[str], typer.Option(
                        help="Only completions of this served model.")] = None,
                    kind: Annotated[str, typer.Option(
                        help="chat (/v1/chat/completions) or text (/v1/completions).")
                                    ] = "chat",
                    campaign: Annotated[Optional[str], typer.Option(
                        help="A human evaluation campaign's ratings instead: dpo (preferred "
                        "over the other answer), sft (corrections), kto.")] = None,
                    ) -> None:
    """Turn feedback into the next training set (SFT corrections/upvotes, DPO pairs, or KTO
    rows)."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.serve.feedback.export import export_feedback

    if format not in ("sft", "dpo", "kto"):
        raise UsageError("unknown --format", where="--format", got=format,
                         fix="use sft, dpo or kto")
    if campaign is not None:
        # deferred: SQLAlchemy (the serve extra); keeps `tunesmith --help` fast
        from tunesmith.humaneval.export import export_campaign

        n = export_campaign(_db_url(data_dir, db), campaign, output, format)
        err.print(f"wrote {n} {format} rows from campaign {campaign} to {output}")
        return
    if kind not in ("chat", "text"):
        raise UsageError("unknown --kind", where="--kind", got=kind, fix="use chat or text")
    n = export_feedback(_db_url(data_dir, db), output, format, model=model, kind=kind)
    err.print(f"wrote {n} {format} rows to {output}")


def promote(candidate: Annotated[str, typer.Argument(
                metavar="CANDIDATE", help="The model to serve if it is not worse: run or model "
                "directory, embedded name, fine-tuned model or alias name.")],
            over: Annotated[str, typer.Option(
                "--over", metavar="CURRENT", help="The model served now (its served name is "
                "the default --name).")],
            eval_file: Annotated[Optional[str], typer.Option(
                "--eval", help="Held-out evaluation file (any format `tunesmith eval` reads); "
                "optional with --campaign.")] = None,
            metric: Annotated[Optional[str], typer.Option(
                help="Decision metric (default: chrf for generation, perplexity for LM loss, "
                "accuracy for labels).")] = None,
            tolerance: Annotated[float, typer.Option(
                help="How much worse the candidate may be, in the metric's units: promoted "
                "iff the 95% CI lower bound of the improvement >= -tolerance.")] = 0.0,
            data_dir: DataDir = Path(DEFAULT_DATA_DIR),
            name: Annotated[Optional[str], typer.Option(
                help="Served name to point at the candidate (default: CURRENT's).")] = None,
            output: Annotated[Optional[Path], typer.Option(
                "-o", "--output", help="Report directory (default: "
                "DATA_DIR/promotions/<name>-<time>).")] = None,
            dry_run: Annotated[bool, typer.Option(
                "--dry-run", help="Evaluate and decide, change nothing (exit 0 if it would "
                "promote, 1 if not).")] = False,
            task: Annotated[str, typer.Option(
                help="auto, generation, lm, classification or zero-shot.")] = "auto",
            max_new_tokens: Annotated[int, typer.Option(help="Generation tasks.")] = 256,
            batch_size: int = 8,
            limit: Annotated[Optional[int], typer.Option(help="Use the first N rows.")] = None,
            bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
            seed: int = 0,
            dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")
                             ] = "auto",
            campaign: Annotated[Optional[str], typer.Option(
                help="Also (or, without --eval, only) require reviewers to prefer the "
                "candidate in this human evaluation campaign: the 95% lower bound of its "
                "win rate over CURRENT >= 0.5 - --campaign-tolerance.")] = None,
            campaign_tolerance: Annotated[float, typer.Option(
                help="Win-rate margin for --campaign (0.1: refused only if it clearly wins "
                "under 40%).")] = 0.0,
            general_tolerance: Annotated[Optional[float], typer.Option(
                help="Also refuse a candidate whose accuracy on the general-ability suite "
                "drops by more than this (e.g. 0.02): the forgetting guard.")] = None,
            db: DbUrl = None,
            ) -> None:
    """Serve CANDIDATE under CURRENT's name only if its evaluation is not worse."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.evaluate.forgetting import general_gate
    from tunesmith.evaluate.tasks import EvalSettings
    from tunesmith.serve.feedback.promote import PromoteRequest, run_promote

    gates = []
    if campaign is not None:
        # deferred: SQLAlchemy (the serve extra); keeps `tunesmith --help` fast
        from tunesmith.humaneval.gate import campaign_gate

        gates.append(campaign_gate(_db_url(data_dir, db), campaign, candidate, over,
                                   campaign_tolerance))

    if general_tolerance is not None:  # forgetting guard (evaluate/forgetting.py)
        gates.append(general_gate(general_tolerance, n_boot=bootstrap, seed=seed, dtype=dtype))
    settings = EvalSettings(task=task, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            limit=limit, bootstrap=bootstrap, seed=seed, dtype=dtype)
    req = PromoteRequest(candidate, over, eval_file, metric=metric, tolerance=tolerance,
                         data_dir=data_dir, name=name, output=output, dry_run=dry_run,
                         settings=settings, gates=gates)
    result = run_promote(req)
    if result["note"]:
        err.print(f"note: {escape(result['note'])}")
    for g in result["gates"]:
        out.print(escape(g["reason"]))
    if result["promoted"]:
        out.print(f"[green]promoted[/] {escape(candidate)} → served as "
                  f"`{escape(result['name'])}` ({escape(result['alias_file'])})")
    elif result["passed"]:
        out.print(f"[green]would promote[/] {escape(candidate)} as `{escape(result['name'])}` "
                  "(dry run: nothing changed)")
    else:
        failed = ", ".join(g["metric"] for g in result["gates"] if not g["promote"])
        out.print(f"[red]refused[/]: {escape(candidate)} did not pass the {escape(failed)} "
                  f"gate against {escape(over)} (why: above); nothing changed")
    err.print(f"report: {result['report'] or result['out_dir'] + '/promote.json'}")
    if not result["passed"]:
        raise typer.Exit(1)


def _db_url(data_dir: Path, db: str | None) -> str:
    if db:
        return db
    path = data_dir / "tunesmith.db"
    if not path.exists():
        raise UsageError("no server database here", where=str(path),
                         fix="pass the --data-dir the server used (or --db URL)")
    return f"sqlite:///{path.resolve()}"


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("monitor")(monitor)
    app.command("promote")(promote)
    feedback_app = typer.Typer(help="Feedback gathered by `tunesmith serve`.",
                               no_args_is_help=True)
    feedback_app.command("export")(feedback_export)
    app.add_typer(feedback_app, name="feedback")
