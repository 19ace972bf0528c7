"""`tunesmith data inspect` / `data prepare` through typer: exit codes, output, error text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tunesmith.data.prepare.cli import register

ROWS = [{"instruction": f"Give an example sentence using the word number {i}.", "input": "",
         "output": f"Here is sentence {i}: the word {i * 7} appears in it."} for i in range(30)]


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer()
    data = typer.Typer()
    register(data)
    root.add_typer(data, name="data")
    return root


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _run(app: typer.Typer, *args: str) -> Any:
    return CliRunner().invoke(app, ["data", *[str(a) for a in args]])


def test_prepare_writes_splits_card_and_reports(app: typer.Typer, tmp_path: Path) -> None:
    src = _write(tmp_path / "in.jsonl", ROWS + ['{"oops"'])
    out = tmp_path / "out"
    res = _run(app, "prepare", src, "-o", out, "--split", "0.8,0.1,0.1", "--pii", "--json")
    assert res.exit_code == 0, res.output
    card = json.loads(res.stdout)
    assert {s: v["rows"] for s, v in card["splits"].items()} == {"train": 24, "validation": 3,
                                                                 "test": 3}
    assert card["bad_input"]["by_reason"] == {"broken_json": 1}
    assert card["config"]["pii"]["enabled"] is True
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "data_card.md",
                 "data_card.json", "reports/rejected.jsonl", "reports/removed.jsonl"):
        assert (out / name).is_file(), name


def test_prepare_table_output(app: typer.Typer, tmp_path: Path) -> None:
    src = _write(tmp_path / "in.jsonl", ROWS)
    res = _run(app, "prepare", src, "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "exact_dedup" in res.stdout and "train" in res.stdout


def test_strict_bad_row_exits_2_naming_file_line_and_value(app: typer.Typer,
                                                           tmp_path: Path) -> None:
    src = _write(tmp_path / "in.jsonl", ROWS[:3] + ['{"instruction": "x", "output": 5}'])
    res = _run(app, "prepare", src, "-o", tmp_path / "out", "--strict")
    assert res.exit_code == 2
    assert "Error:" in res.stderr and "Traceback" not in res.output
    assert f"{src}:4" in res.stderr and "output" in res.stderr and "got: 5" in res.stderr
    assert "fix:" in res.stderr
    assert not (tmp_path / "out").exists()


def test_missing_label_reported_with_line(app: typer.Typer, tmp_path: Path) -> None:
    rows = [{"text": f"sentence {i}", "label": i % 2} for i in range(10)] + [{"text": "x"}]
    src = _write(tmp_path / "cls.jsonl", rows)
    res = _run(app, "prepare", src, "-o", tmp_path / "out", "--strict")
    assert res.exit_code == 2 and f"{src}:11" in res.stderr and "label" in res.stderr
    res = _run(app, "prepare", src, "-o", tmp_path / "out2", "--json")
    assert res.exit_code == 0
    card = json.loads(res.stdout)
    assert card["bad_input"]["by_reason"] == {"missing_label": 1}
    assert card["bad_input"]["examples"][0]["where"] == f"{src}:11"


@pytest.mark.parametrize("args, needle", [
    (["--split", "0.5,0.2"], "--split"),
    (["--threshold", "1.5"], "dedup.threshold"),
    (["--unicode", "nfc"], "clean.unicode"),
    (["--output-format", "csv"], "output_format"),
])
def test_bad_options_exit_2(app: typer.Typer, tmp_path: Path, args: list[str],
                            needle: str) -> None:
    src = _write(tmp_path / "in.jsonl", ROWS)
    res = _run(app, "prepare", src, "-o", tmp_path / "out", *args)
    assert res.exit_code == 2 and needle in res.stderr, res.output


def test_missing_input_and_existing_output(app: typer.Typer, tmp_path: Path) -> None:
    res = _run(app, "prepare", tmp_path / "nope.jsonl", "-o", tmp_path / "out")
    assert res.exit_code == 2 and "nope.jsonl" in res.stderr
    src = _write(tmp_path / "in.jsonl", ROWS)
    assert _run(app, "prepare", src, "-o", tmp_path / "out").exit_code == 0
    res = _run(app, "prepare", src, "-o", tmp_path / "out")
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    assert _run(app, "prepare", src, "-o", tmp_path / "out", "--overwrite").exit_code == 0


def test_config_file_with_flag_override(app: typer.Typer, tmp_path: Path) -> None:
    _write(tmp_path / "in.jsonl", ROWS)
    cfg = tmp_path / "prep.yaml"
    cfg.write_text("kind: data-prepare\ninputs: [in.jsonl]\noutput: prepared\n"
                   "split: {train: 0.5, validation: 0.5, test: 0.0}\n")
    res = _run(app, "prepare", "--config", cfg, "--split", "train=0.9,test=0.1", "--json")
    assert res.exit_code == 0, res.output
    card = json.loads(res.stdout)
    assert set(card["splits"]) == {"train", "test"} and card["splits"]["test"]["rows"] == 3
    assert (tmp_path / "prepared" / "train.jsonl").is_file()
    cfg.write_text("inputs: [in.jsonl]\noutput: p2\ndedup: {near_dup: true}\n")
    res = _run(app, "prepare", "--config", cfg)
    assert res.exit_code == 2 and "dedup.near_dup" in res.stderr and str(cfg) in res.stderr


def test_inspect_json_and_table(app: typer.Typer, tmp_path: Path) -> None:
    rows = [{"text": f"review number {i}", "label": "pos" if i % 4 else "neg"} for i in range(20)]
    src = _write(tmp_path / "cls.jsonl", rows + ["not json"])
    res = _run(app, "inspect", src, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["format"] == "classification" and report["rows"] == 20
    assert report["labels"]["counts"] == {"pos": 15, "neg": 5}
    assert report["bad_rows"]["unreadable"] == {"broken_json": 1}
    res = _run(app, "inspect", src)
    assert res.exit_code == 0 and "classification" in res.stdout and "75.0%" in res.stdout


def test_inspect_with_local_tokenizer(app: typer.Typer, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    tok.save_pretrained(tmp_path / "tok")
    src = _write(tmp_path / "t.jsonl", [{"text": "w " * n} for n in (5, 50, 500)])
    res = _run(app, "inspect", src, "--tokenizer", tmp_path / "tok", "--max-length", "64",
               "--json")
    assert res.exit_code == 0, res.output
    tokens = json.loads(res.stdout)["tokens"]
    assert (tokens["min"], tokens["max"], tokens["truncated_rows"]) == (5, 500, 1)
    res = _run(app, "inspect", src, "--tokenizer", tmp_path / "missing")
    assert res.exit_code == 2 and "--tokenizer" in res.stderr


def test_inspect_missing_file(app: typer.Typer, tmp_path: Path) -> None:
    res = _run(app, "inspect", tmp_path / "none.jsonl")
    assert res.exit_code == 2 and "none.jsonl" in res.stderr
