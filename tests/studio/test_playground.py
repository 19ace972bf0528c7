"""Playground: lists what /v1/models serves, serves a run directory by name, and the chat
itself is /v1/chat/completions called with the session cookie (and its CSRF token)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.studio.conftest import StudioClient, make_studio, write_run
from tests.unit.serve.serve_support import serve_models, shared_pool  # noqa: F401 - fixtures


@pytest.fixture()
def studio_pool(shared_pool: Any, tmp_path: Path, runs_dir: Path  # noqa: F811
                ) -> Iterator[StudioClient]:
    with make_studio(tmp_path / "data", runs_dir, pool=shared_pool) as client:
        yield StudioClient(client)


def test_page_lists_served_chat_models(studio_pool: StudioClient) -> None:
    html = studio_pool.get("/studio/play").text
    assert '<option value="tiny">' in html and '<option value="lora-b">' in html
    assert '<option value="sentiment">' not in html  # a classifier does not chat
    assert 'id="model-a"' in html and 'id="model-b"' in html


def test_chat_goes_through_the_openai_route_with_the_cookie(studio_pool: StudioClient) -> None:
    studio_pool.get("/studio/play")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 4, "stream": True}
    resp = studio_pool.client.post("/v1/chat/completions", json=body,
                                   headers={"X-CSRF-Token": studio_pool.csrf})
    assert resp.status_code == 200 and "data: [DONE]" in resp.text
    unknown = studio_pool.client.post("/v1/chat/completions", json={**body, "model": "nope"},
                                      headers={"X-CSRF-Token": studio_pool.csrf})
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]


def test_serve_a_cli_run_by_name(studio_pool: StudioClient, runs_dir: Path,
                                 serve_models: dict[str, Path]) -> None:  # noqa: F811
    run = write_run(runs_dir, "my-sft")
    shutil.copytree(serve_models["base"], run / "final")
    resp = studio_pool.post("/studio/play/serve", data={"run": "d0:my-sft", "name": "mine"})
    assert resp.headers["HX-Redirect"] == "/studio/play?served=mine"
    try:
        models = [m["id"] for m in studio_pool.client.get("/v1/models").json()["data"]]
        assert "mine" in models
    finally:
        studio_pool.client.app.state.pool.handles.pop("mine", None)
    bad = studio_pool.post("/studio/play/serve", data={"run": "d0:nope"})
    assert "that run has no final/ model to serve" in bad.text


def test_the_conversation_is_kept_on_the_server(studio: StudioClient) -> None:
    state = {"history": {"a": [{"role": "user", "content": "</script><b>x"}], "b": []},
             "models": {"a": "tiny", "b": "lora-b"}}
    assert studio.post("/studio/play/save", content=json.dumps(state),
                       htmx=False).status_code == 204
    html = studio.get("/studio/play").text
    saved = html.split('id="play-saved">')[1].split("</script>")[0]
    assert json.loads(saved) == state  # and the text cannot close the script element


def test_evaluate_offers_served_models_by_their_source(studio_pool: StudioClient,
                                                       serve_models: dict[str, Path]  # noqa: F811
                                                       ) -> None:
    html = studio_pool.get("/studio/eval").text
    assert f'value="{serve_models["base"]}"' in html and "served as <code>tiny</code>" in html
