"""Training points at a `tunesmith data prepare` directory; the manifest records its hashes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.tiny import write_jsonl
from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401
from tunesmith.data.prepare import build_config, card_hashes, prepare
from tunesmith.recipes import sft


def test_train_on_prepared_directory_records_card_hashes(tiny_model_dir: Path, tmp_path: Path,
                                                         isolated_home: Path) -> None:  # noqa: F811
    rows = [{"instruction": f"Name the number after {i}.", "input": "",
             "output": f"It is {i + 1}."} for i in range(40)]
    rows.append(dict(rows[0]))  # an exact duplicate that prepare removes
    src = write_jsonl(tmp_path / "raw.jsonl", rows)
    out = tmp_path / "prepared"
    prepare(build_config({"inputs": [str(src)], "output": str(out)}))
    cfg = make_cfg(tiny_model_dir, out, tmp_path / "runs")
    result = sft.run(cfg, progress=False)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    hashes = card_hashes(out)
    assert manifest["data_card"]["data_card_sha256"] == hashes["data_card_sha256"]
    assert manifest["data"]["train"]["sha256"] == hashes["splits"]["train"]
    card = json.loads((out / "data_card.json").read_text())
    assert manifest["data"]["train"]["rows"] == card["splits"]["train"]["rows"] < 41
    if card["splits"].get("validation", {}).get("rows"):
        assert manifest["data"]["validation"]["rows"] == card["splits"]["validation"]["rows"]
    assert 0.0 <= manifest["batching"]["padding_fraction"] < 0.5
