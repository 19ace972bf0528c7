"""``tunesmith studio``: the web UI and the API in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunesmith.serve.cli import DataDir, DbUrl
from tunesmith.serve.settings import DEFAULT_DATA_DIR, ServeSettings

err = Console(stderr=True, soft_wrap=True)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def studio(data_dir: DataDir = Path(DEFAULT_DATA_DIR),
           host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")
                           ] = "127.0.0.1",
           port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
           api_key: Annotated[Optional[str], typer.Option(
               "--api-key", envvar="TUNESMITH_API_KEY",
               help="Require this key: API clients send `Authorization: Bearer KEY`, the "
               "browser asks for it once.")] = None,
           db: DbUrl = None,
           runs: Annotated[Optional[list[str]], typer.Option(
               "--runs", help="Folders of run directories written by `tunesmith train` to "
               "show beside the jobs (repeatable; default: ./runs).")] = None,
           model: Annotated[Optional[list[str]], typer.Option(
               "--model", help="Models to serve for the playground and evaluation (as "
               "`tunesmith serve MODEL_OR_RUN`; NAME=PATH names them). Repeatable.")] = None,
           max_upload_mb: Annotated[float, typer.Option(
               help="Largest upload, in MiB (Datasets page and /v1/files).")] = 512.0,
           log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
           ) -> None:
    """Open the studio: datasets, runs with live curves, evaluation, playground, export."""
    # deferred: optional (the serve extra); loads torch; keeps `tunesmith --help` fast
    import uvicorn

    from tunesmith.studio.app import StudioState, create_studio_app

    settings = ServeSettings(models=list(model or []), host=host, port=port, api_key=api_key,
                             data_dir=data_dir, db_url=db,
                             max_upload_bytes=int(max_upload_mb * (1 << 20)))
    if host not in LOOPBACK and not settings.api_key:
        err.print(f"[yellow]warning:[/] the studio on {host} without --api-key lets anyone who "
                  "can reach this address train, delete and serve models")
    app = create_studio_app(settings, StudioState(runs_dirs=[Path(r) for r in runs or
                                                             ["runs"]]))
    shown = "localhost" if host in LOOPBACK else host
    err.print(f"tunesmith studio on http://{shown}:{port}/studio  (API: /v1, data: "
              f"{settings.data_dir})" + (" — sign in with the API key" if settings.api_key
                                         else ""))
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.command("studio")(studio)
