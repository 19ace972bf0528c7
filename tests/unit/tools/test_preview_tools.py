"""`tunesmith data preview` on tool-calling data: calls trained, results and masked thinking
shown outside the trained marks."""

from __future__ import annotations

import copy
import io
from pathlib import Path

from rich.console import Console

from tests.helpers.tiny import build_tokenizer, write_jsonl
from tests.unit.tools.support import CONVERSATION
from tunesmith.config.schema import RunConfig
from tunesmith.data.preview import preview


def test_preview_marks_tool_calls_trained_and_results_masked(tmp_path: Path) -> None:
    row = copy.deepcopy(CONVERSATION)
    row["messages"][3]["reasoning_content"] = "The tool said sunny."
    path = write_jsonl(tmp_path / "t.jsonl", [row])
    cfg = RunConfig.model_validate({"data": {"train": str(path), "reasoning": "mask"}})
    buf = io.StringIO()
    out = preview(cfg, build_tokenizer(), n=1, console=Console(file=buf, color_system=None,
                                                                width=400))
    text = buf.getvalue()
    assert out["failures"] == {}
    assert out["tools"] == {"tool_calls": 1, "tool_results": 1, "think_blocks": 1,
                            "reasoning": "mask", "tool_template": True}
    assert "«<tool_call>" in text  # the call opens a trained span
    assert "</tool_response>" in text and "«<tool_response>" not in text
    assert "<think>\nThe tool said sunny.\n</think>\n\n«It is sunny." in text
    assert "tool calls: 1 (trained)" in text and "built-in tool template" in text
