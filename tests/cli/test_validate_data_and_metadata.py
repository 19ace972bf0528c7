"""`tunesmith validate` checks the data it is given, and the manifest records tunesmith's own
commit (not that of the directory the user runs in)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import tunesmith
from tests.unit.sft_support import cli, isolated_home, make_cfg, raw_cfg, write_config  # noqa: F401
from tunesmith.recipes import sft

pytestmark = pytest.mark.usefixtures("isolated_home")


def _validate(tmp_path: Path, model: Path, data: Path, capsys: pytest.CaptureFixture[str],
              **sections: Any) -> tuple[int, str, str]:
    raw = raw_cfg(model, data, tmp_path / "runs", **sections)
    return cli(["validate", str(write_config(tmp_path / "c.yaml", raw))], capsys)


def test_validate_passes_good_data_and_says_what_it_checked(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _validate(tmp_path, tiny_model_dir, alpaca_file, capsys)
    assert code == 0, err
    assert "format alpaca" in err and "every row passed the checks" in err
    assert not (tmp_path / "runs").exists()


def test_validate_reports_the_first_broken_row_with_its_line(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    lines = alpaca_file.read_text().splitlines()
    lines[2] = '{"instruction": "Add 1 and 2" "output": "3"}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    code, _, err = _validate(tmp_path, tiny_model_dir, bad, capsys)
    assert code == 2 and "Traceback" not in err and "valid" not in err.split("Error:")[0]
    assert f"{bad}:3" in err and "not valid JSON" in err


def test_validate_runs_the_template_checks(tiny_model_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "   "}]}] * 4
    data = tmp_path / "empty_answers.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = _validate(tmp_path, tiny_model_dir, data, capsys)
    assert code == 2 and "empty" in err.lower() and f"{data}:1" in err


def test_manifest_records_tunesmiths_commit_not_the_working_directorys(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q", str(other)], check=True)
    (other / "f").write_text("x")
    subprocess.run(git + ["-C", str(other), "add", "f"], check=True)
    subprocess.run(git + ["-C", str(other), "commit", "-qm", "x"], check=True)
    theirs = subprocess.run(["git", "-C", str(other), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    root = Path(tunesmith.__file__).resolve().parents[2]
    ours = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip() if (root / ".git").exists() else None
    monkeypatch.chdir(other)
    res = sft.run(make_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs"), progress=False)
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["git_commit"] != theirs
    assert manifest["git_commit"] == (ours or None)
    assert manifest["tunesmith_version"] == tunesmith.__version__ or manifest[
        "tunesmith_version"]
    assert os.getcwd() == str(other)
