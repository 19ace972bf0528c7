"""`tunesmith train` / `validate`: every user mistake is one clear error with the right exit code,
no traceback and no run directory left looking complete."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.tiny import write_jsonl
from tests.unit.sft_support import isolated_home, raw_cfg  # noqa: F401 (fixture)
from tunesmith.cli import main

pytestmark = pytest.mark.usefixtures("isolated_home")


def _flat(text: str) -> str:
    """Rich wraps long lines at the console width; compare without any whitespace."""
    return re.sub(r"\s+", "", text)


def _has(text: str, needle: str) -> bool:
    return _flat(needle) in _flat(text)


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def setup(tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path) -> dict[str, Any]:
    raw = raw_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs", name="clirun")
    return {"raw": raw, "cfg": write_config(tmp_path / "cfg.yaml", raw),
            "run_dir": tmp_path / "runs" / "clirun", "tmp": tmp_path}


def _assert_user_error(code: int, err: str, expected: int = 2) -> None:
    assert code == expected, err
    assert "Traceback" not in err
    assert err.count("Error:") == 1, err


def _assert_no_run(run_dir: Path) -> None:
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())


# -- data errors -----------------------------------------------------------------------------

def test_malformed_jsonl_line(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    bad = setup["tmp"] / "bad.jsonl"
    good = json.dumps({"instruction": "Say hi.", "input": "", "output": "hi"})
    bad.write_text(f"{good}\n{good}\n{good}\n{{\"instruction\": \"Say\n{good}\n")
    code, _, err = cli(["train", str(setup["cfg"]), f"data.train={bad}"], capsys)
    _assert_user_error(code, err)
    assert _has(err, f"{bad}:4") and "not valid JSON" in err
    _assert_no_run(setup["run_dir"])


def test_missing_field(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"instruction": "Say hi.", "input": "", "output": "hi"}] * 3 + \
        [{"instruction": "Say no.", "input": ""}]
    data = write_jsonl(setup["tmp"] / "missing.jsonl", rows)
    code, _, err = cli(["train", str(setup["cfg"]), f"data.train={data}",
                        "data.format=alpaca"], capsys)
    _assert_user_error(code, err)
    assert "`output`" in err and _has(err, f"{data}:4")
    _assert_no_run(setup["run_dir"])


def test_empty_dataset(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    empty = setup["tmp"] / "empty.jsonl"
    empty.write_text("")
    code, _, err = cli(["train", str(setup["cfg"]), f"data.train={empty}"], capsys)
    _assert_user_error(code, err)
    assert "empty" in err and _has(err, str(empty))
    _assert_no_run(setup["run_dir"])


def test_missing_data_file(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    missing = setup["tmp"] / "nowhere" / "train.jsonl"
    code, _, err = cli(["train", str(setup["cfg"]), f"data.train={missing}"], capsys)
    _assert_user_error(code, err)
    assert "not found" in err and _has(err, str(missing))
    _assert_no_run(setup["run_dir"])


def test_template_check_failure_stops_before_training(setup: dict[str, Any],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    no_eos = ("{% for message in messages %}{{ message['role'] + ': ' + message['content'] "
              "+ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    raw = dict(setup["raw"], model=dict(setup["raw"]["model"], chat_template=no_eos))
    cfg = write_config(setup["tmp"] / "noeos.yaml", raw)
    code, _, err = cli(["train", str(cfg)], capsys)
    _assert_user_error(code, err)
    assert "EOS" in err and "label-mask check failed" in err
    _assert_no_run(setup["run_dir"])


# -- model and config errors ------------------------------------------------------------------

def test_unknown_model_offline(setup: dict[str, Any], capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli(["train", str(setup["cfg"]), "model.name=no-such-model-xyz"], capsys)
    _assert_user_error(code, err)
    assert "no-such-model-xyz" in err and "smollm2-135m-instruct" in err
    _assert_no_run(setup["run_dir"])


def test_bad_value_and_unknown_key_reported_together(setup: dict[str, Any],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["train", str(setup["cfg"]), "train.lr=-1", "train.batchsize=4",
                        "method.type=qlora"], capsys)
    _assert_user_error(code, err)
    assert "3 problems" in err
    assert "train.lr" in err and "-1" in err and "greater than 0" in err
    assert "train.batchsize" in err and "train.batch_size" in err  # nearest key suggested
    assert "method.type" in err and "'qlora'" in err and "lora" in err
    _assert_no_run(setup["run_dir"])


def test_unknown_key_in_yaml_suggests_nearest(setup: dict[str, Any],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    raw = dict(setup["raw"], data=dict(setup["raw"]["data"], max_lenght=32))
    cfg = write_config(setup["tmp"] / "typo.yaml", raw)
    code, _, err = cli(["validate", str(cfg)], capsys)
    _assert_user_error(code, err)
    assert "data.max_lenght" in err and "did you mean" in err and "data.max_length" in err


def test_missing_config_file(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    missing = setup["tmp"] / "nope.yaml"
    code, _, err = cli(["train", str(missing)], capsys)
    _assert_user_error(code, err)
    assert "config file not found" in err and _has(err, str(missing))


def test_invalid_yaml(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup["tmp"] / "broken.yaml"
    cfg.write_text("train:\n  lr: 1e-3\n batch_size: 4\n")
    code, _, err = cli(["validate", str(cfg)], capsys)
    _assert_user_error(code, err)
    assert "YAML" in err and _has(err, f"{cfg}:")


# -- runtime failures: exit 1 ----------------------------------------------------------------

def test_nan_loss_is_a_runtime_error(setup: dict[str, Any],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["train", str(setup["cfg"]), "method.type=full", "train.lr=1e30",
                        "train.max_steps=6", "train.max_grad_norm=null"], capsys)
    _assert_user_error(code, err, expected=1)
    assert "loss became nan" in err.lower() and "train.lr" in err
    run_dir = setup["run_dir"]
    assert not (run_dir / "final").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"


def test_resume_without_checkpoint(setup: dict[str, Any],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["train", str(setup["cfg"]), "--resume"], capsys)
    _assert_user_error(code, err, expected=1)
    assert "nothing to resume" in err
    _assert_no_run(setup["run_dir"])


def test_existing_run_needs_overwrite(setup: dict[str, Any],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["train", str(setup["cfg"]), "train.max_steps=1"], capsys)
    assert code == 0, err
    assert (setup["run_dir"] / "final" / "adapter_model.safetensors").exists()
    assert "done" in out and "1 steps" in out
    code, _, err = cli(["train", str(setup["cfg"]), "train.max_steps=1"], capsys)
    _assert_user_error(code, err)
    assert "already exists" in err and "--overwrite" in err
    code, _, err = cli(["train", str(setup["cfg"]), "train.max_steps=1", "--overwrite"], capsys)
    assert code == 0, err


# -- validate ---------------------------------------------------------------------------------

def test_validate_prints_resolved_config(setup: dict[str, Any],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["validate", str(setup["cfg"]), "train.lr=3e-4"], capsys)
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["train"]["lr"] == pytest.approx(3e-4)
    assert resolved["train"]["batch_size"] == 4
    assert resolved["data"]["train"] == setup["raw"]["data"]["train"]
    # defaults are filled in
    assert resolved["train"]["scheduler"] == "constant" and "early_stopping" in resolved["train"]
    assert "valid" in err
    assert not setup["run_dir"].exists()


def test_validate_reports_missing_data_file(setup: dict[str, Any],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["validate", str(setup["cfg"]),
                        f"data.train={setup['tmp'] / 'absent.jsonl'}"], capsys)
    _assert_user_error(code, err)
    assert "absent.jsonl" in err


# -- the real console script, in a subprocess ------------------------------------------------

def _subprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def test_subprocess_train_missing_config(setup: dict[str, Any]) -> None:
    # the console entry point re-executes itself for `train`: the exit code must survive that
    missing = setup["tmp"] / "missing.yaml"
    proc = _subprocess(["train", str(missing)], setup["tmp"])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "config file not found" in proc.stderr and str(missing) in proc.stderr


def test_subprocess_bad_config_exit_code(setup: dict[str, Any]) -> None:
    proc = _subprocess(["validate", str(setup["cfg"]), "train.epochs=zero"], setup["tmp"])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "train.epochs" in proc.stderr and "'zero'" in proc.stderr


def test_interrupted_training_exits_130(setup: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during training must not look like success (exit 0) to a shell or scheduler."""
    from tunesmith.train.loop import Loop

    def interrupted(self: Any, group: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(Loop, "_step", interrupted)
    code, _, err = cli(["train", str(setup["cfg"])], capsys)
    assert code == 130, err
    assert "Traceback" not in err
    run_dir = setup["run_dir"]
    assert not (run_dir / "final").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
