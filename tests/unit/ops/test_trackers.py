"""output.trackers: the old ``output.tensorboard`` key as an alias, the config as MLflow
parameters, the default store, and the two ways MLflow can be unusable (not installed, not
reachable), each one error before the first step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tunesmith.config.load import validate_dict
from tunesmith.errors import ConfigError, TrainingError
from tunesmith.train.trackers.mlflow_run import MLflowSink, flatten, metric_name, tracking_uri


@pytest.mark.parametrize("output,trackers", [
    ({}, ["tensorboard"]),
    ({"tensorboard": False}, []),
    ({"tensorboard": True, "trackers": ["mlflow"]}, ["tensorboard", "mlflow"]),
    ({"tensorboard": False, "trackers": ["tensorboard", "mlflow"]}, ["mlflow"]),
])
def test_output_tensorboard_is_read_as_trackers(output: dict, trackers: list[str]) -> None:
    assert validate_dict({"output": output}).output.trackers == trackers


def test_an_unknown_tracker_is_a_config_error_listing_the_choices() -> None:
    with pytest.raises(ConfigError, match="must be one of 'tensorboard' or 'mlflow'"):
        validate_dict({"output": {"trackers": ["wandb"]}})


def test_the_resolved_config_becomes_flat_parameters(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    cfg = validate_dict({"train": {"lr": 3e-4}, "output": {"dir": str(tmp_path)}})
    params = flatten(cfg.model_dump(mode="json"))
    assert params["train.lr"] == "0.0003" and params["method.type"] == "lora"
    assert params["method.target_modules"].startswith("[")
    assert metric_name("eval/acc@1") == "eval/acc_1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert tracking_uri(cfg) == "http://tracker:5000"


def test_mlflow_not_installed_says_which_extra(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    cfg = validate_dict({"output": {"trackers": ["mlflow"]}})
    with pytest.raises(ConfigError) as info:
        MLflowSink(tmp_path, cfg, None)
    assert "tunesmith[tracking]" in info.value.render()


def test_an_unreachable_server_fails_before_training(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = validate_dict({"output": {"trackers": ["mlflow"], "mlflow": {
        "tracking_uri": "http://127.0.0.1:9"}}})
    with pytest.raises(TrainingError) as info:
        MLflowSink(tmp_path, cfg, None)
    text = info.value.render()
    assert "cannot record the run in MLflow" in text and "127.0.0.1:9" in text
    assert "output.mlflow.tracking_uri" in text
