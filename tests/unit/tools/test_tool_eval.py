"""Function-calling evaluation: BFCL-style AST matching on hand-made cases, the eval command
on the tiny model, and a slice of the shared BFCL / glaive copies (skipped without them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import write_jsonl
from tunesmith.data.readers import Row
from tunesmith.evaluate.runner import run_eval
from tunesmith.evaluate.tasks import EvalSettings
from tunesmith.evaluate.toolcalls import expected_calls, score_calls, summarise

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
TOOLS = [{"type": "function", "function": {"name": "spotify_play", "parameters": {
    "type": "object", "properties": {"artist": {"type": "string"},
                                     "duration": {"type": "integer"},
                                     "shuffle": {"type": "boolean"}},
    "required": ["artist", "duration"]}}}]


def _call(name: str, **args: Any) -> dict[str, Any]:
    return {"id": "c", "type": "function", "function": {"name": name,
                                                        "arguments": json.dumps(args)}}


@pytest.mark.parametrize("calls, ast, name", [
    ([_call("spotify_play", artist="Taylor Swift", duration=20)], True, True),
    # BFCL string standardisation: case, spaces and punctuation do not count
    ([_call("spotify_play", artist="taylor swift", duration=20)], True, True),
    ([_call("spotify_play", artist="Taylor Swift", duration=20.0)], True, True),  # int ≡ float
    ([_call("spotify_play", artist="Taylor Swift", duration=15)], False, True),  # wrong value
    ([_call("spotify_play", artist="Taylor Swift")], False, True),  # required missing
    ([_call("spotify_play", artist="Taylor Swift", duration=20, volume=3)], False, True),
    ([_call("spotify_play", artist="Taylor Swift", duration=20, shuffle=True)], True, True),
    ([_call("play", artist="Taylor Swift", duration=20)], False, False),  # wrong function
    ([], False, False),  # no call at all
])
def test_single_call_ast_match(calls: list, ast: bool, name: bool) -> None:
    # ground truth as BFCL writes it: original dotted name, acceptable values, "" = optional
    gt = [{"spotify.play": {"artist": ["Taylor Swift", "taylor swift"], "duration": [20],
                            "shuffle": ["", True]}}]
    assert score_calls(calls, gt, TOOLS) == {"ast": ast, "name": name}


def test_parallel_calls_match_one_to_one_in_any_order() -> None:
    gt = [{"spotify.play": {"artist": ["Taylor Swift"], "duration": [20]}},
          {"spotify.play": {"artist": ["Maroon 5"], "duration": [15]}}]
    a = _call("spotify_play", artist="Taylor Swift", duration=20)
    b = _call("spotify_play", artist="Maroon 5", duration=15)
    assert score_calls([b, a], gt, TOOLS)["ast"]
    assert not score_calls([a, a], gt, TOOLS)["ast"]  # one call cannot match twice
    assert not score_calls([a], gt, TOOLS)["ast"]
    assert not score_calls([a, b, b], gt, TOOLS)["ast"]  # an extra call


def test_no_call_expected_and_expected_from_tool_calls() -> None:
    assert score_calls([], [], TOOLS) == {"ast": True, "name": True}
    row = Row({"messages": [{"role": "user", "content": "x"},
                            {"role": "assistant", "tool_calls": [
                                _call("spotify_play", artist="A", duration=1)]}]}, "f:1")
    assert expected_calls(row) == [{"spotify_play": {"artist": ["A"], "duration": [1]}}]
    stats = summarise([{"category": "simple", "ast": True, "name": True},
                       {"category": "simple", "ast": False, "name": True}])
    assert stats["simple"]["ast_accuracy"] == 0.5 and stats["all"]["name_accuracy"] == 1.0
    lo, hi = stats["all"]["ast_ci95"]
    assert 0 < lo < 0.5 < hi < 1


def test_eval_command_on_the_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"category": "simple", "messages": [
        {"role": "user", "content": "play"},
        {"role": "assistant", "tool_calls": [_call("spotify_play", artist="A", duration=1)]}],
        "tools": TOOLS[:1]}] * 2
    data = write_jsonl(tmp_path / "calls.jsonl", rows)
    summary = run_eval([str(tiny_model_dir)], str(data), tmp_path / "out",
                       EvalSettings(task="tool-calls", max_new_tokens=8, dtype="float32"))
    m = summary["models"][0]["metrics"]
    assert m["all"]["n"] == 2 and m["simple"]["ast_accuracy"] == 0.0  # random weights
    preds = (tmp_path / "out" / "predictions-0.jsonl").read_text().splitlines()
    assert json.loads(preds[0])["expected"] == [{"spotify_play": {"artist": ["A"],
                                                                  "duration": [1]}}]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["task"] == "tool-calls"


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared data copies (../shared)")
def test_shared_bfcl_and_glaive_slices(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tests.helpers.tiny import build_tokenizer
    from tunesmith.data.formats import to_example
    from tunesmith.data.readers import read_rows
    from tunesmith.data.templates import Encoder, check_encoded
    from tunesmith.data.tools import parse_output

    # the reference answers of BFCL score 100% against its own ground truth
    for cat in ("simple_python", "multiple", "parallel"):
        for r in read_rows(str(SHARED / "bfcl_v4" / f"{cat}_test.jsonl"), limit=40):
            calls = r.data["messages"][-1]["tool_calls"]
            assert score_calls(calls, r.data["ground_truth"], r.data["tools"])["ast"], r.where
    # every glaive conversation validates, renders and passes the contract checks
    tok = build_tokenizer()
    enc = Encoder(tok, 100_000)
    encs = [enc.encode(to_example(r, "messages"))
            for r in read_rows(str(SHARED / "glaive_toolcall_en" / "train.jsonl"), limit=60)]
    assert not check_encoded(encs, enc).failures
    assert any(parse_output(tok.decode(e.input_ids)).calls for e in encs)
    # and the eval runs end to end on a BFCL slice
    rows = read_rows(str(SHARED / "bfcl_v4" / "parallel_test.jsonl"), limit=2)
    small = write_jsonl(tmp_path / "p.jsonl", [r.data for r in rows])
    summary = run_eval([str(tiny_model_dir)], str(small), tmp_path / "o",
                       EvalSettings(task="tool-calls", max_new_tokens=4, dtype="float32"))
    assert summary["models"][0]["metrics"]["parallel"]["n"] == 2


def test_eval_cli_prints_per_category_figures(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`tunesmith eval --task tool-calls` prints each category's accuracies with their
    intervals (its metrics are nested per category and it has no cost block)."""
    from typer.testing import CliRunner

    from tunesmith.cli import app

    rows = [{"category": "simple", "messages": [
        {"role": "user", "content": "play"},
        {"role": "assistant", "tool_calls": [_call("spotify_play", artist="A", duration=1)]}],
        "tools": TOOLS[:1]}] * 2
    data = write_jsonl(tmp_path / "calls.jsonl", rows)
    res = CliRunner().invoke(app, ["eval", str(tiny_model_dir), "--data", str(data), "--task",
                                   "tool-calls", "--max-new-tokens", "8", "--dtype", "float32",
                                   "-o", str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "simple · ast_accuracy" in res.output and "all · n" in res.output
    assert "0.0000 [0.00, 0.66]" in res.output  # 0 of 2 with its Wilson interval
