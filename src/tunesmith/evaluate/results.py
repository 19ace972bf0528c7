"""Reading an evaluation directory back (``tunesmith eval -o DIR``): its summary and records.

``analyze``, ``promote`` and the studio read eval directories; only ``runner.py`` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError


def load_eval_dir(path: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The summary and every model's records of an eval directory (or one model's subdir)."""

    summary_path = path / "metrics.json"
    if not summary_path.exists():
        raise DataError("not an evaluation directory (no metrics.json)", where=str(path),
                        fix="run `tunesmith eval MODEL --data FILE -o DIR` first and pass DIR")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if "models" not in summary:  # a model's own subdirectory
        parent = json.loads((path.parent / "metrics.json").read_text(encoding="utf-8")) \
            if (path.parent / "metrics.json").exists() else {}
        models = [{k: v for k, v in summary.items() if k not in ("data", "settings")}]
        summary = {**parent, "data": summary.get("data"), "settings": summary.get("settings"),
                   "models": models, "comparison": []}
        dirs = {models[0]["name"]: path}
    else:
        dirs = {m["name"]: path / m["dir"] for m in summary["models"]}
    records = {}
    for name, d in dirs.items():
        pred = d / "predictions.jsonl"
        if not pred.exists():
            raise DataError("evaluation directory has no predictions", where=str(pred),
                            fix="re-run `tunesmith eval`; the directory is incomplete")
        records[name] = [json.loads(line) for line in pred.read_text(encoding="utf-8")
                         .splitlines() if line.strip()]
    return summary, records
