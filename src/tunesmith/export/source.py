"""What an export starts from: a run directory, a checkpoint, an adapter or a model name.

The name resolves exactly as for ``chat``/``eval``/``predict`` (``resolve_artifact``: a run
directory gives its ``final/``, else ``best/``, else the latest checkpoint). The kind
(causal LM or classifier) and whether the directory is a LoRA adapter decide how the model
is loaded and which formats apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.models.artifacts import (
    adapter_base,
    is_adapter_dir,
    model_kind,
    resolve_artifact,
    run_dir_of,
)
from tunesmith.models.registry import resolve_model_dir


@dataclass
class ExportSource:
    name: str                # what the user passed
    path: Path               # the model/adapter directory that gets loaded
    kind: str                # "causal-lm" | "classifier"
    is_adapter: bool         # a peft adapter directory (needs its base to load)
    base: str | None         # the adapter's base model (adapters only)
    run_dir: Path | None     # the training run behind it, for the model card

    @property
    def config(self) -> dict[str, Any]:
        """The checkpoint's ``config.json`` (the base's for an adapter); {} when absent."""
        f = self.path / "config.json"
        if f.exists():
            return json.loads(f.read_text())
        if self.base is not None:
            base_cfg = Path(str(resolve_model_dir(self.base))) / "config.json"
            if base_cfg.exists():
                return json.loads(base_cfg.read_text())
        return {}

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])


def resolve_source(name: str) -> ExportSource:
    """Resolve ``name`` to a local model directory and describe it; one ModelError if not."""
    src = resolve_artifact(name)
    path = Path(str(src))
    if not path.is_dir():
        raise ModelError("export needs a model on disk", where="RUN_OR_MODEL", got=name,
                         fix="pass a run directory, a checkpoint directory or an embedded "
                         "model name (hub ids: download the model first)")
    is_adapter = is_adapter_dir(path)
    base = adapter_base(path) if is_adapter else None
    if not is_adapter and not (path / "config.json").exists():
        raise ModelError("not a model directory (no config.json or adapter_config.json)",
                         where=str(path), fix="pass a run directory or a saved checkpoint")
    run = run_dir_of(str(path)) or run_dir_of(name)
    return ExportSource(name, path, model_kind(path), is_adapter, base, run)
