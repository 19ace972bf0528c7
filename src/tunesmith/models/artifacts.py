"""What a run directory or a model directory holds, decided in one place.

* :func:`resolve_artifact`: a run directory stands for its ``final/`` (else ``best/``, else
  its latest checkpoint); other names go to the registry (embedded, local, hub id);
* :func:`model_kind`: ``classifier`` or ``causal-lm``; :func:`is_adapter_dir` and
  :func:`adapter_base`: a LoRA adapter directory and the base model it needs;
* the files tunesmith keeps beside weights (:data:`SIDECARS`), the classifier's
  ``tunesmith_classifier.json``, and the generation-config fix every saved LM gets;
* :func:`check_weights_safe`: weights load from safetensors only; a directory whose weights
  are only pickle files is refused (unpickling can run code hidden in the file) unless the
  user allows pickle, and then they are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import shutil
import sys
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


# -- weights: safetensors only ------------------------------------------------------------------
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# pickle files of training state that sit beside the (safetensors) weights of a checkpoint
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng.pt", "scaler.pt", "training_args.bin")
ALLOW_PICKLE = "model.allow_pickle"
_warned_pickle: set[str] = set()


def pickle_weight_files(directory: Path) -> list[str]:
    """Names of the pickle files in ``directory`` that could hold weights."""
    return sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES
                  and p.name not in TRAINING_STATE and p.is_file())


def check_weights_safe(source: Path | str, allow_pickle: bool = False) -> dict[str, Any]:
    """The ``from_pretrained`` arguments that keep a load safe, after refusing a directory
    whose weights are only pickle files (``*.bin``, ``*.pt``, ``*.pth``).

    Unpickling can run any code the file's author put in it, so tunesmith reads safetensors
    only (``use_safetensors=True``; a hub id without safetensors is refused by transformers).
    With ``allow_pickle`` a pickle-only directory loads through
    ``torch.load(weights_only=True)``, which admits tensors and plain containers and refuses
    everything else unexecuted, with one warning per directory. Every tunesmith loader calls
    this before ``from_pretrained`` (and before peft reads an adapter directory).
    """
    path = Path(str(source))
    if not path.is_dir():  # a hub id: transformers chooses the file
        return {"weights_only": True} if allow_pickle else {"use_safetensors": True}
    pickles = pickle_weight_files(path)
    if any(path.glob("*.safetensors")) or not pickles:
        return {"use_safetensors": True}  # no weights at all: transformers says so
    command = conversion_command(path, pickles)
    if not allow_pickle:
        raise ModelError(
            "the model's weights are pickle files only, and tunesmith loads safetensors "
            "weights only: unpickling a file can run code hidden in it", where=str(path),
            got=", ".join(pickles),
            fix=f"convert them once (this reads tensors only, never code): {command}; or, for "
            f"files you trust, set {ALLOW_PICKLE}: true (read with torch.load(weights_only="
            "True))")
    if str(path) not in _warned_pickle:
        _warned_pickle.add(str(path))
        sys.stderr.write(f"warning: loading pickle weights ({', '.join(pickles)}) from {path} "
                         f"because {ALLOW_PICKLE} is true, with torch.load(weights_only=True); "
                         f"to load safetensors instead, convert them: {command}\n")
    return {"use_safetensors": False, "weights_only": True}


def conversion_command(path: Path, pickles: list[str]) -> str:
    """A shell command that writes safetensors beside pickle weights, reading them with
    ``weights_only=True`` (so a malicious file is refused by the conversion too)."""
    if (path / ADAPTER_CONFIG).exists() and "adapter_model.bin" in pickles:
        return ("python -c \"import torch; from safetensors.torch import save_file; "
                f"save_file(torch.load({str(path / 'adapter_model.bin')!r}, weights_only=True), "
                f"{str(path / 'adapter_model.safetensors')!r}, metadata={{'format': 'pt'}})\"")
    archs = []
    if (path / "config.json").exists():
        archs = json.loads((path / "config.json").read_text()).get("architectures") or []
    auto = ("AutoModelForSequenceClassification" if is_classifier_architecture(archs)
            else "AutoModelForCausalLM")
    return (f"python -c \"from transformers import {auto} as M; M.from_pretrained({str(path)!r}, "
            f"use_safetensors=False, weights_only=True).save_pretrained({str(path)!r})\"")
