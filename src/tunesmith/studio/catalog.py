"""What the screens offer to pick from: the models this server serves, the runs that have a
model to serve, evaluate or export (shared by Playground, Evaluate and Models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request

from tunesmith.serve.paths import resolve_model_name
from tunesmith.studio.runs import list_runs


def served_models(request: Request) -> list[dict[str, Any]]:
    """What ``GET /v1/models`` lists (chat models only: classifiers do not chat)."""
    return [m for m in request.app.state.pool.listing() if m.get("kind") != "classifier"]


def servable_runs(request: Request) -> list[Any]:
    state = request.app.state
    runs = list_runs(state.db, Path(state.settings.data_dir), state.studio.runs_dirs)
    return [r for r in runs if r.dir is not None and (r.dir / "final").is_dir()]


def served_sources(request: Request) -> list[dict[str, str]]:
    """Served names with what a command takes for them (``tunesmith eval`` and ``export``
    know directories, not served names): a loaded model's source, a job model's run dir."""
    pool, data_dir = request.app.state.pool, Path(request.app.state.settings.data_dir)
    out = []
    for m in served_models(request):
        handle = pool.handles.get(m["id"])
        source = getattr(handle, "source", None) if handle is not None else None
        if source is None:
            found = resolve_model_name(data_dir, m["id"])
            source = str(found) if found is not None else None
        if source:
            out.append({"name": m["id"], "source": str(source)})
    return out
