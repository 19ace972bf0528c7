"""prepare() end to end on small hand-made files: every row accounted for, outputs correct."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tunesmith.data.prepare import build_config, card_hashes, prepare, prepared_split_path
from tunesmith.errors import DataError, UsageError

Writer = Callable[[str, list[Any]], Path]
LONG = ("Explain in a few sentences why the sky appears blue during the day and red at "
        "sunset, mentioning the scattering of light by molecules in the atmosphere.")


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _run(inputs: list[Path], out: Path, **options: Any) -> dict[str, Any]:
    return prepare(build_config({"inputs": [str(p) for p in inputs], "output": str(out),
                                 **options})).card


def _steps(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in card["steps"]}


def _alpaca_rows() -> list[Any]:
    rows: list[Any] = [{"instruction": f"Question number {i}: name a prime above {i * 17}.",
                        "input": "", "output": f"One prime above {i * 17} is {i * 17 + 1}?"}
                       for i in range(40)]
    rows.append({"instruction": "  QUESTION NUMBER 3: name a prime above 51. ", "input": "",
                 "output": "One prime above 51 is 52?"})                    # exact dup of row 4
    rows.append({"instruction": LONG, "input": "", "output": "Rayleigh scattering."})
    rows.append({"instruction": LONG.replace("during the day", "during daytime"), "input": "",
                 "output": "Rayleigh scattering."})                          # near dup
    rows.append('{"instruction": "broken')                                   # broken JSON
    rows.append({"text": "wrong format", "label": 1})                        # schema mismatch
    rows.append({"instruction": "   ", "input": "", "output": "empty instruction"})  # empty
    rows.append({"instruction": "Mail me", "input": "", "output": "at bob@example.com"})
    return rows


def test_every_row_is_accounted_for(write_jsonl: Writer, tmp_path: Path) -> None:
    src = write_jsonl("in.jsonl", _alpaca_rows())
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out"
    card = _run([src], out, pii={"enabled": True}, split={"train": 0.8, "validation": 0.1,
                                                          "test": 0.1})
    steps = _steps(card)
    assert steps["read"]["rows"] == 47
    assert steps["validate"]["removed"] == 2
    assert card["bad_input"]["by_reason"] == {"broken_json": 1, "schema_mismatch": 1}
    assert steps["clean"]["removed"] == 1 and steps["clean"]["dropped"] == {"empty": 1}
    assert steps["pii"]["replaced"] == {"email": 1}
    assert steps["exact_dedup"]["removed"] == 1
    assert steps["near_dedup"]["removed"] == 1
    written = {name: _read(out / sp["file"]) for name, sp in card["splits"].items()}
    assert sum(len(rows) for rows in written.values()) == steps["write"]["rows"] == 42
    assert [len(written[s]) for s in ("train", "validation", "test")] == [34, 4, 4]
    # the removed rows are listed with their line numbers and why
    removed = _read(out / "reports" / "removed.jsonl")
    assert {(r["step"], r["reason"]) for r in removed} == {
        ("clean", "empty"), ("exact_dedup", "exact_duplicate"), ("near_dedup", "near_duplicate")}
    dup = next(r for r in removed if r["step"] == "exact_dedup")
    assert dup["where"].endswith("in.jsonl:41") and dup["duplicate_of"].endswith("in.jsonl:4")
    rejected = _read(out / "reports" / "rejected.jsonl")
    assert [r["where"].rsplit(":", 1)[1] for r in rejected] == ["44", "45"]
    clusters = _read(out / "reports" / "near_duplicates.jsonl")
    assert clusters[0]["kept"].endswith(":42")
    assert clusters[0]["removed"][0]["where"].endswith(":43")
    all_text = json.dumps(written)
    assert "bob@example.com" not in all_text and "[EMAIL]" in all_text
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before, "input must not change"
    assert not list(tmp_path.glob(".out.*")), "no staging directories left behind"
    md = (out / "data_card.md").read_text()
    assert "exact_dedup" in md and card["fingerprint"][:16] in md


def test_strict_fails_on_first_bad_row_and_writes_nothing(write_jsonl: Writer,
                                                          tmp_path: Path) -> None:
    src = write_jsonl("in.jsonl", _alpaca_rows())
    with pytest.raises(DataError) as err:
        _run([src], tmp_path / "out", strict=True)
    assert err.value.where == f"{src}:44"
    assert "not valid JSON" in err.value.what and err.value.got == '{"instruction": "broken'
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_missing_label_strict_names_field_and_value(write_jsonl: Writer, tmp_path: Path) -> None:
    src = write_jsonl("cls.jsonl", [{"text": "fine", "label": "a"}, {"text": "x", "label": None}])
    with pytest.raises(DataError) as err:
        _run([src], tmp_path / "out", strict=True)
    assert err.value.where == f"{src}:2 (field 'label')" and "label" in (err.value.fix or "")


def test_rerun_is_identical_and_overwrite_is_required(write_jsonl: Writer, tmp_path: Path) -> None:
    src = write_jsonl("in.jsonl", _alpaca_rows())
    first = _run([src], tmp_path / "a")
    second = _run([src], tmp_path / "b")
    assert first["fingerprint"] == second["fingerprint"]
    assert first["splits"] == second["splits"]
    with pytest.raises(UsageError):
        _run([src], tmp_path / "a")
    third = _run([src], tmp_path / "a", overwrite=True, split={"seed": 7})
    assert third["splits"]["train"]["sha256"] != first["splits"]["train"]["sha256"]
    assert card_hashes(tmp_path / "a")["fingerprint"] == third["fingerprint"]


def test_output_inside_input_directory_is_refused(write_jsonl: Writer, tmp_path: Path) -> None:
    src = write_jsonl("in.jsonl", _alpaca_rows())
    with pytest.raises(UsageError):
        _run([tmp_path], tmp_path)
    assert src.exists()


def test_parquet_output_matches_jsonl(write_jsonl: Writer, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": f"Say the number {i} in words please."},
                          {"role": "assistant", "content": f"The number is {i}."}],
             **({"id": i} if i % 2 else {})} for i in range(30)]
    src = write_jsonl("chat.jsonl", rows)
    a = _run([src], tmp_path / "j", dedup={"near": False})
    b = _run([src], tmp_path / "p", output_format="parquet", dedup={"near": False})
    for split in a["splits"]:
        table = pq.read_table(tmp_path / "p" / b["splits"][split]["file"]).to_pylist()
        as_json = _read(tmp_path / "j" / a["splits"][split]["file"])
        assert [r["messages"] for r in table] == [r["messages"] for r in as_json]
        assert [r.get("id") for r in table] == [r.get("id") for r in as_json]


def test_grouped_split_and_decontamination(write_jsonl: Writer, tmp_path: Path) -> None:
    rows = []
    for g in range(30):
        for k in range(3):
            rows.append({"instruction": f"Topic {g}: write sentence variant {k} about item {g}.",
                         "input": "", "output": f"Sentence {k} for topic {g} number {g * 31 + k}.",
                         "meta": {"topic": f"t{g}"}})
    src = write_jsonl("in.jsonl", rows)
    leak = ("the lighthouse keeper counted forty ships passing the rocky northern cape "
            "every single winter night")
    rows.append({"instruction": f"Copy this: {leak}", "input": "", "output": "ok",
                 "meta": {"topic": "leak"}})
    write_jsonl("in.jsonl", rows)
    evalf = write_jsonl("eval.jsonl", [{"text": leak.capitalize() + ".", "label": 0}])
    card = _run([src], tmp_path / "out", dedup={"near": False},
                split={"group_by": "meta.topic", "train": 0.8, "validation": 0.1, "test": 0.1},
                contamination={"eval_files": [str(evalf)], "remove": True, "ngram": 8})
    topic_split: dict[str, set[str]] = {}
    for name, sp in card["splits"].items():
        for row in _read(tmp_path / "out" / sp["file"]):
            topic_split.setdefault(row["meta"]["topic"], set()).add(name)
    assert all(len(s) == 1 for s in topic_split.values())
    steps = _steps(card)
    flagged = card["contamination"]["flagged_by_source"].get(str(evalf), 0)
    if "leak" in topic_split:  # the leaking row landed in an eval split: nothing to remove
        assert flagged == 0
    else:
        assert flagged == 1 and steps["decontaminate"]["removed"] == 1
        report = _read(tmp_path / "out" / "reports" / "contamination.jsonl")
        assert report[0]["kind"] == "ngram" and report[0]["eval_where"] == f"{evalf}:1"


def test_missing_input_and_no_format(write_jsonl: Writer, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        _run([tmp_path / "nope.jsonl"], tmp_path / "out")
    assert err.value.where == str(tmp_path / "nope.jsonl")
    src = write_jsonl("odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as err:
        _run([src], tmp_path / "out")
    assert "format" in err.value.what and err.value.where == f"{src}:1"


def test_prepared_split_path_verifies_hash(write_jsonl: Writer, tmp_path: Path) -> None:
    src = write_jsonl("in.jsonl", _alpaca_rows())
    _run([src], tmp_path / "out")
    path = prepared_split_path(tmp_path / "out", "train", verify=True)
    assert path.name == "train.jsonl"
    path.write_text(path.read_text() + "\n")
    with pytest.raises(DataError):
        prepared_split_path(tmp_path / "out", "train", verify=True)
    with pytest.raises(DataError):
        prepared_split_path(tmp_path / "out", "dev")


def test_nothing_left_is_an_error_that_says_why(write_jsonl: Writer, tmp_path: Path) -> None:
    src = write_jsonl("bad.jsonl", [{"text": "x"}, '{"broken'])
    with pytest.raises(DataError) as err:
        _run([src], tmp_path / "out", format="classification")
    assert err.value.got == {"missing_label": 1, "broken_json": 1}
    assert err.value.where == f"{src}:1" and not (tmp_path / "out").exists()


def test_chat_and_preference_texts_are_cleaned_and_deduplicated(write_jsonl: Writer,
                                                                tmp_path: Path) -> None:
    facts = [("Paris is the capital of France; it sits on the Seine and is known for the "
             "Eiffel Tower, the Louvre and its cafes."),
             ("The Danube flows through ten countries, more than any other river in the world, "
             "from the Black Forest to the Black Sea."),
             ("Iceland has no army, runs almost entirely on geothermal and hydro power, and "
             "has one of the oldest parliaments.")]
    chat = [{"messages": [{"role": "user", "content": f"Tell me fact {i} about Europe."},
                          {"role": "assistant", "content": fact}]}
            for i, fact in enumerate(facts)]
    chat.append({"messages": [{"role": "user", "content": "Tell me fact 0 about Europe!!"},
                              {"role": "assistant", "content": facts[0] + "\u200b"}]})
    card = _run([write_jsonl("chat.jsonl", chat)], tmp_path / "c",
                split={"train": 1.0, "validation": 0.0, "test": 0.0})
    steps = _steps(card)
    assert steps["near_dedup"]["removed"] == 1 and steps["exact_dedup"]["removed"] == 0
    assert steps["clean"]["fields_changed"] == {"control_chars": 1}
    pref = [{"prompt": f"Question {i}: is water wet?", "chosen": " Yes, it is.  ",
             "rejected": "No.", "id": i} for i in range(5)]
    card = _run([write_jsonl("pref.jsonl", pref)], tmp_path / "p",
                split={"train": 1.0, "validation": 0.0, "test": 0.0}, dedup={"near": False})
    assert card["format"] == "preference" and card["splits"]["train"]["rows"] == 5
    rows = _read(tmp_path / "p" / "train.jsonl")
    assert {r["chosen"] for r in rows} == {"Yes, it is."}
    assert {r["id"] for r in rows} == set(range(5))
