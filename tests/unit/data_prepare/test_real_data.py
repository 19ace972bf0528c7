"""prepare() over the real datasets in ../shared/data: the counts add up, splits behave."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tunesmith.data.prepare import build_config, prepare
from tunesmith.data.prepare.textkeys import exact_key


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _accounting(card: dict[str, Any], outdir: Path) -> None:
    steps = {s["step"]: s for s in card["steps"]}
    removed = sum(s.get("removed", 0) for s in card["steps"])
    assert steps["read"]["rows"] == removed + steps["write"]["rows"]
    assert sum(sp["rows"] for sp in card["splits"].values()) == steps["write"]["rows"]
    listed = len(_read(outdir / "reports" / "removed.jsonl"))
    rejected = len(_read(outdir / "reports" / "rejected.jsonl"))
    assert rejected == steps["validate"]["removed"]
    assert listed == removed - rejected
    for sp in card["splits"].values():
        assert len(_read(outdir / sp["file"])) == sp["rows"]


def test_sst2_stratified_and_complete(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "sst2" / "train.jsonl"
    out = tmp_path / "sst2"
    card = prepare(build_config({"inputs": [str(src)], "output": str(out),
                                 "split": {"train": 0.8, "validation": 0.1, "test": 0.1},
                                 "contamination": {"eval_files": [str(shared_data / "sst2" /
                                                                      "test.jsonl")]}})).card
    _accounting(card, out)
    assert card["format"] == "classification" and card["steps"][0]["rows"] == 6409
    assert card["labels"]["overall"] == {"0": 3073, "1": 3336}  # as the data README says
    share = 3336 / 6409
    for split, counts in card["labels"]["by_split"].items():
        assert abs(counts["1"] / (counts["0"] + counts["1"]) - share) < 0.005, split
    assert card["sources"][0]["sha256"] and card["splits"]["train"]["sha256"]
    # the README says no sst2 train sentence is in test
    assert card["contamination"]["flagged_by_kind"].get("exact", 0) == 0


def test_dolly_grouped_by_instruction(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "dolly_open_qa" / "train.jsonl"
    out = tmp_path / "dolly"
    card = prepare(build_config({
        "inputs": [str(src)], "output": str(out), "pii": {"enabled": True},
        "split": {"group_by": "instruction", "train": 0.9, "validation": 0.05, "test": 0.05},
        "contamination": {"eval_files": [str(shared_data / "dolly_open_qa" /
                                             "validation.jsonl")]}})).card
    _accounting(card, out)
    assert card["format"] == "alpaca" and card["steps"][0]["rows"] == 3139
    owner: dict[str, str] = {}
    for split, sp in card["splits"].items():
        for row in _read(out / sp["file"]):
            key = exact_key(row["instruction"])
            assert owner.setdefault(key, split) == split, f"instruction in two splits: {key}"
    # grouping leaves no instruction of our own validation/test split verbatim in train
    # (templated instructions still share 13-grams, and those are reported)
    report = _read(out / "reports" / "contamination.jsonl")
    internal = [r for r in report if r["eval_source"] in ("validation", "test")]
    assert internal and not [r for r in internal
                             if r["kind"] == "exact" and r["field"] == "instruction"]
    assert all(r["kind"] == "ngram" for r in internal if r["field"] == "instruction")


def test_trec_contamination_matches_the_documented_overlap(shared_data: Path,
                                                           tmp_path: Path) -> None:
    """The data README: 10 TREC test questions also occur verbatim in train (11 train rows)."""
    train = shared_data / "trec" / "train.jsonl"
    test = shared_data / "trec" / "test.jsonl"
    test_keys = {exact_key(r["text"]) for r in _read(test)}
    expected = sum(exact_key(r["text"]) in test_keys for r in _read(train))
    out = tmp_path / "trec"
    card = prepare(build_config({
        "inputs": [str(train)], "output": str(out),
        "dedup": {"exact": False, "near": False}, "split": {"train": 1.0, "validation": 0.0,
                                                            "test": 0.0},
        "contamination": {"eval_files": [str(test)], "remove": True}})).card
    _accounting(card, out)
    assert expected == 11
    assert card["contamination"]["flagged_by_kind"] == {"exact": 11}
    kept = _read(out / "train.jsonl")
    assert len(kept) == 5452 - 11
    assert not any(exact_key(r["text"]) in test_keys for r in kept)
    assert Counter(r["label"] for r in kept)  # labels carried through untouched
