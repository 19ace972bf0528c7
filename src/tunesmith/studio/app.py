"""``create_studio_app``: serve's app (OpenAI API, jobs API, feedback, metrics) plus the UI.

One process, one FastAPI app: the studio's routes are included on the app that
``serve.app.create_app`` builds, its static files are mounted under ``/studio/static``, and
its gate (``auth.StudioGate``) wraps everything, outside serve's request guard. ``tunesmith
serve`` never calls this, so it keeps working without the UI.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from tunesmith.serve.api.engines import ModelPool
from tunesmith.serve.app import create_app
from tunesmith.serve.settings import ServeSettings
from tunesmith.studio import (
    routes_annotate,
    routes_data,
    routes_eval,
    routes_humaneval,
    routes_login,
    routes_models,
    routes_new,
    routes_play,
    routes_review,
    routes_runs,
)
from tunesmith.studio.auth import Sessions, StudioGate, load_secret
from tunesmith.studio.render import compile_templates, static_dir
from tunesmith.studio.runs import list_runs

REPO_CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@dataclass
class StudioState:
    """The studio's own settings (``app.state.studio``)."""

    runs_dirs: list[Path] = field(default_factory=lambda: [Path("runs")])
    configs_dirs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.runs_dirs = [Path(p).expanduser() for p in self.runs_dirs]
        if not self.configs_dirs:
            candidates = [Path("configs"), REPO_CONFIGS]
            seen: set[Path] = set()
            for c in candidates:
                if c.is_dir() and c.resolve() not in seen:
                    seen.add(c.resolve())
                    self.configs_dirs.append(c)


def _read_runs_once(app: FastAPI) -> None:
    """Read every run directory once in the background at start-up, so that the first
    Runs page does not pay for the first look at hundreds of directories."""
    state = app.state
    threading.Thread(target=list_runs, args=(state.db, Path(state.settings.data_dir),
                                             state.studio.runs_dirs),
                     name="studio-warm-up", daemon=True).start()


def create_studio_app(settings: ServeSettings, studio: StudioState | None = None,
                      pool: ModelPool | None = None) -> FastAPI:
    """serve's app with the studio included (routes, static files, sessions)."""
    app = create_app(settings, pool=pool)
    app.state.studio = studio or StudioState()
    compile_templates()
    (Path(settings.data_dir) / "studio").mkdir(parents=True, exist_ok=True)
    app.mount("/studio/static", StaticFiles(directory=static_dir()), name="studio-static")
    for module in (routes_login, routes_runs, routes_new, routes_data, routes_eval,
                   routes_play, routes_models):
        app.include_router(module.router)
    for module in (routes_humaneval, routes_annotate, routes_review):  # human evaluation
        app.include_router(module.router)

    @app.get("/studio", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/studio/runs", status_code=303)

    app.include_router(routes_login.fallback)  # last: unknown studio URLs get a page
    app.state.startup.append(lambda: _read_runs_once(app))
    sessions = Sessions(load_secret(settings.data_dir), settings.api_key)
    app.state.studio_sessions = sessions
    app.add_middleware(StudioGate, sessions=sessions, api_key=settings.api_key,
                       max_body_bytes=settings.max_body_bytes,
                       max_upload_bytes=settings.max_upload_bytes)
    return app
