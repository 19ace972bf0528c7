"""`tunesmith generate` (one prompt / a JSONL file, batched, atomic output) and
`tunesmith data preview` (rendered samples, trained vs masked counts)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import write_jsonl
from tests.unit.sft_support import cli, has, isolated_home, raw_cfg, write_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("isolated_home")

PROMPTS = [{"prompt": "Say hello.", "id": 1},
           {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Say red."},
                         {"role": "assistant", "content": "red"}], "id": 2},
           {"instruction": "Add 3 and 4.", "input": "", "id": 3},
           {"prompt": "The quick brown fox", "id": 4},
           {"prompt": "0 1 2 3 4 5 6 7 8 9 10 11 12 instruction input output", "id": 5}]


def test_generate_file_batched_matches_one_by_one(tiny_model_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", PROMPTS)
    out = tmp_path / "out" / "gen.jsonl"
    code, _, err = cli(["generate", str(tiny_model_dir), "--file", str(src), "-o", str(out),
                        "--max-new-tokens", "6", "--batch-size", "3"], capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]  # order kept, input fields kept
    assert rows[1]["messages"] == PROMPTS[1]["messages"]
    assert all(isinstance(r["generated"], str) for r in rows)
    assert "wrote 5 rows" in err
    assert sorted(p.name for p in out.parent.iterdir()) == ["gen.jsonl"]  # no temp files left

    # the single-prompt path prints the same text as the batched (left-padded) file path
    code, printed, err = cli(["generate", str(tiny_model_dir), "--prompt", "Say hello.",
                              "--max-new-tokens", "6"], capsys)
    assert code == 0, err
    assert printed.strip() == rows[0]["generated"]


def test_generate_output_is_replaced_atomically(tiny_model_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", PROMPTS[:2])
    out = tmp_path / "gen.jsonl"
    out.write_text("old contents\n")
    import tunesmith.inference.generate as g

    def boom(*a: Any, **k: Any) -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(g, "generate", boom)
    cli(["generate", str(tiny_model_dir), "--file", str(src), "-o", str(out)], capsys)
    assert out.read_text() == "old contents\n"  # an interrupted run leaves the old file
    monkeypatch.undo()
    code, _, err = cli(["generate", str(tiny_model_dir), "--file", str(src), "-o", str(out),
                        "--max-new-tokens", "3"], capsys)
    assert code == 0, err
    assert [json.loads(x)["prompt" if "prompt" in json.loads(x) else "messages"]
            for x in out.read_text().splitlines()] == [PROMPTS[0]["prompt"],
                                                       PROMPTS[1]["messages"]]


def test_generate_needs_exactly_one_input(tiny_model_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["generate", str(tiny_model_dir)], capsys)
    assert code == 2 and "exactly one of --prompt or --file" in err
    assert "Traceback" not in err


def test_generate_bad_input_file(tiny_model_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "ok"}\n{"no_prompt": 1}\n')
    code, _, err = cli(["generate", str(tiny_model_dir), "--file", str(src), "-o",
                        str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and "record has no prompt" in err and "Traceback" not in err
    assert has(err, f"{src}:2")
    assert not (tmp_path / "o.jsonl").exists()


def test_data_preview_shows_counts(tiny_model_dir: Path, messages_file: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers.tiny import build_tokenizer
    from tunesmith.config.schema import DataConfig
    from tunesmith.data.pipeline import prepare_data

    cfg = write_config(tmp_path / "cfg.yaml", raw_cfg(tiny_model_dir, messages_file,
                                                      tmp_path / "runs"))
    code, out, err = cli(["data", "preview", str(cfg), "-n", "2"], capsys)
    assert code == 0, err
    flat = " ".join(out.split())
    m = re.search(r"trained tokens: (\d+) masked: (\d+)", flat)
    assert m, flat[:500]
    stats = prepare_data(DataConfig(train=str(messages_file), max_length=64),
                         build_tokenizer()).stats["train"]
    assert (int(m.group(1)), int(m.group(2))) == (stats.trained_tokens, stats.masked_tokens)
    assert "format: messages" in flat and "rows previewed: 16" in flat
    # two samples, each with its own trained / masked count, and the check table all ok
    assert len(re.findall(r"\(\d+ trained / \d+ masked\)", flat)) == 2
    # not a terminal: the trained spans are marked «…», exactly the assistant replies
    spans = [m for m in re.findall(r"«(.*?)»", out, flags=re.S) if m != "…"]  # not the legend
    assert spans == ["hello<|im_end|>", "yes<|im_end|>"]
    assert "Say hello." in out and "failing" not in flat
    assert not (tmp_path / "runs").exists()
