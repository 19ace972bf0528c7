"""Every writer goes through ``tunesmith.io``: a failure at the moment a file or directory
takes its final name leaves the previous state and no temporary file behind.

The failure is injected into ``io.rename`` (the one place a finished temporary file or
directory is renamed into place), so a writer that bypassed ``io`` would not fail here and
its test would fail instead.
"""

from __future__ import annotations

import errno
import io as stdio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import write_jsonl
from tunesmith import io


@pytest.fixture()
def disk_full(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every final rename fail with ENOSPC; returns the targets that were attempted."""
    attempted: list[str] = []

    def full(src: Any, target: Any) -> None:
        attempted.append(str(target))
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(io, "rename", full)
    return attempted


def leftovers(root: Path) -> list[str]:
    """Hidden temporary files or directories anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")
                  if ".tmp-" in p.name or ".old-" in p.name)


# -- the primitives ---------------------------------------------------------------------------
def test_atomic_write_text_replaces_and_uses_ordinary_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    io.atomic_write_text(target, "one")
    io.atomic_write_text(target, "two")
    assert target.read_text() == "two"
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o666 & ~io.umask()  # not mkstemp's private 0600
    assert leftovers(tmp_path) == []


def test_failed_file_write_keeps_the_old_content_and_no_temporary(tmp_path: Path,
                                                                   disk_full: list[str]) -> None:
    target = tmp_path / "status.json"
    target.write_text("old")
    with pytest.raises(OSError) as info:
        io.atomic_write_text(target, "new")
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    assert disk_full == [str(target)]


def test_exception_inside_atomic_file_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), io.atomic_file(target, "wb") as fh:
        fh.write(b"partial")
        raise RuntimeError("killed half-way")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_an_existing_one(tmp_path: Path) -> None:
    final = tmp_path / "final"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with io.atomic_directory(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert stat.S_IMODE(final.stat().st_mode) == 0o777 & ~io.umask()
    assert leftovers(tmp_path) == []


def test_failed_directory_commit_keeps_the_previous_directory(tmp_path: Path,
                                                              disk_full: list[str]) -> None:
    final = tmp_path / "best"
    final.mkdir()
    (final / "weights").write_text("previous")
    with pytest.raises(OSError), io.atomic_directory(final) as tmp:
        (tmp / "weights").write_text("new")
    assert (final / "weights").read_text() == "previous"
    assert leftovers(tmp_path) == []


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert io.file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("text", "expected"), [
    ("HuggingFaceTB/SmolLM2-135M", True), ("org/data:train", True), ("data/train.jsonl", False),
    ("./org/name", False), ("/abs/path", False), ("~/x/y", False), ("a/b/c", False),
    ("gpt2", False)])
def test_looks_like_hub_id(text: str, expected: bool) -> None:
    assert io.looks_like_hub_id(text) is expected


# -- each kind of writer ------------------------------------------------------------------------
def test_run_files_go_through_io(tmp_path: Path, disk_full: list[str]) -> None:
    from tunesmith.recipes import run_dir as rd
    from tunesmith.train.run_state import write_status

    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"name": "old"}')
    with pytest.raises(OSError):
        rd.atomic_write_text(run / "manifest.json", '{"name": "new"}')
    assert json.loads((run / "manifest.json").read_text()) == {"name": "old"}
    assert leftovers(tmp_path) == [] and disk_full
    # status.json is the one exception (next test): it keeps room for itself, so a full disk
    # that refuses a new file still gets the failure recorded, in the file's own blocks;
    # before it exists there is nothing to overwrite, and the error goes on
    with pytest.raises(OSError):
        write_status(run, "running")
    assert not (run / "status.json").exists() and leftovers(tmp_path) == []


def test_status_is_recorded_in_place_when_the_disk_refuses_a_new_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith.train.run_state import STATUS_RESERVE, read_status, write_status

    write_status(tmp_path, "running")
    assert (tmp_path / "status.json").stat().st_size == STATUS_RESERVE

    def full(src: Any, target: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(io, "rename", full)
    write_status(tmp_path, "failed", reason="OSError: No space left on device")
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and "No space" in status["reason"]
    assert leftovers(tmp_path) == [] and read_status(tmp_path)["state"] == "failed"


def test_checkpoints_go_through_io(tmp_path: Path, tiny_model_dir: Path,
                                   disk_full: list[str]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.train import checkpoint as ckpt

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path / "checkpoints" / "step-2", model, tok, opt, sched,
                             {"step": 2})
    assert not (tmp_path / "checkpoints" / "step-2").exists()
    assert leftovers(tmp_path) == [] and disk_full


def test_data_prepare_goes_through_io(tmp_path: Path, disk_full: list[str]) -> None:
    from tunesmith.data.prepare.config import PrepareConfig
    from tunesmith.data.prepare.pipeline import prepare

    src = write_jsonl(tmp_path / "in.jsonl", [
        {"instruction": f"Say {i}.", "output": str(i)} for i in range(20)])
    out = tmp_path / "prepared"
    with pytest.raises(OSError):
        prepare(PrepareConfig(inputs=[str(src)], output=str(out)))
    assert not out.exists() and leftovers(tmp_path) == [] and disk_full


def test_eval_directory_goes_through_io(tmp_path: Path, tiny_model_dir: Path,
                                        disk_full: list[str]) -> None:
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.evaluate.tasks import EvalSettings

    data = write_jsonl(tmp_path / "qa.jsonl", [
        {"instruction": f"Say {w}.", "output": w} for w in ("yes", "no", "red", "blue")])
    out = tmp_path / "eval"
    with pytest.raises(OSError):
        run_eval([str(tiny_model_dir)], str(data), out,
                 EvalSettings(max_new_tokens=2, bootstrap=10, batch_size=4))
    assert not out.exists() and leftovers(tmp_path) == [] and disk_full


def test_export_goes_through_io(tmp_path: Path, tiny_model_dir: Path,
                                disk_full: list[str]) -> None:
    from tunesmith.export.run import export

    out = tmp_path / "exported"
    with pytest.raises(OSError):
        export(str(tiny_model_dir), fmt="hf", out=out, measure_speed=False)
    assert not out.exists() and leftovers(tmp_path) == [] and disk_full


def test_uploaded_files_go_through_io(tmp_path: Path, disk_full: list[str]) -> None:
    from tunesmith.serve.db import Database
    from tunesmith.serve.jobs.files import store_upload

    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    body = b'{"messages": [{"role": "user", "content": "hi"}, ' \
           b'{"role": "assistant", "content": "hello"}]}\n'
    with pytest.raises(OSError):
        store_upload(db, tmp_path / "data", stdio.BytesIO(body), "train.jsonl", "fine-tune")
    files = tmp_path / "data" / "files"
    assert not any(files.iterdir()) if files.exists() else True
    assert leftovers(tmp_path) == [] and disk_full
