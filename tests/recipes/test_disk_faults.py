"""Real filesystems that fail: a small tmpfs that fills up during training, and a read-only
one. Needs root to mount (CI runs as root); skipped with the reason elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.sft_support import cli, isolated_home, make_cfg, raw_cfg, write_config  # noqa: F401
from tunesmith.errors import SystemResourceError, from_os_error
from tunesmith.recipes import sft

pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> None:
    """Take every free byte of the filesystem."""
    with open(mnt / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
        try:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        except OSError:
            pass


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")
                  if ".tmp-" in p.name or ".old-" in p.name)


def test_disk_full_during_training_is_recorded_and_leaves_nothing_half_written(
        tiny_model_dir: Path, alpaca_file: Path, tmpfs: Path) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmpfs / "runs", data={"val_split": 0.25},
                   train={"max_steps": 4, "save_every": 2, "eval_every": 2, "batch_size": 4})

    def fill_after_step_3(step: int, values: dict[str, Any]) -> None:
        if step == 3:
            fill(tmpfs)

    with pytest.raises(OSError) as info:
        sft.run(cfg, progress=False, callbacks=[fill_after_step_3])
    error = from_os_error(info.value)
    assert isinstance(error, SystemResourceError) and error.got == "ENOSPC"
    assert "free some space" in error.render()
    run = tmpfs / "runs" / "t"
    status = json.loads((run / "status.json").read_text())  # in place: no room for a new file
    assert status["state"] == "failed" and "No space left" in status["reason"]
    assert not (run / "final").exists() and leftovers(tmpfs) == []
    assert (run / "checkpoints" / "step-2" / "trainer_state.json").exists()  # untouched


def test_read_only_output_is_one_error_exit_1(tiny_model_dir: Path, alpaca_file: Path,
                                              tmpfs: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    raw = raw_cfg(tiny_model_dir, alpaca_file, tmpfs / "runs")
    code, _, err = cli(["train", str(write_config(tmp_path / "c.yaml", raw))], capsys)
    assert code == 1 and "Traceback" not in err
    assert "Read-only file system" in err and "EROFS" in err and str(tmpfs) in err
