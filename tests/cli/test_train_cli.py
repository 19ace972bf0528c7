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
from tests.unit.sft_support import cli, has, isolated_home, raw_cfg, write_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture()
def case(tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path) -> dict[str, Any]:
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

def test_malformed_jsonl_line(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    bad = case["tmp"] / "bad.jsonl"
    good = json.dumps({"instruction": "Say hi.", "input": "", "output": "hi"})
    bad.write_text(f"{good}\n{good}\n{good}\n{{\"instruction\": \"Say\n{good}\n")
    code, _, err = cli(["train", str(case["cfg"]), f"data.train={bad}"], capsys)
    _assert_user_error(code, err)
    assert has(err, f"{bad}:4") and "not valid JSON" in err
    _assert_no_run(case["run_dir"])


def test_missing_field(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"instruction": "Say hi.", "input": "", "output": "hi"}] * 3 + \
        [{"instruction": "Say no.", "input": ""}]
    data = write_jsonl(case["tmp"] / "missing.jsonl", rows)
    code, _, err = cli(["train", str(case["cfg"]), f"data.train={data}",
                        "data.format=alpaca"], capsys)
    _assert_user_error(code, err)
    assert "`output`" in err and has(err, f"{data}:4")
    _assert_no_run(case["run_dir"])


def test_empty_dataset(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    empty = case["tmp"] / "empty.jsonl"
    empty.write_text("")
    code, _, err = cli(["train", str(case["cfg"]), f"data.train={empty}"], capsys)
    _assert_user_error(code, err)
    assert "empty" in err and has(err, str(empty))
    _assert_no_run(case["run_dir"])


def test_missing_data_file(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    missing = case["tmp"] / "nowhere" / "train.jsonl"
    code, _, err = cli(["train", str(case["cfg"]), f"data.train={missing}"], capsys)
    _assert_user_error(code, err)
    assert "not found" in err and has(err, str(missing))
    _assert_no_run(case["run_dir"])


def test_template_check_failure_stops_before_training(case: dict[str, Any],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    no_eos = ("{% for message in messages %}{{ message['role'] + ': ' + message['content'] "
              "+ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    raw = dict(case["raw"], model=dict(case["raw"]["model"], chat_template=no_eos))
    cfg = write_config(case["tmp"] / "noeos.yaml", raw)
    code, _, err = cli(["train", str(cfg)], capsys)
    _assert_user_error(code, err)
    assert "EOS" in err and "label-mask check failed" in err
    _assert_no_run(case["run_dir"])


# -- model and config errors ------------------------------------------------------------------

def test_unknown_model_offline(case: dict[str, Any], capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli(["train", str(case["cfg"]), "model.name=no-such-model-xyz"], capsys)
    _assert_user_error(code, err)
    assert "no-such-model-xyz" in err and "smollm2-135m-instruct" in err
    _assert_no_run(case["run_dir"])


def test_bad_value_and_unknown_key_reported_together(case: dict[str, Any],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["train", str(case["cfg"]), "train.lr=-1", "train.batchsize=4",
                        "method.type=qdora"], capsys)
    _assert_user_error(code, err)
    assert "3 problems" in err
    assert "train.lr" in err and "-1" in err and "greater than 0" in err
    assert "train.batchsize" in err and "train.batch_size" in err  # nearest key suggested
    assert "method.type" in err and "'qdora'" in err and "lora" in err
    _assert_no_run(case["run_dir"])


def test_union_field_error_is_one_line(case: dict[str, Any],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A field taking an int or "auto" reports one problem naming the field, the value and
    both accepted forms, not one line per union member."""
    code, _, err = cli(["train", str(case["cfg"]), "train.max_batch_tokens=4"], capsys)
    _assert_user_error(code, err)
    assert "1 problem" in err
    line = next(ln for ln in err.splitlines() if "train.max_batch_tokens" in ln)
    assert "(got 4)" in line and "greater than or equal to 8" in line and "'auto'" in line
    assert "constrained-int" not in err and "literal[" not in err
    _assert_no_run(case["run_dir"])


def test_unknown_key_in_yaml_suggests_nearest(case: dict[str, Any],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    raw = dict(case["raw"], data=dict(case["raw"]["data"], max_lenght=32))
    cfg = write_config(case["tmp"] / "typo.yaml", raw)
    code, _, err = cli(["validate", str(cfg)], capsys)
    _assert_user_error(code, err)
    assert "data.max_lenght" in err and "did you mean" in err and "data.max_length" in err


def test_missing_config_file(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    missing = case["tmp"] / "nope.yaml"
    code, _, err = cli(["train", str(missing)], capsys)
    _assert_user_error(code, err)
    assert "config file not found" in err and has(err, str(missing))


def test_invalid_yaml(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = case["tmp"] / "broken.yaml"
    cfg.write_text("train:\n  lr: 1e-3\n batch_size: 4\n")
    code, _, err = cli(["validate", str(cfg)], capsys)
    _assert_user_error(code, err)
    assert "YAML" in err and has(err, f"{cfg}:")


# -- runtime failures: exit 1 ----------------------------------------------------------------

def test_nan_loss_is_a_runtime_error(case: dict[str, Any],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["train", str(case["cfg"]), "method.type=full", "train.lr=1e30",
                        "train.max_steps=6", "train.max_grad_norm=null"], capsys)
    _assert_user_error(code, err, expected=1)
    assert re.search(r"loss became (nan|inf)", err.lower()) and "train.lr" in err
    run_dir = case["run_dir"]
    assert not (run_dir / "final").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"


def test_resume_without_checkpoint(case: dict[str, Any],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["train", str(case["cfg"]), "--resume"], capsys)
    _assert_user_error(code, err, expected=1)
    assert "nothing to resume" in err
    _assert_no_run(case["run_dir"])


def test_existing_run_needs_overwrite(case: dict[str, Any],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["train", str(case["cfg"]), "train.max_steps=1"], capsys)
    assert code == 0, err
    assert (case["run_dir"] / "final" / "adapter" / "adapter_model.safetensors").exists()
    assert "done" in out and "1 steps" in out
    code, _, err = cli(["train", str(case["cfg"]), "train.max_steps=1"], capsys)
    _assert_user_error(code, err)
    assert "already exists" in err and "--overwrite" in err
    code, _, err = cli(["train", str(case["cfg"]), "train.max_steps=1", "--overwrite"], capsys)
    assert code == 0, err


# -- validate ---------------------------------------------------------------------------------

def test_validate_prints_resolved_config(case: dict[str, Any],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["validate", str(case["cfg"]), "train.lr=3e-4"], capsys)
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["train"]["lr"] == pytest.approx(3e-4)
    assert resolved["train"]["batch_size"] == 4
    assert resolved["data"]["train"] == case["raw"]["data"]["train"]
    # defaults are filled in
    assert resolved["train"]["scheduler"] == "constant" and "early_stopping" in resolved["train"]
    assert "valid" in err
    assert not case["run_dir"].exists()


def test_validate_output_is_exactly_the_resolved_yaml(case: dict[str, Any],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """What validate prints must load back as the same config: no rich markup ("[a-z]" in a
    regex), no wrapping of long values."""
    from tunesmith.config import validate_dict

    pattern = r"layers\.[a-z]+\.mlp\.down_proj_" + "x" * 90
    raw = dict(case["raw"], method={"type": "freeze", "freeze_patterns": [pattern]},
               data=dict(case["raw"]["data"], system_prompt="You are [bold]terse[/bold]. " * 6,
                         max_length=512))  # validate checks the data: the prompt must fit
    cfg = write_config(case["tmp"] / "markup.yaml", raw)
    code, out, err = cli(["validate", str(cfg)], capsys)
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["method"]["freeze_patterns"] == [pattern]
    assert resolved["data"]["system_prompt"] == raw["data"]["system_prompt"]
    assert validate_dict(resolved) == validate_dict(raw)


def test_validate_reports_missing_data_file(case: dict[str, Any],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["validate", str(case["cfg"]),
                        f"data.train={case['tmp'] / 'absent.jsonl'}"], capsys)
    _assert_user_error(code, err)
    assert "absent.jsonl" in err


# -- the real console script, in a subprocess ------------------------------------------------

def _subprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def test_subprocess_train_missing_config(case: dict[str, Any]) -> None:
    # the console entry point re-executes itself for `train`: the exit code must survive that
    missing = case["tmp"] / "missing.yaml"
    proc = _subprocess(["train", str(missing)], case["tmp"])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "config file not found" in proc.stderr and str(missing) in proc.stderr


def test_subprocess_bad_config_exit_code(case: dict[str, Any]) -> None:
    proc = _subprocess(["validate", str(case["cfg"]), "train.epochs=zero"], case["tmp"])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "train.epochs" in proc.stderr and "'zero'" in proc.stderr


def test_interrupted_training_exits_130(case: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during training must not look like success (exit 0) to a shell or scheduler."""
    from tunesmith.train.engine import TrainLoop

    def interrupted(self: Any, group: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainLoop, "_step", interrupted)
    code, _, err = cli(["train", str(case["cfg"])], capsys)
    assert code == 130, err
    assert "Traceback" not in err
    run_dir = case["run_dir"]
    assert not (run_dir / "final").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
