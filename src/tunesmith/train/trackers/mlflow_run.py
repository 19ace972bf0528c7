"""MLflow through its own client (``MlflowClient``, no global active run).

What a run records: the resolved config as parameters (``train.lr``, ``method.r``, ...), every
logged value as a metric at its step, the manifest (at the start and again at the end, since
a resume adds to it), ``config.yaml`` and ``metrics.jsonl``, and ``final/`` as artifacts
(``output.mlflow.log_model``); run name and tags (task, method, model, run directory). The
MLflow run id is kept in ``<run>/mlflow_run.json`` so ``--resume`` continues the same MLflow
run.

No step twice after ``--resume``: MLflow cannot delete a metric point, so instead of purging
(TensorBoard's way) the resumed process skips every (metric, step) the MLflow run already
holds. Those points were logged by the interrupted process after the checkpoint, and resume
is exact (the same seed, data order and RNG state give the same losses), so the values kept
are the values the resumed process computes; only wall-clock rates (``tokens_per_s``) may
differ slightly. A resume with ``--allow-config-change`` that changes training keeps the
interrupted process's points up to where it stopped (``metrics.jsonl`` has the new ones).

The tracker never stops a run once it started: a failure to send is one warning, and the
rest goes to ``metrics.jsonl`` only. A store that cannot be reached at the start is an error
before the first step (a long run whose tracking silently failed is the worse outcome). The
client retries a lost connection for minutes by default
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` change that).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from tunesmith.config.schema import RunConfig
from tunesmith.errors import ConfigError, TrainingError, first_line
from tunesmith.io import atomic_write_json

RUN_FILE = "mlflow_run.json"
MAX_PARAM = 6000  # MLflow's limit on a parameter value's length
BATCH = 100  # MLflow's limit on parameters per log_batch


def tracking_uri(cfg: RunConfig) -> str:
    """``output.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store
    beside the runs (MLflow 3 refuses its old ``./mlruns`` file store by default)."""
    uri = cfg.output.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(Path(cfg.output.dir).resolve() / 'mlflow.db').as_posix()}"


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow parameters: ``{"train.lr": "0.0002", ...}``."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    text = value if isinstance(value, str) else json.dumps(value)
    return {prefix.rstrip("."): text[:MAX_PARAM]}


def metric_name(key: str) -> str:
    """MLflow accepts letters, digits, ``_ - . / `` and spaces in metric names."""
    return re.sub(r"[^\w\-./ ]", "_", key)


class MLflowSink:
    def __init__(self, run_dir: Path, cfg: RunConfig, resumed_at: int | None) -> None:
        try:
            # deferred: mlflow is an optional extra (tunesmith[tracking])
            from mlflow import MlflowClient
            from mlflow.entities import Metric, Param
        except ImportError:
            raise ConfigError("output.trackers lists mlflow but mlflow is not installed",
                              where="output.trackers", fix="pip install 'tunesmith[tracking]',"
                              " or remove mlflow from output.trackers") from None
        self.Metric, self.Param = Metric, Param
        self.run_dir, self.cfg = run_dir, cfg
        self.uri = tracking_uri(cfg)
        self.logged: dict[str, int] = {}
        self.broken = False
        try:
            self.client = MlflowClient(self.uri)
            self.run_id = self._reopen() if resumed_at is not None else None
            if self.run_id is None:
                self.run_id = self._create()
            self._artifact(run_dir / "manifest.json")
        except Exception as exc:  # MlflowException, connection errors, a bad URI
            raise TrainingError("cannot record the run in MLflow", where=self.uri,
                                got=first_line(exc), fix="start the tracking server or fix "
                                "output.mlflow.tracking_uri, or remove mlflow from "
                                "output.trackers") from None

    # -- the run -------------------------------------------------------------------------
    def _create(self) -> str:
        m = self.cfg.output.mlflow
        exp = self.client.get_experiment_by_name(m.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
            m.experiment)
        tags = {"tunesmith.task": self.cfg.task, "tunesmith.method": self.cfg.method.type,
                "tunesmith.model": self.cfg.model.name[:MAX_PARAM],
                "tunesmith.run_dir": str(self.run_dir.resolve()), **m.tags}
        run = self.client.create_run(exp_id, run_name=m.run_name or self.cfg.name, tags=tags)
        run_id = run.info.run_id
        params = [self.Param(k, v) for k, v in
                  flatten(self.cfg.model_dump(mode="json")).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(run_id, params=params[i:i + BATCH])
        atomic_write_json(self.run_dir / RUN_FILE, {"run_id": run_id, "tracking_uri": self.uri,
                                                    "experiment_id": exp_id})
        return run_id

    def _reopen(self) -> str | None:
        """The MLflow run of the interrupted process (same store), with the last step of each
        metric it holds; None when there is none to continue (a new run is created)."""
        try:
            record = json.loads((self.run_dir / RUN_FILE).read_text())
        except (OSError, ValueError):
            return None
        if record.get("tracking_uri") != self.uri:
            return None
        run_id = record["run_id"]
        run = self.client.get_run(run_id)
        for key in run.data.metrics:
            history = self.client.get_metric_history(run_id, key)
            self.logged[key] = max((p.step for p in history), default=0)
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    # -- Sink ----------------------------------------------------------------------------
    def log(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self.Metric(metric_name(k), float(v), now, step) for k, v in values.items()
                   if step > self.logged.get(metric_name(k), 0)]
        if metrics:
            self._safely(lambda: self.client.log_batch(self.run_id, metrics=metrics))

    def close(self) -> None:
        """The loop ended; the MLflow run stays open until :meth:`finish` or :meth:`fail`."""

    def finish(self, final_dir: Path | None) -> None:
        for name in ("manifest.json", "config.yaml", "metrics.jsonl"):
            self._artifact(self.run_dir / name)
        if final_dir is not None and self.cfg.output.mlflow.log_model:
            self._safely(lambda: self.client.log_artifacts(self.run_id, str(final_dir),
                                                           "final"))
        self._safely(lambda: self.client.set_terminated(self.run_id, "FINISHED"))

    def fail(self, interrupted: bool) -> None:
        self._artifact(self.run_dir / "metrics.jsonl")
        self._safely(lambda: self.client.set_terminated(
            self.run_id, "KILLED" if interrupted else "FAILED"))

    def _artifact(self, path: Path) -> None:
        if path.is_file():
            self._safely(lambda: self.client.log_artifact(self.run_id, str(path)))

    def _safely(self, send: Any) -> None:
        if self.broken:
            return
        try:
            send()
        except Exception as exc:  # a tracking hiccup must not end hours of training
            self.broken = True
            sys.stderr.write(f"warning: MLflow stopped recording this run ({first_line(exc)}) "
                             f"at {self.uri}; metrics.jsonl has every step\n")
