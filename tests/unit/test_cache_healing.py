"""Damaged cache entries heal: a truncated, corrupted or unchecked file under the cache root
(tokenized data, rewritten mixture files, DPO reference log-probs, distillation teacher
logits) is removed with one warning naming it, and rebuilt to the same content."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers.tiny import build_tokenizer, write_jsonl
from tests.unit.sft_support import isolated_home  # noqa: F401 (fixture)
from tunesmith.config.schema import DataConfig, MixtureDataset
from tunesmith.data import cache
from tunesmith.data.mixture import rewrite_rows
from tunesmith.data.pipeline import prepare_data
from tunesmith.data.preference import PrefData, PrefEncoded
from tunesmith.data.templates import Encoded
from tunesmith.io import cache_root
from tunesmith.train.objectives.distill import _Distill
from tunesmith.train.objectives.dpo import DPOObjective

pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    cache._warned.clear()  # "once per file per process": each test starts afresh


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
    path.write_bytes(bytes(data))


def _no_checksum(path: Path) -> None:
    cache.checksum_path(path).unlink()


def _entries(sub: str, pattern: str) -> list[Path]:
    return sorted((cache_root() / sub).glob(pattern))


@pytest.mark.parametrize("damage", [_truncate, _flip, _no_checksum])
def test_damaged_tokenization_cache_is_rebuilt_with_one_warning(
        tmp_path: Path, tok: Any, capsys: pytest.CaptureFixture[str],
        damage: Any) -> None:
    rows = [{"instruction": f"Say {w}.", "input": "", "output": w}
            for w in ["hello", "yes", "no", "red", "blue", "green"]]
    cfg = DataConfig(train=str(write_jsonl(tmp_path / "t.jsonl", rows)), max_length=32)
    first = prepare_data(cfg, tok)
    [entry] = _entries("tokenized", "*.npz")
    assert cache.checksum_path(entry).exists()
    damage(entry)
    capsys.readouterr()

    again = prepare_data(cfg, tok)  # no BadZipFile: rebuilt
    err = capsys.readouterr().err
    assert not again.stats["train"].cached
    assert [(e.input_ids, e.labels, e.where) for e in again.train] == \
        [(e.input_ids, e.labels, e.where) for e in first.train]
    assert err.count("warning:") == 1 and str(entry) in err and "damaged" in err
    assert "rebuilt" in err

    third = prepare_data(cfg, tok)  # the rebuilt entry verifies and is used, silently
    assert third.stats["train"].cached and capsys.readouterr().err == ""
    assert [e.input_ids for e in third.train] == [e.input_ids for e in first.train]


def test_an_entry_that_verifies_but_cannot_be_loaded_is_discarded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.npz"
    cache.write_entry(path, lambda fh: fh.write(b"not a zip archive"))
    assert cache.read_entry(path, lambda p: np.load(p)["ids"]) is None
    assert not path.exists() and not cache.checksum_path(path).exists()
    err = capsys.readouterr().err
    assert str(path) in err and "cannot be read" in err
    # the warning is printed once per file, however often the file is met
    cache.write_entry(path, lambda fh: fh.write(b"not a zip archive"))
    assert cache.read_entry(path, lambda p: np.load(p)["ids"]) is None
    assert capsys.readouterr().err == ""


def test_damaged_mixture_rewrite_is_written_again(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "cls.jsonl", [{"text": f"t{i}", "label": i % 2}
                                               for i in range(6)])
    ds = MixtureDataset(name="cls", train=str(src), prompt="Sentiment: {text}",
                        completion="{label_text}", label_names=["neg", "pos"])
    path, _ = rewrite_rows(ds, str(src), "auto", None, None)
    good = Path(path).read_bytes()
    _truncate(Path(path))
    again, fmt = rewrite_rows(ds, str(src), "auto", None, None)
    assert again == path and fmt == "messages" and Path(path).read_bytes() == good
    assert path in capsys.readouterr().err


# -- DPO reference and distillation teacher caches -----------------------------------------
_ACC = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext)


class _CountingLogps(nn.Module):
    """Stands in for the policy: a deterministic log-prob per sequence, counting calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, **_: Any) -> tuple[torch.Tensor]:
        self.calls += 1
        return (input_ids.float().sum(dim=1) / 10,)


def _dpo_objective() -> DPOObjective:
    def enc(ids: list[int]) -> Encoded:
        return Encoded(ids, ids, "f:1", False)

    pairs = [PrefEncoded(enc([i, i + 1, 3]), enc([i, 2]), f"f:{i}") for i in range(1, 6)]
    obj = object.__new__(DPOObjective)  # only the reference cache is exercised
    obj.data = PrefData(pairs[:4], pairs[4:])
    obj.module = _CountingLogps()
    obj.pad_id, obj.ref = 0, {}
    return obj


@pytest.mark.parametrize("damage", [_truncate, _flip])
def test_damaged_dpo_reference_cache_is_recomputed(
        capsys: pytest.CaptureFixture[str], damage: Any) -> None:
    first = _dpo_objective()
    assert first.precompute_reference(_ACC, 2, "k") is False
    [entry] = _entries("dpo_reference", "*.pt")
    hit = _dpo_objective()
    assert hit.precompute_reference(_ACC, 2, "k") is True and hit.module.calls == 0
    damage(entry)
    capsys.readouterr()
    again = _dpo_objective()
    assert again.precompute_reference(_ACC, 2, "k") is False  # no UnpicklingError/zip error
    assert again.module.calls > 0
    assert all(torch.equal(again.ref[s], first.ref[s]) for s in ("train", "validation"))
    err = capsys.readouterr().err
    assert str(entry) in err and "damaged" in err
    assert _dpo_objective().precompute_reference(_ACC, 2, "k") is True


class _StubDistill(_Distill):
    """Only the teacher cache: a teacher that returns one logit row per example."""

    def __init__(self) -> None:
        self.teacher, self.cached, self.runs = object(), {}, 0
        self.examples = {"train": [[1, 2], [3, 4], [5, 6]], "validation": [[7, 8]]}

    def _splits(self) -> dict[str, Sequence[Any]]:
        return self.examples

    def _batch(self, examples: Sequence[Any], device: Any) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor(list(examples), device=device)}

    def _run_teacher(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.runs += 1
        return batch["input_ids"].float() * 0.5


def test_damaged_distill_teacher_cache_is_recomputed(
        capsys: pytest.CaptureFixture[str]) -> None:
    first = _StubDistill()
    assert first.cache_teacher(_ACC, 2, "k") is False and first.teacher is None
    [entry] = _entries("distill_teacher", "*.pt")
    _truncate(entry)
    capsys.readouterr()
    again = _StubDistill()
    assert again.cache_teacher(_ACC, 2, "k") is False and again.runs > 0
    for split, rows in first.cached.items():
        assert all(torch.equal(a, b) for a, b in zip(again.cached[split], rows))
    assert str(entry) in capsys.readouterr().err
    hit = _StubDistill()
    assert hit.cache_teacher(_ACC, 2, "k") is True and hit.runs == 0
