"""`tunesmith feedback export --format kto`: every rated choice is one row (label true/false),
corrections are desirable rows, and `task: kto`'s reader takes the file as it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.serve.serve_support import serve_models, shared_pool  # noqa: F401
from tests.unit.serve.test_feedback import Q1, Q2, _text, feedback_db  # noqa: F401
from tests.unit.sft_support import cli


def test_export_kto(feedback_db: dict[str, Any], tmp_path: Path,  # noqa: F811
                    capsys: pytest.CaptureFixture[str]) -> None:
    from tunesmith.config.schema import KTOConfig
    from tunesmith.data.readers import read_rows
    from tunesmith.data.unpaired import to_rated

    out = tmp_path / "kto.jsonl"
    code, _, err = cli(["feedback", "export", "--data-dir", str(feedback_db["data_dir"]),
                        "-o", str(out), "--format", "kto"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = {(json.dumps(r["prompt"]), r["completion"][0]["content"], r["label"],
            r["provenance"]["source"]) for r in rows}
    a, b, d, e = (feedback_db[k] for k in "abde")
    assert got == {(json.dumps(Q1), _text(a, 0), False, "downvoted"),
                   (json.dumps(Q1), _text(a, 1), True, "upvoted"),
                   (json.dumps(Q1), _text(b), False, "downvoted"),
                   (json.dumps(Q1), "Hello!", True, "correction"),
                   (json.dumps(Q2), _text(d), True, "upvoted"),
                   (json.dumps(Q2), _text(e), True, "upvoted")}
    for row in read_rows(out):
        ex, good = to_rated(row, KTOConfig(), None)
        assert ex.messages[-1]["role"] == "assistant" and good == row.data["label"]
    code, _, err = cli(["feedback", "export", "--data-dir", str(feedback_db["data_dir"]),
                        "-o", str(out), "--format", "orpo"], capsys)
    assert code == 2 and "sft, dpo or kto" in err
