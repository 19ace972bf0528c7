"""`tunesmith sweep` on the tiny model: one run per trial, the best picked on the validation
metric the runs logged, only its model kept, best.yaml trains again, resume continues, and
bad input is one error before anything trains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.sft_support import cli, has, isolated_home, raw_cfg, write_config  # noqa: F401
from tunesmith.config import load_config
from tunesmith.errors import ConfigError, TrainingError
from tunesmith.sweep.space import parse_space
from tunesmith.sweep.study import SweepSpec, run_sweep

pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture()
def config(tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path) -> Path:
    raw = raw_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs", name="sw",
                  data={"val_split": 0.25}, train={"max_steps": 4, "eval_every": 2})
    return write_config(tmp_path / "cfg.yaml", raw)


def _trials(sweep: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (sweep / "trials.jsonl").read_text().splitlines()]


def test_sweep_picks_the_best_trial_and_keeps_only_its_model(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["sweep", str(config), "--param", "train.lr=log:1e-4:1e-1",
                          "--param", "method.r=2,8", "--trials", "3", "--no-prune"], capsys)
    assert code == 0, err
    sweep = tmp_path / "runs" / "sw-sweep"
    records = _trials(sweep)
    assert [r["state"] for r in records] == ["complete"] * 3
    for r in records:
        assert 1e-4 <= float(r["values"]["train.lr"]) <= 1e-1
        assert r["values"]["method.r"] in ("2", "8")
        # the trial's value is the best validation loss its run logged, with its settings
        logged = [json.loads(x) for x in (Path(r["run_dir"]) / "metrics.jsonl")
                  .read_text().splitlines()]
        val = {x["step"]: x["val_loss"] for x in logged if "val_loss" in x}
        assert sorted(val) == [2, 4]
        assert r["value"] == pytest.approx(min(val.values()))
        ran = yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text())
        assert ran["train"]["lr"] == pytest.approx(float(r["values"]["train.lr"]))
        assert ran["method"]["r"] == int(r["values"]["method.r"])
    best = min(records, key=lambda r: r["value"])
    assert {r["name"]: r["model"] is not None for r in records} == {
        r["name"]: r is best for r in records}
    assert (Path(best["model"]) / "model.safetensors").exists() or \
        (Path(best["model"]) / "adapter_model.safetensors").exists()
    for r in records:
        if r is not best:
            assert not (Path(r["run_dir"]) / "final").exists()
            assert (Path(r["run_dir"]) / "metrics.jsonl").exists()
    again = load_config(sweep / "best.yaml")
    assert again.train.lr == pytest.approx(float(best["values"]["train.lr"]))
    assert again.method.r == int(best["values"]["method.r"])
    assert again.name == "sw" and again.train.early_stopping.metric == "val_loss"
    assert best["name"] in out and has(out, str(sweep / "best.yaml"))


def test_resume_continues_and_refuses_a_different_space(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    spec = SweepSpec(config, [], parse_space(["train.lr=log:1e-4:1e-1"]), 2, out=out,
                     prune=False)
    first = run_sweep(spec).trials
    assert len(first) == 2
    code, _, err = cli(["sweep", str(config), "--param", "train.lr=log:1e-4:1e-1",
                        "--out", str(out)], capsys)  # exists, neither --resume nor --overwrite
    assert code == 2 and has(err, "--resume") and "Traceback" not in err
    spec.trials = 3
    after = run_sweep(spec, resume=True).trials
    assert len(after) == 3
    assert [r["values"] for r in after[:2]] == [r["values"] for r in first]
    assert [r["value"] for r in after[:2]] == [r["value"] for r in first]
    other = SweepSpec(config, [], parse_space(["train.lr=log:1e-3:1e-1"]), 4, out=out)
    with pytest.raises(ConfigError, match="different search space"):
        run_sweep(other, resume=True)


def test_failed_trial_is_recorded_and_a_config_error_stops_the_sweep(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith import recipes

    real, calls = recipes.run_task, []

    def flaky(cfg: Any, **kw: Any) -> Any:
        calls.append(cfg.name)
        if len(calls) == 1:
            raise TrainingError("the training loss became nan at step 3")
        return real(cfg, **kw)

    monkeypatch.setattr(recipes, "run_task", flaky)
    spec = SweepSpec(config, [], parse_space(["train.lr=log:1e-4:1e-2"]), 2,
                     out=tmp_path / "a", prune=False)
    records = run_sweep(spec).trials
    assert [r["state"] for r in records] == ["fail", "complete"]
    assert "nan" in records[0]["reason"]
    best = yaml.safe_load((tmp_path / "a" / "best.yaml").read_text())
    assert best["train"]["lr"] == pytest.approx(float(records[1]["values"]["train.lr"]))

    broken_calls = []

    def broken(cfg: Any, **kw: Any) -> Any:
        broken_calls.append(cfg.name)
        raise ConfigError("bad data", where="data.train")

    monkeypatch.setattr(recipes, "run_task", broken)
    with pytest.raises(ConfigError, match="bad data"):
        run_sweep(SweepSpec(config, [], spec.params, 3, out=tmp_path / "b"))
    assert broken_calls == ["trial-000"]  # not tried again with other values


@pytest.mark.parametrize("args, words", [
    (["--param", "train.lr=1e-3"], "--param train.lr=1e-3"),
    (["--param", "train.lrr=1e-4,1e-3"], "lrr"),
    (["--param", "method.r=0,8"], "method.r"),
    (["--param", "train.lr=1e-4,1e-3", "--metric", "val_bleu"], "val_bleu"),
    (["--param", "train.lr=1e-4,1e-3", "data.val_split=0"], "validation"),
    (["--param", "train.lr=1e-4,1e-3", "--trials", "0"], "--trials"),
])
def test_bad_input_is_one_error_before_training(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        words: str) -> None:
    code, _, err = cli(["sweep", str(config), *args], capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.count("Error:") == 1
    assert has(err, words), err
    assert not (tmp_path / "runs").exists()


def test_no_completed_trial_is_a_runtime_failure(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import optuna

    from tunesmith import recipes

    def pruned(cfg: Any, **kw: Any) -> Any:
        raise optuna.TrialPruned("pruned at step 2: best so far 9.9")

    monkeypatch.setattr(recipes, "run_task", pruned)
    out = tmp_path / "sweep"
    code, _, err = cli(["sweep", str(config), "--param", "train.lr=1e-4,1e-3", "--trials",
                        "2", "--out", str(out)], capsys)
    assert code == 1 and err.count("Error:") == 1 and has(err, "no trial of the sweep completed")
    assert "Traceback" not in err and has(err, "trials.jsonl")
    assert [r["state"] for r in _trials(out)] == ["pruned", "pruned"]
    assert not (out / "best.yaml").exists()


def test_a_trial_interrupted_by_a_dying_process_is_failed_on_resume(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith import recipes

    real = recipes.run_task

    def killed(cfg: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "run_task", killed)
    spec = SweepSpec(config, [], parse_space(["train.lr=log:1e-4:1e-2"]), 2,
                     out=tmp_path / "sweep", prune=False)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec)
    monkeypatch.setattr(recipes, "run_task", real)
    records = run_sweep(spec, resume=True).trials
    assert [(r["state"], r["reason"]) for r in records] == [("fail", "interrupted"),
                                                            ("complete", None)]
