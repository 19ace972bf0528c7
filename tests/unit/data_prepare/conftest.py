"""Fixtures for the data inspect / prepare tests: JSONL writing, a word-level tokenizer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> "
                 "{% endfor %}")


def dump_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write rows (dicts, or raw strings written verbatim) one per line."""
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
            fh.write("\n")
    return path


@pytest.fixture()
def write_jsonl(tmp_path: Path) -> Callable[[str, list[Any]], Path]:
    def _write(name: str, rows: list[Any]) -> Path:
        return dump_jsonl(tmp_path / name, rows)

    return _write


@pytest.fixture(scope="session")
def word_tokenizer() -> Any:
    """One token per whitespace-separated word (plus <s>/</s> specials): easy to count."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", bos_token="<s>",
                                  eos_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture()
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip("../shared/data is not beside the repository")
    return SHARED
