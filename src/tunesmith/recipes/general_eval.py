"""``train.general_eval``: the forgetting check at the end of a run.

Called by ``common.train_and_finish`` after ``final/`` is written: the base model and
``final/`` are scored on the packaged general-ability suite (``evaluate/forgetting.py``);
the before/after with its paired-bootstrap CI goes into ``manifest.json`` under
``general_eval`` and the report into ``RUN/eval/general/``. A classifier is skipped (the
suite scores text continuations), and says so in the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.evaluate.forgetting import before_after
from tunesmith.io import atomic_write_text
from tunesmith.models.artifacts import model_kind
from tunesmith.recipes import run_dir as rd


def record_general_eval(run_dir: Path, base: str, final: Path) -> dict[str, Any]:
    """Score base and final, record the comparison in the manifest; returns the record."""
    if model_kind(final) == "classifier":
        record: dict[str, Any] = {"skipped": "a classifier: the suite scores text "
                                  "continuations of causal LMs"}
    else:
        result = before_after(base, final, run_dir / "eval" / "general")
        record = {k: result[k] for k in ("before", "after", "delta", "ci95", "p_value",
                                         "items", "forgot", "tolerance", "scoring")}
        record["sets"] = {n: {"before": result["before_sets"][n]["acc"],
                              "after": result["after_sets"][n]["acc"]}
                          for n in result["before_sets"]}
        record["report"] = str(run_dir / "eval" / "general" / "report.html")
    manifest = rd.read_manifest(run_dir)
    manifest["general_eval"] = record
    atomic_write_text(run_dir / rd.MANIFEST, json.dumps(manifest, indent=1, default=str))
    return record
