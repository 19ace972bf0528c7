"""``tunesmith serve --rag NAME=INDEX``: passages in the prompt, named in the response."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import write_jsonl
from tests.unit.serve.serve_support import make_client, serve_models, shared_pool  # noqa
from tunesmith.errors import UsageError
from tunesmith.rag.index import IndexSettings, build_index
from tunesmith.serve.cli import parse_rag


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("serve-rag")
    docs = write_jsonl(tmp / "docs.jsonl", [
        {"id": "refund", "text": "Refunds are paid within 14 days of the return."},
        {"id": "ship", "text": "Shipping to Norway takes five working days."}])
    build_index([docs], tmp / "idx", IndexSettings(chunk_tokens=32, overlap=4, id_field="id"))
    return tmp / "idx"


def test_chat_with_rag_names_its_passages(request: pytest.FixtureRequest, tmp_path: Path,
                                          index: Path) -> None:
    pool: Any = request.getfixturevalue("shared_pool")  # the serve tests' tiny model pool
    body = {"model": "tiny", "max_tokens": 2,
            "messages": [{"role": "user", "content": "How long do refunds take?"}]}
    with make_client(pool, tmp_path / "plain") as c:
        plain = c.post("/v1/chat/completions", json=body).json()
    with make_client(pool, tmp_path / "data", rag=parse_rag([f"tiny={index}"])) as c:
        resp = c.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        stream = c.post("/v1/chat/completions", json={**body, "stream": True}).text
    assert out["passages"][0]["id"] == "refund#0" and out["passages"][0]["rank"] == 1
    assert "passages" not in plain
    assert out["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 10
    assert '"passages"' in stream


def test_parse_rag_refuses_bad_values(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="NAME=INDEX"):
        parse_rag(["no-equals"])
    with pytest.raises(Exception, match="not a retrieval index"):
        parse_rag([f"x={tmp_path}"])
