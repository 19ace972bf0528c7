"""What a run directory or a model directory holds, decided in one place.

* :func:`resolve_artifact`: a run directory stands for its ``final/`` (else ``best/``, else
  its latest checkpoint); other names go to the registry (embedded, local, hub id);
* :func:`model_kind`: ``classifier`` or ``causal-lm``; :func:`is_adapter_dir` and
  :func:`adapter_base`: a LoRA adapter directory and the base model it needs;
* the files tunesmith keeps beside weights (:data:`SIDECARS`), the classifier's
  ``tunesmith_classifier.json``, and the generation-config fix every saved LM gets.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.io import atomic_write_json
from tunesmith.models.registry import resolve_model_dir

CLASSIFIER_FILE = "tunesmith_classifier.json"
EVAL_FILE = "tunesmith_eval.json"
SOURCE_FILE = "tunesmith_source.json"
# files tunesmith writes beside weights that prediction/eval read back (copied on export)
SIDECARS = (CLASSIFIER_FILE, EVAL_FILE, SOURCE_FILE)
ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: Path | str) -> bool:
    """A peft adapter directory (``adapter_config.json`` and no full weights beside it)."""
    p = Path(str(path))
    return ((p / ADAPTER_CONFIG).exists() and not (p / "model.safetensors").exists()
            and not any(p.glob("model-*.safetensors")))


def adapter_base(path: Path | str) -> str:
    """The base model an adapter directory was trained on (``base_model_name_or_path``)."""
    f = Path(str(path)) / ADAPTER_CONFIG
    try:
        base = json.loads(f.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the adapter config ({exc})", where=str(f),
                         fix="point at an adapter saved by tunesmith or peft") from None
    if not base:
        raise ModelError("the adapter config names no base model", where=str(f),
                         got="base_model_name_or_path missing",
                         fix="set base_model_name_or_path to the base model's name or path")
    return str(base)


def model_kind(source: Path | str) -> str:
    """``classifier`` for sequence-classification checkpoints or adapters, else ``causal-lm``."""
    path = Path(str(source))
    if (path / CLASSIFIER_FILE).exists():
        return "classifier"
    if (path / ADAPTER_CONFIG).exists():
        cfg = json.loads((path / ADAPTER_CONFIG).read_text())
        return "classifier" if cfg.get("task_type") == "SEQ_CLS" else "causal-lm"
    if (path / "config.json").exists():
        archs = json.loads((path / "config.json").read_text()).get("architectures") or []
    else:  # a hub id
        # deferred: transformers is heavy and only this path needs it
        from transformers import AutoConfig

        archs = AutoConfig.from_pretrained(str(source)).architectures or []
    return "classifier" if is_classifier_architecture(archs) else "causal-lm"


def is_classifier_architecture(architectures: list[str] | None) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in architectures or [])


def write_classifier_info(out: Path, info: dict[str, Any]) -> None:
    atomic_write_json(out / CLASSIFIER_FILE, info)


def read_classifier_info(path: Path | str) -> dict[str, Any]:
    """``tunesmith_classifier.json`` (labels, fields, threshold, max length); {} if absent."""
    f = Path(str(path)) / CLASSIFIER_FILE
    return json.loads(f.read_text()) if f.exists() else {}


def copy_sidecars(source: Path, out: Path) -> None:
    for name in SIDECARS:
        if (source / name).exists():
            shutil.copy2(source / name, out / name)


def resolve_artifact(name: str) -> Path | str:
    """A run directory resolves to its ``final/`` (else ``best/``, else latest checkpoint)."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / "manifest.json").exists() and not (path / "config.json").exists():
        for sub in ("final", "best"):
            if (path / sub).is_dir():
                return path / sub
        steps = sorted((path / "checkpoints").glob("step-*"),
                       key=lambda p: int(p.name.split("-")[1]))
        if steps:
            return steps[-1]
        raise ModelError("run directory has no saved model yet", where=str(path),
                         fix="wait for the run to save a checkpoint, or resume it with "
                         "`tunesmith train CONFIG --resume`")
    return resolve_model_dir(name)


# -- models -------------------------------------------------------------------------------------
def run_dir_of(name: str) -> Path | None:
    """The training run directory behind ``name`` (for its ``metrics.jsonl`` curves), if any."""
    path = Path(name).expanduser()
    for cand in (path, path.parent):
        if (cand / "manifest.json").exists() and (cand / "metrics.jsonl").exists():
            return cand
    return None


def fix_generation_config(model: Any, tok: Any) -> None:
    """EOS (every id that ends a turn), BOS and pad ids in the model's generation config."""
    gen = getattr(model, "generation_config", None)
    if gen is None:
        return
    eos: list[int] = []
    for value in (gen.eos_token_id, tok.eos_token_id):
        for i in (value if isinstance(value, list) else [value]):
            if i is not None and i not in eos:
                eos.append(int(i))
    if eos:
        gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    if tok.bos_token_id is not None:
        gen.bos_token_id = tok.bos_token_id
    if tok.pad_token_id is not None:
        gen.pad_token_id = tok.pad_token_id
        model.config.pad_token_id = tok.pad_token_id
