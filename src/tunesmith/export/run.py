"""``export(...)``: one model in, one directory out (weights, tokenizer, card, figures).

    check arguments (format, quantization, output, eval file, architecture) before loading
    → load in float32 with LoRA merged (``merge.load_full``)
    → hf: save (float32 / f16 / bf16) or int8 (``quantize``)   gguf: ``gguf.write_gguf``
      + transformers round trip + Ollama ``Modelfile``
    → figures: size, speed, metric change on ``--eval-file`` → ``README.md`` card
    → the directory is written under a temporary name and renamed into place
"""

from __future__ import annotations

import gc
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import DataError, ModelError, UsageError
from tunesmith.export import measure
from tunesmith.export.card import render_card, run_facts
from tunesmith.export.gguf import check_supported, export_gguf
from tunesmith.export.merge import copy_adapter, load_full, save_hf
from tunesmith.export.quantize import quantize_int8, save_int8
from tunesmith.export.source import ExportSource, resolve_source
from tunesmith.io import atomic_directory
from tunesmith.models.artifacts import SIDECARS
from tunesmith.models.int8 import WEIGHTS
from tunesmith.train.run_state import LOCK_FILE, STATUS_FILE, is_locked, read_holder

HF_QUANT = {"none": None, "f32": None, "int8": None, "f16": torch.float16,
            "bf16": torch.bfloat16}
GGUF_QUANT = ("f16", "f32", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
FORMATS = {"hf": tuple(HF_QUANT), "gguf": GGUF_QUANT}
DEFAULT_QUANT = {"hf": "none", "gguf": "f16"}


@dataclass
class ExportResult:
    out_dir: Path
    files: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def check_destination(out: Path, source: ExportSource) -> None:
    """Refuse an output directory that is a training run, or holds or sits inside the
    source: ``--overwrite`` there would delete what is being exported."""
    target = out.resolve()
    model, run = source.path.resolve(), source.run_dir.resolve() if source.run_dir else None
    for p in [model] + ([run] if run else []):
        if p.is_relative_to(target) or (p == model and target.is_relative_to(model)):
            raise UsageError("the output directory would overwrite the model being exported",
                             where="-o/--output", got=str(out),
                             fix=f"export to a directory outside {p}")
    if (target / "manifest.json").exists() or (target / LOCK_FILE).exists() or \
            (target / STATUS_FILE).exists():
        holder = f" (being written by {read_holder(target).describe()})" if is_locked(target) \
            else ""
        raise UsageError(f"the output directory is a training run{holder}", where="-o/--output",
                         got=str(out), fix="export to a new directory; runs are never replaced "
                         "by an export")


def check_args(fmt: str, quantize: str | None, out: Path, overwrite: bool,
               eval_file: Path | None) -> str:
    """Validate the command line before anything loads; returns the quantization."""
    if fmt not in FORMATS:
        raise UsageError("unknown export format", where="--format", got=fmt,
                         fix=f"use one of: {', '.join(FORMATS)}")
    q = (quantize or DEFAULT_QUANT[fmt]).lower()
    if q not in FORMATS[fmt]:
        raise UsageError(f"--quantize {q} is not available for --format {fmt}",
                         where="--quantize", got=q,
                         fix=f"for {fmt} use one of: {', '.join(FORMATS[fmt])}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UsageError("the output directory exists and is not empty", where="-o/--output",
                         got=str(out), fix="choose a new directory or add --overwrite")
    if eval_file is not None and not eval_file.is_file():
        raise DataError("evaluation file not found", where="--eval-file", got=str(eval_file),
                        fix="give an existing .jsonl/.csv/.parquet file")
    return q


def export(name: str, fmt: str = "hf", merge: bool = False, quantize: str | None = None,
           out: Path | str = "export", eval_file: Path | str | None = None,
           overwrite: bool = False, measure_speed: bool = True, command: str | None = None,
           keep_float: list[str] | None = None) -> ExportResult:
    """Export ``name`` (run dir, checkpoint, adapter or model) to ``out``; see module doc.

    ``keep_float``: int8 only, the linear layers that stay float32 (patterns of
    ``quantize.keep_float_names``; None = the default recipe, [] = quantize every layer).
    """
    out = Path(out)
    eval_path = Path(eval_file) if eval_file is not None else None
    q = check_args(fmt, quantize, out, overwrite, eval_path)
    if keep_float is not None and q != "int8":
        raise UsageError("--keep-float only applies to --quantize int8", where="--keep-float",
                         got=",".join(keep_float) or "none", fix="add --quantize int8 or drop "
                         "--keep-float")
    source = resolve_source(name)
    check_destination(out, source)
    if fmt == "gguf":
        check_supported(source)
    if source.is_adapter and not merge and (fmt == "hf" and q not in ("none", "f32")):
        raise UsageError(f"--quantize {q} needs the adapter merged into its base",
                         where="--merge", got=str(source.path),
                         fix=f"add --merge (tunesmith export {name} --merge --quantize {q})")
    info: dict[str, Any] = {
        "title": f"{out.name}", "source": str(source.path), "format": fmt, "quantize": q,
        "kind": source.kind, "architectures": source.architectures, "base": source.base,
        "merged": source.is_adapter and (merge or fmt == "gguf") or _trained_merged(source),
        "run": run_facts(
            source.run_dir), "command": command or _command(name, fmt, merge, q, out, eval_path)
        + ("" if keep_float is None or command else
           f" --keep-float {','.join(keep_float) or 'none'}")}
    with atomic_directory(out) as tmp:
        if source.is_adapter and not info["merged"]:
            _export_adapter(source, tmp)
        elif fmt == "hf":
            _export_hf(source, q, tmp, info, eval_path, measure_speed, keep_float)
        else:
            export_gguf(source, q, tmp, info, eval_path, measure_speed)
        info["files"] = sorted(p.name for p in tmp.iterdir())
        if info.get("usage"):
            info["usage"] = info["usage"].replace("DIR", str(out))
        (tmp / "README.md").write_text(render_card(info), encoding="utf-8")
        _readable(tmp)
    info["files"] = sorted(p.name for p in out.iterdir())
    return ExportResult(out, info["files"], info)


def _trained_merged(source: ExportSource) -> bool:
    """A run's final/ that training already merged (its adapter kept in ``adapter/``)."""
    return not source.is_adapter and (source.path / "adapter" / "adapter_config.json").exists()


def _readable(path: Path) -> None:
    """Temporary directories and some writers create owner-only files; exports are shared."""
    path.chmod(0o755)
    for p in path.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def _export_adapter(source: ExportSource, tmp: Path) -> None:
    """An adapter exported as it is (small; loads with peft on top of its base)."""
    for f in source.path.iterdir():
        if f.is_file() and not f.name.endswith((".pt", "trainer_state.json")):
            shutil.copy2(f, tmp / f.name)


def _export_hf(source: ExportSource, q: str, tmp: Path, info: dict[str, Any],
               eval_file: Path | None, measure_speed: bool,
               keep_float: list[str] | None = None) -> None:
    model, tok = load_full(source)
    info["labels"] = list((getattr(model.config, "id2label", None) or {}).values()) \
        if source.kind == "classifier" else None
    if source.is_adapter:
        copy_adapter(source, tmp)
    elif _trained_merged(source):
        shutil.copytree(source.path / "adapter", tmp / "adapter")
    if q != "int8":
        save_hf(model, tok, tmp, HF_QUANT[q], sidecars_from=source.path)
    else:
        fig: dict[str, Any] = {"method": "int8 (weights int8 per output channel, activations "
                               "int8 dynamic; torch.ao)",
                               "reference_size_bytes": measure.weight_bytes(model)}
        if measure_speed:
            fig["reference_speed"] = measure.speed(model, tok, source.kind)
        model, tensors = quantize_int8(model, source.kind, keep_float)
        fig["method"] += f"; kept in float32: {model.tunesmith_kept_float}"
        fig["kept_float"] = model.tunesmith_kept_float
        save_int8(model, tensors, tok, tmp)
        for name in SIDECARS:
            if (source.path / name).exists():
                shutil.copy2(source.path / name, tmp / name)
        fig["size_bytes"] = (tmp / WEIGHTS).stat().st_size
        if measure_speed:
            fig["speed"] = measure.speed(model, tok, source.kind)
        info["quantization"] = fig
    del model
    gc.collect()
    if eval_file is not None:
        change = measure.eval_change(str(source.path), str(tmp), eval_file, tmp / "eval")
        info.setdefault("quantization", {"method": q}).update(eval=change)
    info["usage"] = _usage(source.kind, q)


def _usage(kind: str, q: str) -> str:
    if q == "int8":
        cmd = "tunesmith predict DIR --text '...'" if kind == "classifier" else \
            "tunesmith generate DIR --prompt '...'"
        return f"{cmd}\n(tunesmith rebuilds the int8 layers; plain transformers cannot load it)"
    if kind == "classifier":
        return ("from transformers import AutoModelForSequenceClassification\n"
                "model = AutoModelForSequenceClassification.from_pretrained('DIR')")
    return ("from transformers import AutoModelForCausalLM\n"
            "model = AutoModelForCausalLM.from_pretrained('DIR')\n"
            "# or: tunesmith chat DIR")


def _command(name: str, fmt: str, merge: bool, q: str, out: Path, eval_file: Path | None
             ) -> str:
    parts = ["tunesmith export", name, f"--format {fmt}"] + (["--merge"] if merge else []) + [
        f"--quantize {q}"] + ([f"--eval-file {eval_file}"] if eval_file else []) + [f"-o {out}"]
    return " ".join(parts)


def describe(result: ExportResult) -> dict[str, Any]:
    """What the CLI prints: files and the figures (JSON-serialisable)."""
    info = result.info
    return json.loads(json.dumps({"out_dir": str(result.out_dir), "files": result.files,
                                  "quantization": info.get("quantization"),
                                  "checks": info.get("checks")}, default=str))


__all__ = ["ExportResult", "ModelError", "check_args", "describe", "export"]
