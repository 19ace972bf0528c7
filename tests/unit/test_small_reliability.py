"""The small ones: an invalid UTF-8 byte is reported at its own line by every command and
reader; `data prepare` and `train` agree on message roles; a per-row classification error
names its file and line; no fix the data pipeline gives contradicts the config in force."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import build_tokenizer, write_jsonl
from tests.unit.sft_support import cli, has, isolated_home, raw_cfg, write_config  # noqa: F401
from tunesmith.config import validate_dict
from tunesmith.config.schema import RunConfig
from tunesmith.data.classification import prepare_classification
from tunesmith.data.pipeline import prepare_data
from tunesmith.data.preference import prepare_preference
from tunesmith.data.readers import read_rows
from tunesmith.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("isolated_home")

GOOD = {"instruction": "Say hi.", "input": "", "output": "hi"}


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


def _latin1_line(row: dict[str, Any]) -> bytes:
    """``row`` as a JSON line whose é is one Latin-1 byte (0xe9): invalid UTF-8."""
    return json.dumps(row, ensure_ascii=False).encode("utf-8").replace(b"\xc3\xa9", b"\xe9")


@pytest.fixture()
def bad_jsonl(tmp_path: Path) -> Path:
    """Twelve alpaca rows (all different); line 5 holds an invalid UTF-8 byte."""
    rows = [{"instruction": f"Say {w}.", "input": "", "output": w}
            for w in "zero one two three four five six seven eight nine ten eleven".split()]
    lines = [json.dumps(r).encode() for r in rows]
    lines[4] = _latin1_line({"instruction": "Say café.", "input": "", "output": "café"})
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# -- invalid UTF-8 at its real line ---------------------------------------------------------
def test_train_reports_the_bad_byte_at_line_5(bad_jsonl: Path, tiny_model_dir: Path,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "c.yaml", raw_cfg(tiny_model_dir, bad_jsonl, tmp_path / "r"))
    code, _, err = cli(["train", str(cfg)], capsys)
    assert code == 2 and "Traceback" not in err
    assert has(err, f"{bad_jsonl}:5") and "not valid UTF-8" in err


def test_eval_reports_the_bad_byte_at_line_5(bad_jsonl: Path, tiny_model_dir: Path,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["eval", str(tiny_model_dir), "--data", str(bad_jsonl), "-o",
                        str(tmp_path / "ev")], capsys)
    assert code == 2 and "Traceback" not in err
    assert has(err, f"{bad_jsonl}:5") and "not valid UTF-8" in err


def test_data_inspect_reports_the_bad_byte_at_line_5(bad_jsonl: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["data", "inspect", str(bad_jsonl), "--json"], capsys)
    assert code == 0, err
    examples = json.loads(out)["bad_rows"]["examples"]
    assert [e["where"] for e in examples] == [f"{bad_jsonl}:5"]
    assert "UTF-8" in examples[0]["message"]


def test_data_prepare_reports_the_bad_byte_at_line_5(bad_jsonl: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "prepared"
    code, _, err = cli(["data", "prepare", str(bad_jsonl), "-o", str(out), "--no-near-dedup"],
                       capsys)
    assert code == 0, err
    rejected = [json.loads(x) for x in (out / "reports" / "rejected.jsonl").read_text()
                .splitlines()]
    assert [r["where"] for r in rejected] == [f"{bad_jsonl}:5"]
    code, _, err = cli(["data", "prepare", str(bad_jsonl), "-o", str(tmp_path / "strict"),
                        "--strict"], capsys)
    assert code == 2 and has(err, f"{bad_jsonl}:5") and "Traceback" not in err


@pytest.mark.parametrize("suffix, line", [("csv", 5), ("json", 6)])
def test_csv_and_json_readers_report_the_bad_byte_at_its_line(tmp_path: Path, suffix: str,
                                                              line: int) -> None:
    if suffix == "csv":  # header on line 1, the bad row on line 5
        body = b"instruction,input,output\n" + b"Say hi.,,hi\n" * 3 + b"Say caf\xe9.,,hi\n" + \
            b"Say hi.,,hi\n" * 3
    else:  # "[" on line 1, the fifth record on line 6
        lines = [json.dumps(GOOD).encode()] * 4 + [_latin1_line({**GOOD, "output": "é"})]
        body = b"[\n" + b",\n".join(lines + [json.dumps(GOOD).encode()]) + b"\n]\n"
    path = tmp_path / f"bad.{suffix}"
    path.write_bytes(body)
    with pytest.raises(DataError) as info:  # not a UnicodeDecodeError traceback
        read_rows(path)
    assert info.value.where == f"{path}:{line}" and "0xe9" in info.value.what


def test_csv_rows_keep_their_line_numbers_across_quoted_newlines(tmp_path: Path) -> None:
    path = tmp_path / "multi.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\n\"two\nlines\",a\nplain,b\n")
    rows = read_rows(path)
    assert [r.where for r in rows] == [f"{path}:2", f"{path}:4"]
    assert rows[0].data == {"text": "two\nlines", "label": "a"}  # the BOM is not in the header


# -- roles: data prepare writes what train reads ---------------------------------------------
def _chat(system_role: str, word: str) -> dict[str, Any]:
    return {"messages": [{"role": system_role, "content": "Be brief."},
                         {"role": "user", "content": f"Say {word}."},
                         {"role": "assistant", "content": word}]}


def test_data_prepare_maps_developer_to_system_like_train(tmp_path: Path, tok: Any,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    words = ["hello", "yes", "no", "maybe", "red", "blue", "green", "stop"]
    src = write_jsonl(tmp_path / "dev.jsonl", [_chat("developer", w) for w in words])
    out = tmp_path / "prepared"
    code, _, err = cli(["data", "prepare", str(src), "-o", str(out), "--split", "1,0,0",
                        "--no-near-dedup"], capsys)
    assert code == 0, err
    written = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(written) == len(words)
    assert {m["role"] for r in written for m in r["messages"]} == {"system", "user", "assistant"}
    from_prepared = prepare_data(validate_dict({"data": {"train": str(out), "max_length": 64}}
                                               ).data, tok)
    from_raw = prepare_data(validate_dict({"data": {"train": str(src), "max_length": 64}}
                                          ).data, tok)
    assert sorted(e.input_ids for e in from_prepared.train) == \
        sorted(e.input_ids for e in from_raw.train)


def test_function_role_is_refused_with_the_same_fix_by_prepare_and_train(
        tmp_path: Path, tok: Any, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [_chat("system", w) for w in ["hello", "yes", "no", "maybe"]]
    rows[2]["messages"].insert(2, {"role": "function", "content": "42"})
    src = write_jsonl(tmp_path / "fn.jsonl", rows)
    code, _, err = cli(["data", "prepare", str(src), "-o", str(tmp_path / "p"), "--strict"],
                       capsys)
    assert code == 2 and "Traceback" not in err
    assert has(err, f"{src}:3") and has(err, "write it as role `tool`")
    with pytest.raises(DataError) as info:
        prepare_data(validate_dict({"data": {"train": str(src)}}).data, tok)
    assert info.value.where is not None and info.value.where.startswith(f"{src}:3")
    assert "write it as role `tool`" in (info.value.fix or "")
    code, _, err = cli(["data", "prepare", str(src), "-o", str(tmp_path / "lenient")], capsys)
    assert code == 0, err
    rejected = json.loads((tmp_path / "lenient" / "reports" / "rejected.jsonl").read_text())
    assert rejected["reason"] == "bad_role" and rejected["where"] == f"{src}:3"


# -- per-row classification errors name file:line ----------------------------------------------
def test_a_label_1_point_0_among_integers_names_its_line(tmp_path: Path, tok: Any) -> None:
    rows = [{"text": f"text {i}", "label": i % 2} for i in range(6)]
    rows[3]["label"] = "1.0"
    path = write_jsonl(tmp_path / "cls.jsonl", rows)
    cfg = validate_dict({"task": "classification", "data": {"train": str(path)}})
    with pytest.raises(DataError) as info:
        prepare_classification(cfg.data, cfg.classification, tok)
    assert info.value.where == f"{path}:4 field `label`" and info.value.got == "1.0"


# -- fixes never contradict the config ---------------------------------------------------------
LONG = " ".join(["red blue green stop maybe"] * 12)
KEY_VALUE = re.compile(r"\b((?:data|classification|dpo|model|method|train)\.[a-z_]+)"
                       r"(?::\s*|=)`?([\w.\-/]+)")


def _current(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _same(current: Any, suggested: str) -> bool:
    if isinstance(current, bool):
        return suggested.lower() == str(current).lower()
    return str(current) == suggested


def _cases(tmp: Path) -> list[tuple[str, dict[str, Any], Callable[[RunConfig, Any], Any]]]:
    def sft(cfg: RunConfig, tok: Any) -> Any:
        return prepare_data(cfg.data, tok)

    def cls(cfg: RunConfig, tok: Any) -> Any:
        return prepare_classification(cfg.data, cfg.classification, tok)

    def pref(cfg: RunConfig, tok: Any) -> Any:
        return prepare_preference(cfg.data, cfg.dpo, tok)

    long_rows = write_jsonl(tmp / "long.jsonl", [
        {"instruction": LONG + f" {i}", "input": "", "output": "ok"} for i in range(3)])
    chats = write_jsonl(tmp / "chat.jsonl", [_chat("system", w) for w in ["a", "b", "c"]])
    function = write_jsonl(tmp / "function.jsonl", [
        {"messages": [{"role": "function", "content": "1"}, {"role": "assistant",
                                                             "content": "x"}]}])
    texts = [{"text": f"red {i}", "label": i % 2} for i in range(6)]
    cls_file = write_jsonl(tmp / "cls.jsonl", texts)
    named = write_jsonl(tmp / "named.jsonl", [{**t, "label": "ab"[t["label"]]} for t in texts])
    cls_long = write_jsonl(tmp / "cls_long.jsonl", [{**t, "text": LONG} for t in texts])
    listed = write_jsonl(tmp / "listed.jsonl", [{**t, "label": [t["label"]]} for t in texts])
    mixed = write_jsonl(tmp / "mixed.jsonl", texts[:5] + [{"text": "x", "label": "1.0"}])
    single = write_jsonl(tmp / "single.jsonl", [{**t, "label": 0} for t in texts])
    pairs_long = write_jsonl(tmp / "pairs.jsonl", [
        {"prompt": LONG + f" {i}", "chosen": "yes", "rejected": "no"} for i in range(3)])
    return [
        ("sft too long, truncate", {"data": {"train": str(long_rows), "max_length": 16}}, sft),
        ("sft too long, drop", {"data": {"train": str(long_rows), "max_length": 16,
                                         "truncation": "drop"}}, sft),
        ("sft no data", {"data": {}}, sft),
        ("sft wrong format", {"data": {"train": str(chats), "format": "alpaca"}}, sft),
        ("sft function role", {"data": {"train": str(function)}}, sft),
        ("sft val_split", {"data": {"train": str(chats), "val_split": 0.9}}, sft),
        ("cls too long, drop", {"task": "classification", "data": {
            "train": str(cls_long), "truncation": "drop"},
            "classification": {"max_length": 8}}, cls),
        ("cls unknown label", {"task": "classification", "data": {"train": str(named)},
                               "classification": {"labels": ["x", "y"]}}, cls),
        ("cls duplicate labels", {"task": "classification", "data": {"train": str(cls_file)},
                                  "classification": {"labels": ["x", "x"]}}, cls),
        ("cls list label", {"task": "classification", "data": {"train": str(listed)}}, cls),
        ("cls 1.0", {"task": "classification", "data": {"train": str(mixed)}}, cls),
        ("cls single class", {"task": "classification", "data": {"train": str(single)}}, cls),
        ("dpo too long, truncate", {"task": "dpo", "data": {"train": str(pairs_long),
                                                            "max_length": 16}}, pref),
        ("dpo too long, drop", {"task": "dpo", "data": {"train": str(pairs_long),
                                                        "max_length": 16,
                                                        "truncation": "drop"}}, pref),
    ]


def test_no_data_fix_asks_for_the_value_a_key_already_has(tmp_path: Path, tok: Any) -> None:
    fixes: dict[str, str] = {}
    for name, raw, run in _cases(tmp_path):
        cfg = validate_dict(raw)
        with pytest.raises((DataError, ConfigError)) as info:
            run(cfg, tok)
        fix = info.value.fix or ""
        assert fix, name
        fixes[name] = fix
        for key, value in KEY_VALUE.findall(fix):
            assert not _same(_current(cfg, key), value), f"{name}: {fix!r}"
    # the case this test was written for: truncation already on, so the fix is the length
    assert "data.truncation" not in fixes["sft too long, truncate"]
    assert "data.max_length (now 16)" in fixes["sft too long, truncate"]
    assert "data.truncation: truncate" in fixes["sft too long, drop"]
    assert "data.truncation: truncate" in fixes["dpo too long, drop"]
    assert "data.truncation" not in fixes["dpo too long, truncate"]
