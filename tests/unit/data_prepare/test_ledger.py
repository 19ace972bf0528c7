"""The ledger: rejected/removed rows are written and counted; strict raises; wheres round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.prepare.ledger import Ledger, WhereLog, problem_fix
from tunesmith.errors import DataError


def test_ledger_counts_and_writes(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, strict=False, sources=2)
    err = DataError("bad", where="a.jsonl:3")
    ledger.reject(1, "a.jsonl:3", "broken_json", "line is not valid JSON", '{"x', err)
    ledger.remove("a.jsonl:4", "exact_dedup", "exact_duplicate", duplicate_of="a.jsonl:1")
    ledger.close()
    assert ledger.rejected_per_source == [0, 1]
    assert ledger.reject_reasons == {"broken_json": 1}
    assert ledger.removed_by_step == {"exact_dedup": 1}
    rejected = json.loads((tmp_path / "rejected.jsonl").read_text())
    assert rejected == {"where": "a.jsonl:3", "reason": "broken_json",
                        "message": "line is not valid JSON", "got": '{"x'}
    removed = json.loads((tmp_path / "removed.jsonl").read_text())
    assert removed["duplicate_of"] == "a.jsonl:1"


def test_strict_ledger_raises_the_given_error(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, strict=True, sources=1)
    with pytest.raises(DataError) as err:
        ledger.reject(0, "a:1", "missing_label", "no label", None, DataError("no label",
                                                                              where="a:1"))
    assert err.value.where == "a:1"
    assert "'label'" in problem_fix("missing_label", "classification", "label")


def test_where_log_round_trips() -> None:
    log = WhereLog(["/data/train.jsonl", "user/set"])
    wheres = [(0, "/data/train.jsonl:12"), (1, "user/set:train#4"), (0, "elsewhere:1"),
              (1, "user/set:é#0")]
    for source, where in wheres:
        log.append(source, where)
    assert list(log) == [w for _, w in wheres]
    assert log[-1] == "user/set:é#0" and len(log) == 4 and log[1:3] == [wheres[1][1], wheres[2][1]]
