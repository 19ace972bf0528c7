"""What objectives with a task head share after each evaluation and save, written once.

A classifier-like objective (token classification, extractive QA; classification could
join) appends its full evaluation report to ``eval/<task>.jsonl`` (dropping later rows on
resume, so a resumed run's log has each step once), records the report in ``best/`` and
``final/`` evaluations, and saves its model with the sidecar prediction needs
(``tunesmith_classifier.json``: labels, fields, window settings, thresholds) beside the
weights, checkpoints included, so ``tunesmith predict`` accepts any of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from tunesmith.models.artifacts import write_classifier_info
from tunesmith.models.merge import save_trained
from tunesmith.train.engine import Objective
from tunesmith.train.tracking import truncate_after


class ReportedObjective(Objective):
    """Subclasses set ``eval_log`` (a path under the run directory), ``save_info`` and
    ``last_report`` (set by ``evaluate``); :meth:`info` may add what evaluation chose."""

    eval_log = "eval/report.jsonl"
    save_info: dict[str, Any]
    last_report: dict[str, Any]

    def info(self) -> dict[str, Any]:
        return self.save_info

    def eval_extra(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {"report": self.last_report}

    def on_evaluated(self, step: int, metrics: dict[str, float], run_dir: Path) -> None:
        path = run_dir / self.eval_log
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **self.last_report}) + "\n")

    def on_resume(self, run_dir: Path, step: int) -> None:
        truncate_after(run_dir / self.eval_log, step)

    def on_checkpoint(self, path: Path) -> None:
        write_classifier_info(path, self.info())

    def save_model(self, module: nn.Module, tokenizer: Any, out: Path) -> None:
        save_trained(module.model, tokenizer, out, classifier_info=self.info())

    def save_final_model(self, module: nn.Module, tokenizer: Any, out: Path) -> None:
        self.save_model(module, tokenizer, out)  # save_trained merges LoRA (adapter kept)
