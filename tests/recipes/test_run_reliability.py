"""Faults from the machine or from a second actor: full disk, signals, two writers, a changed
config on --resume, a damaged checkpoint. Each ends in one clear message, nothing lost."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.sft_support import cli, isolated_home, make_cfg, raw_cfg, write_config  # noqa: F401
from tunesmith import io
from tunesmith.errors import ConfigError, RunBusyError, TrainingInterrupted
from tunesmith.recipes import sft
from tunesmith.train.run_state import RunLock, read_status

pytestmark = pytest.mark.usefixtures("isolated_home")
TRAIN = {"max_steps": 6, "save_every": 2, "eval_every": 2, "keep_last": 3, "batch_size": 4,
         "lr": 5e-3, "scheduler": "cosine", "warmup_steps": 2, "precision": "fp32"}


def _cfg(model_dir: Path, data: Path, out: Path, **train: Any) -> Any:
    return make_cfg(model_dir, data, out, data={"val_split": 0.25}, train={**TRAIN, **train})


class Steps:
    """Step callback: records losses; at ``at`` sends a signal to this process or raises."""

    def __init__(self, at: int | None = None, signum: int | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.at, self.signum = at, signum

    def __call__(self, step: int, values: dict[str, Any]) -> None:
        self.losses[step] = values["loss"]
        if step == self.at:
            if self.signum is None:
                raise KeyboardInterrupt
            os.kill(os.getpid(), self.signum)


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")
                  if ".tmp-" in p.name or ".old-" in p.name)


# -- signals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_at_a_safe_point_with_a_checkpoint_and_resume_is_exact(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path, signum: int) -> None:
    whole = Steps()
    sft.run(_cfg(tiny_model_dir, alpaca_file, tmp_path / "a"), progress=False, callbacks=[whole])

    cfg = _cfg(tiny_model_dir, alpaca_file, tmp_path / "b")
    first = Steps(at=3, signum=signum)  # step 3 is not a save_every step: the signal saves it
    with pytest.raises(TrainingInterrupted) as info:
        sft.run(cfg, progress=False, callbacks=[first])
    assert info.value.exit_code == 128 + signum
    run = tmp_path / "b" / "t"
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and "--resume" in status["resume_command"]
    assert signal.Signals(signum).name in status["reason"]
    assert (run / "checkpoints" / "step-3").is_dir() and not (run / "final").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    again = Steps()
    sft.run(cfg, resume=True, progress=False, callbacks=[again])
    assert sorted(again.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert again.losses[step] == pytest.approx(whole.losses[step], rel=1e-6, abs=1e-7)
    assert json.loads((run / "status.json").read_text())["state"] == "completed"


def test_sigterm_to_the_cli_exits_143_and_a_second_signal_ends_at_once(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path) -> None:
    raw = raw_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs",
                  train={"max_steps": 400, "save_every": 1000, "batch_size": 2})
    cfg = write_config(tmp_path / "c.yaml", raw)
    env = {**os.environ, "TUNESMITH_NO_REEXEC": "1"}
    metrics = tmp_path / "runs" / "t" / "metrics.jsonl"

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "tunesmith", "train", str(cfg),
                                 "--overwrite"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        return proc

    proc = start()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "--resume" in err
    run = tmp_path / "runs" / "t"
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"
    assert list((run / "checkpoints").glob("step-*"))

    proc = start()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the second one: no waiting for the step to end
    proc.communicate(timeout=60)
    assert proc.returncode in (-signal.SIGTERM, 143)
    assert leftovers(tmp_path / "runs") == []
    assert read_status(run)["state"] == "interrupted"  # "running" with no live writer


# -- one writer per run directory -----------------------------------------------------------
def test_a_live_run_cannot_be_trained_overwritten_or_resumed_by_another_process(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_model_dir, alpaca_file, tmp_path / "runs")
    sft.run(cfg, progress=False)
    run = tmp_path / "runs" / "t"
    before = (run / "metrics.jsonl").read_text()
    helper = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from tunesmith.train.run_state import "
        "RunLock, write_status; run = Path(sys.argv[1]); RunLock(run).acquire(); "
        "write_status(run, 'running'); print('held', flush=True); time.sleep(60)"), str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert helper.stdout.readline().strip() == "held"
        for kw in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(RunBusyError) as info:
                sft.run(cfg, progress=False, **kw)
            assert f"process {helper.pid}" in info.value.render()
        assert (run / "metrics.jsonl").read_text() == before and (run / "final").is_dir()
    finally:
        helper.kill()
        helper.wait()
    # the holder died (kill -9): its lock is stale and the next writer takes it over
    assert read_status(run)["state"] == "interrupted"
    sft.run(cfg, progress=False, overwrite=True)


def test_two_trains_with_one_name_started_together_train_once(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path) -> None:
    raw = raw_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs", train={"max_steps": 30})
    cfg = write_config(tmp_path / "c.yaml", raw)
    env = {**os.environ, "TUNESMITH_NO_REEXEC": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "tunesmith", "train", str(cfg)], env=env,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] in (1, 2), results
    loser = next(err for code, err in results if code)
    assert "another process is writing" in loser or "already exists" in loser
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "runs/t/metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert steps == list(range(1, 31))


# -- --resume checks what it resumes ----------------------------------------------------------
def _interrupted_run(model_dir: Path, data: Path, out: Path) -> Any:
    cfg = _cfg(model_dir, data, out)
    with pytest.raises(KeyboardInterrupt):
        sft.run(cfg, progress=False, callbacks=[Steps(at=3)])
    return cfg


def test_resume_refuses_a_training_change_and_records_an_allowed_one(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path) -> None:
    _interrupted_run(tiny_model_dir, alpaca_file, tmp_path)
    run = tmp_path / "t"
    changed = _cfg(tiny_model_dir, alpaca_file, tmp_path, lr=1e-3, batch_size=2)
    with pytest.raises(ConfigError) as info:
        sft.run(changed, resume=True, progress=False)
    text = info.value.render()
    assert "train.lr: 0.005 in the run, now 0.001" in text and "train.batch_size" in text
    assert "--allow-config-change" in text
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"

    original = alpaca_file.read_text()
    alpaca_file.write_text(original + original.splitlines()[0] + "\n")  # same path, one more row
    with pytest.raises(ConfigError, match="data train file sha256"):
        sft.run(_cfg(tiny_model_dir, alpaca_file, tmp_path), resume=True, progress=False)
    alpaca_file.write_text(original)

    neutral = _cfg(tiny_model_dir, alpaca_file, tmp_path, log_every=3)
    sft.run(neutral, resume=True, progress=False)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["resumes"][-1]["step"] == 2
    assert manifest["resumes"][-1]["changes"] == {"train.log_every": [1, 3]}


def test_resume_with_allowed_change_is_recorded(tiny_model_dir: Path, alpaca_file: Path,
                                                tmp_path: Path) -> None:
    _interrupted_run(tiny_model_dir, alpaca_file, tmp_path)
    changed = _cfg(tiny_model_dir, alpaca_file, tmp_path, lr=1e-3)
    sft.run(changed, resume=True, progress=False, allow_config_change=True)
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["resumes"][-1]["changes"]["train.lr"] == [0.005, 0.001]


def test_resuming_a_completed_run_does_nothing(tiny_model_dir: Path, alpaca_file: Path,
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    raw = raw_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs", train={"max_steps": 2})
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert cli(["train", str(cfg)], capsys)[0] == 0
    metrics = (tmp_path / "runs/t/metrics.jsonl").read_text()
    code, out, err = cli(["train", str(cfg), "--resume"], capsys)
    assert code == 0 and "already completed" in out + err
    assert (tmp_path / "runs/t/metrics.jsonl").read_text() == metrics


# -- damaged checkpoints ------------------------------------------------------------------------
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    whole = Steps()
    sft.run(_cfg(tiny_model_dir, alpaca_file, tmp_path / "a"), progress=False, callbacks=[whole])
    cfg = _cfg(tiny_model_dir, alpaca_file, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        sft.run(cfg, progress=False, callbacks=[Steps(at=5)])
    ckpts = tmp_path / "b" / "t" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-2", "step-4"]
    opt = ckpts / "step-4" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])  # truncated on disk

    again = Steps()
    sft.run(cfg, resume=True, progress=False, callbacks=[again])
    err = capfd.readouterr().err
    assert "step-4: optimizer.pt is damaged" in err and "resuming from step-2" in err
    assert sorted(again.losses) == [3, 4, 5, 6]
    assert again.losses[6] == pytest.approx(whole.losses[6], rel=1e-6, abs=1e-7)


# -- a full disk ---------------------------------------------------------------------------------
def test_full_disk_while_saving_is_one_error_and_the_status_says_failed(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    raw = raw_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs", train={"max_steps": 2})
    cfg = write_config(tmp_path / "c.yaml", raw)
    real = io.rename

    def full_after_start(src: Any, target: Any) -> None:
        if Path(target).name in ("final", "status.json") and \
                (Path(target).parent / "metrics.jsonl").exists():
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        real(src, target)

    monkeypatch.setattr(io, "rename", full_after_start)
    code, _, err = cli(["train", str(cfg)], capsys)
    assert code == 1 and "Traceback" not in err
    assert "No space left on device" in err and "free some space" in err
    run = tmp_path / "runs" / "t"
    assert not (run / "final").exists() and leftovers(tmp_path) == []
    status = json.loads((run / "status.json").read_text())  # written in place, in its reserve
    assert status["state"] == "failed" and "No space left" in status["reason"]


def test_output_dir_below_a_regular_file_is_one_error(tiny_model_dir: Path, alpaca_file: Path,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    raw = raw_cfg(tiny_model_dir, alpaca_file, tmp_path / "afile" / "runs")
    code, _, err = cli(["train", str(write_config(tmp_path / "c.yaml", raw))], capsys)
    assert code in (1, 2) and "Traceback" not in err
    assert "afile" in err and ("directory" in err or "Not a directory" in err)


def test_a_running_status_without_a_live_writer_reads_as_interrupted(tmp_path: Path) -> None:
    from tunesmith.train.run_state import write_status

    write_status(tmp_path, "running")
    assert read_status(tmp_path)["state"] == "interrupted"
    with RunLock(tmp_path):
        assert read_status(tmp_path)["state"] == "running"
