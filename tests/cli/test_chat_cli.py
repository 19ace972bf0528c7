"""`tunesmith chat` keeps the conversation, uses the chat template and quits on an empty line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tunesmith.cli import main


def test_chat_answers_each_turn_and_exits(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import tunesmith.inference.chat as chat_mod

    seen: list[list[dict[str, str]]] = []
    real_generate = chat_mod.generate

    def spy(model, tok, prompts, settings):  # noqa: ANN001
        seen.append([dict(m) for m in prompts[0]])
        return real_generate(model, tok, prompts, settings)

    monkeypatch.setattr(chat_mod, "generate", spy)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nsay yes\n\n"))
    main(["chat", str(tiny_model_dir), "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert out.count("model>") == 2
    assert [m["role"] for m in seen[0]] == ["user"]
    assert [m["role"] for m in seen[1]] == ["user", "assistant", "user"]
    assert seen[1][2]["content"] == "say yes"
