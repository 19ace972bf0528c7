"""The FastAPI application: ``create_app(settings)``.

Contract with the fine-tuning jobs API (serve/jobs/: routes.py, files.py, worker.py):

- ``app.state.settings`` is the :class:`ServeSettings` (``data_dir``, ``models_dir``,
  ``api_key``, limits), ``app.state.db`` the :class:`Database` (tables of every module
  import ``Base`` from serve/db.py), ``app.state.pool`` the :class:`ModelPool`.
- ``build_jobs_router(app)`` is called after ``app.state`` is set and its router included.
  Work at startup/shutdown (the worker) goes into the lists ``app.state.startup`` /
  ``app.state.shutdown`` (callables, sync or async, no arguments), run by the app's lifespan.
- A finished job writes its model as a tunesmith run directory under
  ``<data_dir>/models/<fine_tuned_model>/``; the pool serves that name from there on first
  request (and ``GET /v1/models`` lists it).
- The API key check (every route but ``/health``), the body-size limit (``/v1/files`` has
  ``max_upload_bytes``, everything else ``max_body_bytes``) and request recording are
  middleware, so they cover the jobs routes too. Errors use OpenAI's error object
  (serve/api/errors.py: raise ``APIError(status, message, param, code)``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from tunesmith.serve.api.engines import ModelPool
from tunesmith.serve.api.errors import install_error_handlers
from tunesmith.serve.api.extract import build_extract_router
from tunesmith.serve.api.routes import build_openai_router
from tunesmith.serve.db import Database
from tunesmith.serve.feedback.routes import build_feedback_router
from tunesmith.serve.jobs.routes import build_jobs_router
from tunesmith.serve.ops.monitoring import GuardAndRecord, Metrics
from tunesmith.serve.settings import ServeSettings

log = logging.getLogger("tunesmith.serve")


async def _run_hooks(hooks: list) -> None:
    for hook in hooks:
        result = hook()
        if inspect.isawaitable(result):
            await result


def create_app(settings: ServeSettings, pool: ModelPool | None = None) -> FastAPI:
    """The server app. Models named in ``settings`` load here when ``settings.preload``."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url())
    if pool is None:
        pool = ModelPool(settings)
        if settings.preload:
            pool.load_settings_models()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _run_hooks(app.state.startup)
        try:
            yield
        finally:
            await _run_hooks(app.state.shutdown)
            app.state.db.dispose()

    app = FastAPI(title="tunesmith", version="1", lifespan=lifespan, docs_url="/docs",
                  redoc_url=None)
    metrics = Metrics()
    app.state.settings, app.state.db, app.state.pool = settings, db, pool
    app.state.metrics, app.state.startup, app.state.shutdown = metrics, [], []
    install_error_handlers(app)
    app.include_router(build_openai_router())
    app.include_router(build_extract_router())  # entities and answers (NER, QA)
    app.include_router(build_feedback_router())

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(_: Request) -> Response:
        # deferred: optional (the serve extra)
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(build_jobs_router(app))
    db.create_tables()  # tables of routers imported above
    app.add_middleware(GuardAndRecord, settings=settings, db=db, metrics=metrics)
    return app
