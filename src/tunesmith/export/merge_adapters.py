"""``tunesmith merge``: several LoRA adapters into one model, or several checkpoints of one run
into their average — written as a plain Hugging Face checkpoint.

Adapters trained on different tasks over the same base are combined with PEFT's own
``add_weighted_adapter`` (``linear``, ``ties``, ``dare_ties``; ``cat`` is what ``linear``
becomes when the ranks differ), so tunesmith's result is PEFT's by construction; the
combined adapter is then folded into the float32 base by ``models.merge`` (the one merge
implementation) and saved by ``export.merge.save_hf`` (tokenizer, chat template, generation
config). ``average`` takes checkpoints of one run (adapters or full models, same shapes) and
averages every tensor — the "model soup" of one trajectory; adapter averages are merged into
the base the same way.

DARE drops a random share of each task vector, so ``--seed`` makes it repeatable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import ModelError, UsageError
from tunesmith.export.merge import save_hf
from tunesmith.io import atomic_directory
from tunesmith.models.artifacts import adapter_base, is_adapter_dir, resolve_artifact
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.models.merge import merge_in_place
from tunesmith.train.verify import saved_weights

METHODS = ("linear", "ties", "dare_ties", "average")
ADAPTER_FILE = "adapter_model.safetensors"


def adapter_dir(name: str) -> Path:
    """An adapter directory from a run, its ``final/`` (``final/adapter``) or a checkpoint."""
    path = Path(str(resolve_artifact(name)))
    for cand in (path, path / "adapter", path / "final" / "adapter"):
        if is_adapter_dir(cand):
            return cand
    raise ModelError("not a LoRA adapter", where=str(path), fix="give adapter directories, "
                     "LoRA runs or their checkpoints (tunesmith merge --method average takes "
                     "full-model checkpoints too)")


def merge_adapters(names: list[str], out: Path, method: str = "linear",
                   weights: list[float] | None = None, density: float = 0.5,
                   seed: int = 0) -> Path:
    """Combine the adapters ``names`` (one base) with ``method`` and write ``out``."""
    if method not in METHODS or method == "average":
        raise UsageError("unknown merge method for adapters", where="--method", got=method,
                         fix=f"use one of {', '.join(METHODS)}")
    dirs = [adapter_dir(n) for n in names]
    weights = _weights(weights, len(dirs))
    bases = {adapter_base(d) for d in dirs}
    if len(bases) != 1:
        raise UsageError("the adapters were trained on different base models",
                         where=", ".join(map(str, dirs)), got=sorted(bases),
                         fix="merge adapters of one base model")
    model = combined_adapter(dirs, weights, method, density, seed)
    plain = merge_in_place(model)
    _write(plain, load_tokenizer(dirs[0]), out, {
        "method": method, "adapters": [str(d) for d in dirs], "weights": weights,
        "density": density if method != "linear" else None, "seed": seed,
        "base": bases.pop()})
    return out


def combined_adapter(dirs: list[Path], weights: list[float], method: str, density: float,
                     seed: int) -> Any:
    """The base (float32) with the adapters loaded and their PEFT combination active."""
    # deferred: peft is heavy and only adapters need it
    from peft import PeftModel

    base = load_causal_lm(resolve_artifact(adapter_base(dirs[0])), dtype="float32")
    names = [f"a{i}" for i in range(len(dirs))]
    model = PeftModel.from_pretrained(base, str(dirs[0]), adapter_name=names[0])
    for name, d in zip(names[1:], dirs[1:]):
        model.load_adapter(str(d), adapter_name=name)
    ranks = {model.peft_config[n].r for n in names}
    kind = "cat" if method == "linear" and len(ranks) > 1 else method
    torch.manual_seed(seed)
    model.add_weighted_adapter(names, weights, "merged", combination_type=kind,
                               **({} if kind in ("linear", "cat") else {"density": density}))
    model.set_adapter("merged")
    for name in names:
        model.delete_adapter(name)
    return model


def average_checkpoints(names: list[str], out: Path, weights: list[float] | None = None
                        ) -> Path:
    """The (weighted) average of checkpoints of one run, as a plain model in ``out``."""
    dirs = [Path(str(resolve_artifact(n))) for n in names]
    weights = _weights(weights, len(dirs))
    adapters = [is_adapter_dir(d) for d in dirs]
    if len(set(adapters)) != 1:
        raise UsageError("cannot average adapters with full models", where=", ".join(
            map(str, dirs)), fix="average checkpoints of one run")
    states = [_tensors(d) for d in dirs]
    keys = set(states[0])
    if any(set(s) != keys or any(s[k].shape != states[0][k].shape for k in keys)
           for s in states[1:]):
        raise UsageError("the checkpoints hold different tensors", where=", ".join(
            map(str, dirs)), fix="average checkpoints of one run (same model and method)")
    avg = {k: sum(w * s[k].float() for w, s in zip(weights, states)).to(states[0][k].dtype)
           for k in keys}
    if adapters[0]:
        # deferred: peft is heavy and only adapters need it
        from peft import PeftModel, set_peft_model_state_dict

        base = load_causal_lm(resolve_artifact(adapter_base(dirs[0])), dtype="float32")
        model = PeftModel.from_pretrained(base, str(dirs[0]))
        set_peft_model_state_dict(model, avg)
        plain = merge_in_place(model)
    else:
        plain = load_causal_lm(dirs[0], dtype="float32")
        missing, unexpected = plain.load_state_dict(avg, strict=False)
        if unexpected or {k for k in missing if "lm_head" not in k}:
            raise ModelError("averaged weights do not fit the model", where=str(dirs[0]),
                             got=f"missing {sorted(missing)[:3]}, unexpected "
                             f"{sorted(unexpected)[:3]}")
    _write(plain, load_tokenizer(dirs[0]), out, {"method": "average", "checkpoints": [
        str(d) for d in dirs], "weights": weights})
    return out


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = saved_weights(directory)
    if not out:
        raise ModelError("no safetensors weights", where=str(directory),
                         fix="give checkpoint or model directories")
    return out


def _weights(weights: list[float] | None, n: int) -> list[float]:
    if n < 2:
        raise UsageError("give at least two models to merge", where="command line",
                         got=n, fix="tunesmith merge A B [C ...] -o OUT")
    weights = weights or [1.0 / n] * n
    if len(weights) != n:
        raise UsageError("one weight per model", where="--weights", got=weights,
                         fix=f"give {n} comma-separated weights")
    return [float(w) for w in weights]


def _write(model: Any, tok: Any, out: Path, record: dict[str, Any]) -> None:
    model.eval()
    with atomic_directory(out) as tmp:
        save_hf(model, tok, tmp)
        (tmp / "tunesmith_merge.json").write_text(json.dumps(record, indent=1))
