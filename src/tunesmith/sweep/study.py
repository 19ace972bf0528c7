"""Run a hyper-parameter sweep: one training run per trial, compared on a validation metric.

Optuna's TPE sampler proposes each trial's values (seeded by ``train.seed``), a median pruner
stops a trial whose best validation metric so far is worse than the median of earlier trials
at the same step, and the study lives in ``SWEEP_DIR/study.db`` so an interrupted sweep
continues where it stopped (``resume=True``). Every trial trains with the same seed and data
as ``tunesmith train`` would, into ``SWEEP_DIR/trial-NNN/``; only the best trial keeps its
model unless ``keep="all"``. ``trials.jsonl`` and ``best.yaml`` (the config with the best
values, ready for ``tunesmith train``) are rewritten atomically after every trial.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunesmith import recipes
from tunesmith.config import load_config, load_raw
from tunesmith.config.schema import RunConfig
from tunesmith.errors import ConfigError, TunesmithError, UsageError
from tunesmith.io import atomic_write_text
from tunesmith.sweep.space import Param
from tunesmith.train.early_stopping import higher_is_better

MODEL_DIRS = ("final", "best", "checkpoints")


@dataclass
class SweepResult:
    sweep_dir: Path
    metric: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None


@dataclass
class SweepSpec:
    config: Path
    overrides: list[str]
    params: list[Param]
    trials: int
    metric: str | None = None
    out: Path | None = None
    keep: str = "best"
    prune: bool = True


def _optuna() -> Any:
    try:
        # deferred: may be missing: checked here
        import optuna
    except ImportError:
        raise UsageError("tunesmith sweep needs Optuna", where="tunesmith sweep",
                         fix="pip install 'tunesmith[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def plan(spec: SweepSpec) -> tuple[RunConfig, str, Path]:
    """Check the whole sweep before anything trains: the config, every parameter's values,
    the metric and validation data. Returns the base config, the metric, the sweep dir."""
    if spec.trials < 1:
        raise UsageError("--trials must be at least 1", where="--trials", got=spec.trials,
                         fix="e.g. --trials 8")
    if spec.keep not in ("best", "all"):
        raise UsageError("--keep must be best or all", where="--keep", got=spec.keep,
                         fix="--keep best (the default) or --keep all")
    base = load_config(spec.config, spec.overrides)
    metric = spec.metric or base.train.early_stopping.metric
    if spec.metric:  # it must be one the task computes
        load_config(spec.config, _trial_overrides(spec, metric, {}))
    for param in spec.params:
        for value in param.candidates():
            load_config(spec.config, _trial_overrides(spec, metric, {param.key: value}))
    if not base.data.has_validation:
        raise ConfigError("a sweep compares trials on validation data and this config has "
                          "none", where=str(spec.config), got="data.validation: null, "
                          "data.val_split: 0", fix="set data.validation=FILE or "
                          "data.val_split=0.1")
    out = spec.out or Path(base.output.dir) / f"{base.name}-sweep"
    return base, metric, out


def _trial_name(number: int) -> str:
    return f"trial-{number:03d}"


def _trial_overrides(spec: SweepSpec, metric: str, values: dict[str, str]) -> list[str]:
    """The user's overrides, the sweep's metric for best/ and early stopping, then the
    trial's values: what every trial, every check and best.yaml are built from."""
    return [*spec.overrides, f"train.early_stopping.metric={metric}",
            *(f"{k}={v}" for k, v in values.items())]


def run_sweep(spec: SweepSpec, resume: bool = False, overwrite: bool = False,
              on_trial: Any = None, on_start: Any = None) -> SweepResult:
    """Run the sweep ``spec`` describes; ``on_start(name, values)`` is called before each
    trial trains and ``on_trial(record)`` after it."""
    optuna = _optuna()
    base, metric, out = plan(spec)
    space = {p.key: p.describe() for p in spec.params}
    db = out / "study.db"
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise UsageError("the sweep directory already exists", where=str(out),
                         fix="--resume to continue it, --overwrite to start again, or "
                         "--out DIR")
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=f"sqlite:///{db}", study_name="sweep", load_if_exists=True,
        direction="maximize" if higher_is_better(metric) else "minimize",
        sampler=optuna.samplers.TPESampler(seed=base.train.seed,
                                           n_startup_trials=max(1, min(10, spec.trials // 2))),
        pruner=(optuna.pruners.MedianPruner(n_startup_trials=2) if spec.prune
                else optuna.pruners.NopPruner()))
    _check_same_sweep(study, space, metric, out)
    _fail_interrupted(study, optuna)
    done = sum(t.state.is_finished() for t in study.trials)
    result = None
    for _ in range(spec.trials - done):
        trial = study.ask()
        values = {p.key: p.sample(trial) for p in spec.params}
        name = _trial_name(trial.number)
        trial.set_user_attr("values", values)
        cfg = load_config(spec.config, [*_trial_overrides(spec, metric, values),
                                        f"output.dir={out}", f"name={name}"])
        if on_start is not None:
            on_start(name, values)
        t0 = time.perf_counter()
        try:
            res = recipes.run_task(cfg, overwrite=True, progress=False,
                           callbacks=[_Reporter(trial, cfg, optuna)])
        except optuna.TrialPruned as exc:
            trial.set_user_attr("reason", str(exc))
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except TunesmithError as exc:
            if exc.exit_code != 1:  # the config or data is wrong: every trial would fail
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            trial.set_user_attr("reason", exc.what)  # e.g. the loss diverged at this lr
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            loop = res.loop
            value = loop.best_metric if loop.best_metric is not None else \
                loop.last_eval.get(metric)
            trial.set_user_attr("steps", loop.steps)
            trial.set_user_attr("best_step", loop.best_step)
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            if value is None:
                trial.set_user_attr("reason", f"the run logged no {metric}")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, value)
        gc.collect()
        result = _write_outputs(study, spec, metric, out)
        if on_trial is not None:
            on_trial(result.trials[trial.number])
    return result if result is not None else _write_outputs(study, spec, metric, out)


class _Reporter:
    """Reports the best validation metric so far at each evaluation; raises TrialPruned when
    the pruner says this trial cannot catch up."""

    def __init__(self, trial: Any, cfg: RunConfig, optuna: Any) -> None:
        self.trial, self.every, self.optuna = trial, cfg.train.eval_every, optuna

    def __call__(self, step: int, values: dict[str, Any]) -> None:
        best = values.get("best")
        if best is None or not self.every or step % self.every:
            return
        self.trial.report(float(best), step)
        if self.trial.should_prune():
            raise self.optuna.TrialPruned(f"pruned at step {step}: best so far {best:.4g}")


def _check_same_sweep(study: Any, space: dict[str, str], metric: str, out: Path) -> None:
    before = study.user_attrs
    if not before:
        study.set_user_attr("space", space)
        study.set_user_attr("metric", metric)
        return
    if before.get("space") != space or before.get("metric") != metric:
        raise UsageError("--resume with a different search space or metric than the sweep "
                         "was started with", where=str(out),
                         got=f"{before.get('metric')}: {before.get('space')}",
                         fix="give the same --param and --metric, or --overwrite")


def _fail_interrupted(study: Any, optuna: Any) -> None:
    """Trials still marked running were interrupted (the process died): count them failed."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def _record(t: Any, metric: str, out: Path) -> dict[str, Any]:
    name = _trial_name(t.number)
    run = out / name
    model = next((run / d for d in ("best", "final") if (run / d).is_dir()), None)
    return {"trial": t.number, "name": name, "state": t.state.name.lower(),
            "metric": metric, "value": t.value, "values": t.user_attrs.get("values", {}),
            "steps": t.user_attrs.get("steps"), "best_step": t.user_attrs.get("best_step"),
            "seconds": t.user_attrs.get("seconds"),
            "reason": t.user_attrs.get("reason", "interrupted" if t.state.name == "FAIL" else None),
            "run_dir": str(run), "model": str(model) if model else None}


def _write_outputs(study: Any, spec: SweepSpec, metric: str, out: Path) -> SweepResult:
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = None
    if complete:
        best = study.best_trial
        if spec.keep == "best":
            for t in study.trials:
                if t.number != best.number:
                    for d in MODEL_DIRS:
                        shutil.rmtree(out / _trial_name(t.number) / d, ignore_errors=True)
    records = [_record(t, metric, out) for t in study.trials]
    atomic_write_text(out / "trials.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    result = SweepResult(out, metric, records, records[best.number] if best else None)
    if best is not None:
        raw = load_raw(spec.config, _trial_overrides(spec, metric, best.user_attrs["values"]))
        head = (f"# best of {len(complete)} completed trials of the sweep in {out}: "
                f"{metric} {best.value:.6g} ({records[best.number]['name']})\n"
                f"# train it again: tunesmith train {out / 'best.yaml'}\n")
        atomic_write_text(out / "best.yaml", head + yaml.safe_dump(raw, sort_keys=False))
    return result
