"""Where the jobs API keeps things inside the server's data directory, in one place.

    <data_dir>/files/<file-id>.jsonl        uploaded files (validated, immutable)
    <data_dir>/jobs/<job-id>/               a job's run directory while it trains (resumable)
    <data_dir>/models/<fine_tuned_model>/   the run directory of a job that succeeded

A fine-tuned model's directory is a normal tunesmith run directory (``final/``,
``checkpoints/``, ``manifest.json``) plus ``tunesmith_model.json`` naming it, so the model pool
of ``tunesmith serve`` (and ``tunesmith chat``) loads it like any run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MODEL_INFO = "tunesmith_model.json"
_NAME_OK = re.compile(r"^[A-Za-z0-9._:-]+$")
_CKPT = re.compile(r"^(?P<model>.+):ckpt-step-(?P<step>\d+)$")


def files_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "files"


def file_path(data_dir: Path, file_id: str) -> Path:
    return files_dir(data_dir) / f"{file_id}.jsonl"


def job_run_dir(data_dir: Path, job_id: str) -> Path:
    """The run directory a job trains into (``output.dir`` = ``<data_dir>/jobs``, name = id)."""
    return Path(data_dir) / "jobs" / job_id


def model_dir(data_dir: Path, name: str) -> Path:
    """``<data_dir>/models/<name>/`` for a fine-tuned model name (used as-is)."""
    if not is_safe_name(name):
        raise ValueError(f"not a fine-tuned model name: {name!r}")
    return Path(data_dir) / "models" / name


def is_safe_name(name: str) -> bool:
    return bool(_NAME_OK.match(name)) and name not in (".", "..") and len(name) <= 200


def name_part(text: str) -> str:
    """A model name or path reduced to a component of a fine-tuned model name."""
    last = text.rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]", "-", last).strip("-.") or "model"


def fine_tuned_name(base: str, suffix: str | None, job_id: str) -> str:
    """``ft:<base>:<suffix or 'tunesmith'>:<8 chars of the job id>`` (OpenAI's shape)."""
    if base.startswith("ft:"):  # continuing a fine-tuned model keeps its base
        base = base.split(":")[1]
    short = job_id.split("-", 1)[-1][:8]
    return f"ft:{name_part(base)}:{suffix or 'tunesmith'}:{short}"


def checkpoint_name(model: str, step: int) -> str:
    return f"{model}:ckpt-step-{step}"


def resolve_model_name(data_dir: Path, name: str) -> Path | None:
    """The directory holding a fine-tuned model or checkpoint by name, or None.

    ``ft:...`` resolves to its run directory (load it with ``resolve_artifact``: ``final/``);
    ``ft:...:ckpt-step-N`` to ``checkpoints/step-N/`` (or ``final/`` for the last step).
    """
    if not is_safe_name(name):
        return None
    direct = Path(data_dir) / "models" / name
    if (direct / "final").is_dir():
        return direct
    match = _CKPT.match(name)
    if match is None:
        return None
    run = Path(data_dir) / "models" / match["model"]
    step = int(match["step"])
    ckpt = run / "checkpoints" / f"step-{step}"
    if ckpt.is_dir():
        return ckpt
    info = read_model_info(run)
    if info and info.get("steps") == step and (run / "final").is_dir():
        return run / "final"
    return None


def read_model_info(run: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run / MODEL_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def list_fine_tuned(data_dir: Path) -> list[dict[str, Any]]:
    """Every finished fine-tuned model: ``{id, base, job, created, steps}``, oldest first."""
    root = Path(data_dir) / "models"
    found = []
    for run in sorted(root.glob("*")) if root.is_dir() else []:
        info = read_model_info(run)
        if info and (run / "final").is_dir():
            found.append(info)
    return sorted(found, key=lambda i: i.get("created", 0))
