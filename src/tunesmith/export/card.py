"""The model card (``README.md``) every export carries.

It says what the model is and how to get it again: base model, method, the data it was
trained on (file hashes from the run's ``manifest.json``, the data card's fingerprint when
the data came from ``tunesmith data prepare``), the last training figures
(``metrics.jsonl``), evaluation figures (the run's last evaluation and, with
``--eval-file``, the export against its float32 source), the quantization line (size,
speed, metric change), intended use, and the commands that reproduce it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

TRAIN_KEYS = ("step", "loss", "lr", "epoch", "tokens_per_s")
EVAL_PREFIX = "val_"


def run_facts(run_dir: Path | None) -> dict[str, Any]:
    """Config, manifest, last training row and last evaluation row of a run ({} if none)."""
    if run_dir is None:
        return {}
    facts: dict[str, Any] = {"run_dir": str(run_dir)}
    for name, key, loader in (("config.yaml", "config", yaml.safe_load),
                              ("manifest.json", "manifest", json.loads),
                              ("status.json", "status", json.loads)):
        f = run_dir / name
        if f.exists():
            facts[key] = loader(f.read_text(encoding="utf-8")) or {}
    train_row: dict[str, Any] = {}
    eval_row: dict[str, Any] = {}
    f = run_dir / "metrics.jsonl"
    if f.exists():
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if any(k.startswith(EVAL_PREFIX) for k in row):
                eval_row = row
            elif "loss" in row:
                train_row = row
    facts["last_train"], facts["last_eval"] = train_row, eval_row
    return facts


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def quantization_line(q: dict[str, Any]) -> str:
    """One line: method, size (and ratio), speed (and ratio), metric change."""
    parts = [q["method"]]
    if q.get("size_bytes") is not None:
        ref = q.get("reference_size_bytes")
        parts.append(f"size {_size(q['size_bytes'])}" + (
            f" (fp32 {_size(ref)}, {q['size_bytes'] / ref:.2f}x)" if ref else ""))
    sp, ref_sp = q.get("speed"), q.get("reference_speed")
    if sp:
        parts.append(f"speed {sp['value']:.1f} {sp['unit']}" + (
            f" (fp32 {ref_sp['value']:.1f}, {sp['value'] / ref_sp['value']:.2f}x)"
            if ref_sp else "") + f" on {sp['threads']} thread(s)")
    elif q.get("speed_note"):
        parts.append(q["speed_note"])
    change = q.get("eval")
    if change:
        items = []
        for m, v in change["metrics"].items():
            ci = v.get("ci95")
            ci_txt = f", 95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci and None not in ci else ""
            items.append(f"{m} {v['reference']:.4f} → {v['export']:.4f} "
                         f"({v['delta']:+.4f}{ci_txt})")
        parts.append(f"on {change['examples']} examples: " + "; ".join(items))
    elif q.get("eval_note"):
        parts.append(q["eval_note"])
    return "quantization: " + " — ".join(parts)


def render_card(info: dict[str, Any]) -> str:
    """Markdown for the export described by ``info`` (see ``export.run.export``)."""
    facts = info.get("run") or {}
    cfg = facts.get("config") or {}
    manifest = facts.get("manifest") or {}
    method = cfg.get("method") or {}
    lines = [f"# {info['title']}", "",
             f"Exported by tunesmith from `{info['source']}` as **{info['format']}**"
             + (f" ({info['quantize']})" if info.get("quantize") not in (None, "none") else "")
             + ".", ""]
    lines += ["## Model", "",
              f"- base model: `{cfg.get('model', {}).get('name') or info.get('base') or '?'}`",
              f"- task: {cfg.get('task') or info.get('kind')}",
              f"- architecture: {', '.join(info.get('architectures') or ['?'])}"]
    if method:
        extra = ""
        if method.get("type") in ("lora", "qlora"):
            extra = (f" (r {method.get('r')}, alpha {method.get('alpha')}, targets "
                     f"{method.get('target_modules')})")
        lines.append(f"- method: {method.get('type')}{extra}")
    if info.get("merged"):
        lines.append("- LoRA adapter merged into the float32 base weights")
    lines += [f"- files: {', '.join(info.get('files') or [])}", ""]

    lines += ["## Training data", ""]
    data = manifest.get("data") or {}
    if data or manifest.get("data_card"):
        for split, d in data.items():
            if isinstance(d, dict):
                lines.append(f"- {split}: `{d.get('source')}` — {d.get('rows')} rows, sha256 "
                             f"`{d.get('sha256')}`")
        card = manifest.get("data_card")
        if isinstance(card, dict):
            lines.append(f"- data card `{card.get('data_card')}` sha256 "
                         f"`{card.get('data_card_sha256')}`, fingerprint "
                         f"`{card.get('fingerprint')}`")
    else:
        lines.append("- not recorded (the source is not a tunesmith run)")
    lines.append("")

    lines += ["## Training figures", ""]
    last = facts.get("last_train") or {}
    if last:
        lines.append("- last logged step: " + ", ".join(
            f"{k} {_fmt(last[k])}" for k in TRAIN_KEYS if k in last))
    status = facts.get("status") or {}
    if status:
        lines.append(f"- run status: {status.get('state')}, {status.get('steps', '?')} steps")
    if not last and not status:
        lines.append("- not recorded")
    lines.append("")

    lines += ["## Evaluation", ""]
    ev = facts.get("last_eval") or {}
    if ev:
        lines.append("- last validation: " + ", ".join(
            f"{k} {_fmt(v)}" for k, v in ev.items() if k.startswith(EVAL_PREFIX)
            and isinstance(v, (int, float))))
    for line in info.get("checks") or []:
        lines.append(f"- {line}")
    if info.get("quantization"):
        lines.append(f"- {quantization_line(info['quantization'])}")
    if not ev and not info.get("checks") and not info.get("quantization"):
        lines.append("- none")
    lines.append("")

    lines += ["## Intended use", "", info.get("intended_use") or _intended_use(info, cfg), ""]
    lines += ["## Reproduce", "", "```bash"]
    if facts.get("run_dir"):
        lines.append(f"tunesmith train {facts['run_dir']}/config.yaml")
    lines += [info["command"], "```", ""]
    if info.get("usage"):
        lines += ["## Use", "", "```", info["usage"].rstrip(), "```", ""]
    return "\n".join(lines)


def _intended_use(info: dict[str, Any], cfg: dict[str, Any]) -> str:
    name = cfg.get("name") or "this model"
    if info.get("kind") == "classifier":
        labels = info.get("labels")
        return (f"Classifying texts like the training data of run `{name}`"
                + (f" into {', '.join(map(str, labels))}" if labels else "")
                + ". Check it on your own held-out data before relying on it; it inherits "
                "the biases of its base model and training data.")
    return (f"Chat/instruction following for the task run `{name}` was trained on, with the "
            "embedded chat template. Outputs can be wrong or biased: evaluate on your own "
            "held-out data (`tunesmith eval`) before deployment.")
