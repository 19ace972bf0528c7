"""The record of what was served: every chat/text completion with its prompt and outputs.

Stored under the id the client received (``chatcmpl-...`` / ``cmpl-...``), so feedback
(``serve/feedback/``) and human evaluation can name it later.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from sqlalchemy import Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tunesmith.serve.db import Base, Database


class CompletionRecord(Base):
    """A completion as returned to the client: prompt, outputs, model, sampling settings."""

    __tablename__ = "serve_completions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    model: Mapped[str] = mapped_column(String(300), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # chat | text
    prompt: Mapped[str] = mapped_column(Text)  # JSON: message list (chat) or string (text)
    outputs: Mapped[str] = mapped_column(Text)  # JSON list, one text per choice
    finish_reasons: Mapped[str] = mapped_column(Text)  # JSON list
    params: Mapped[str] = mapped_column(Text)  # JSON: temperature, top_p, seed, ...
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def record_completion(db: Database, completion_id: str, model: str, kind: str, prompt: Any,
                      outputs: list[str], finish_reasons: list[str], params: dict[str, Any],
                      prompt_tokens: int, completion_tokens: int) -> None:
    with db.session() as s:
        s.add(CompletionRecord(
            id=completion_id, time=time.time(), model=model, kind=kind,
            prompt=json.dumps(prompt, ensure_ascii=False),
            outputs=json.dumps(outputs, ensure_ascii=False),
            finish_reasons=json.dumps(finish_reasons), params=json.dumps(params),
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
