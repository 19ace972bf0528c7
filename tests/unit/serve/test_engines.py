"""``--engine``: upstream (a second tunesmith server stands in for vLLM / llama-server, on
127.0.0.1 in this process) and the errors of an engine that cannot run."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.serve.serve_support import make_client, serve_models, shared_pool, sse_events  # noqa


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def upstream(shared_pool: Any, tmp_path: Path) -> Iterator[str]:
    """A real tunesmith server over the shared tiny models, on a loopback port."""
    import uvicorn

    from tunesmith.serve.app import create_app
    from tunesmith.serve.settings import ServeSettings

    settings = ServeSettings(data_dir=tmp_path / "up", dtype="float32", jobs_worker=False)
    shared_pool.settings = settings
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, pool=shared_pool),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_upstream_engine_answers_like_the_builtin(upstream: str, serve_models: dict[str, Path],
                                                 shared_pool: Any, tmp_path: Path) -> None:
    import httpx
    from fastapi.testclient import TestClient

    from tunesmith.serve.api.engines import ModelPool
    from tunesmith.serve.api.upstream import UpstreamHandle
    from tunesmith.serve.app import create_app
    from tunesmith.serve.settings import ServeSettings

    settings = ServeSettings(models=[f"tiny={serve_models['base']}",
                                     f"lora-a={serve_models['lora_a']}"],
                             engine="upstream", upstream_url=upstream, dtype="float32",
                             data_dir=tmp_path / "front", jobs_worker=False)
    pool = ModelPool(settings)
    pool.load_settings_models()
    assert isinstance(pool.handles["lora-a"], UpstreamHandle)
    body = {"messages": [{"role": "user", "content": "Say hello"}], "temperature": 0,
            "max_tokens": 9}
    with TestClient(create_app(settings, pool=pool)) as front:
        for model in ("tiny", "lora-a"):
            direct = httpx.post(upstream + "/v1/chat/completions", json={**body, "model": model},
                                timeout=60).json()
            r = front.post("/v1/chat/completions", json={**body, "model": model})
            assert r.status_code == 200, r.text
            got = r.json()
            assert got["choices"][0]["message"] == direct["choices"][0]["message"]
            assert got["choices"][0]["finish_reason"] == direct["choices"][0]["finish_reason"]
            assert got["usage"] == direct["usage"]
            s = front.post("/v1/chat/completions", json={**body, "model": model, "stream": True})
            text = "".join(e["choices"][0]["delta"].get("content") or ""
                           for e in sse_events(s.text)[:-1] if e["choices"])
            assert text == direct["choices"][0]["message"]["content"]
        # the front server still records requests for feedback and monitoring
        assert front.get("/metrics").status_code == 200


def test_unreachable_upstream_is_a_clear_error(tmp_path: Path) -> None:
    from tunesmith.errors import ModelError
    from tunesmith.serve.api.engines import ModelPool
    from tunesmith.serve.settings import ServeSettings

    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ModelError) as info:
        ModelPool(ServeSettings(engine="upstream", upstream_url=url, data_dir=tmp_path))
    assert "not reachable" in info.value.render() and "--upstream-url" in info.value.render()
    with pytest.raises(ModelError, match="needs the server's URL"):
        ModelPool(ServeSettings(engine="upstream", data_dir=tmp_path))
    with pytest.raises(ModelError, match="unknown --engine"):
        ModelPool(ServeSettings(engine="vllm", data_dir=tmp_path))


def test_llamacpp_engine_missing_says_how_to_install(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from tunesmith.errors import ModelError
    from tunesmith.serve.api.engines import ModelPool
    from tunesmith.serve.settings import ServeSettings

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(ModelError) as info:
        ModelPool(ServeSettings(engine="llamacpp", data_dir=tmp_path))
    assert "pip install llama-cpp-python" in info.value.render()


def test_adapter_given_as_a_trained_lora_run(serve_models: dict[str, Path], tmp_path: Path
                                             ) -> None:
    """A LoRA run as training writes it (final/ holds the merged model, final/adapter/ the
    adapter) serves as an adapter over its base: ``--adapter NAME=runs/RUN``."""
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.merge import save_trained
    from tunesmith.serve.api.engines import ModelPool
    from tunesmith.serve.settings import ServeSettings

    base = serve_models["base"]
    run = tmp_path / "runs" / "trained-lora"
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                     serve_models["lora_a"] / "final")
    save_trained(peft, AutoTokenizer.from_pretrained(base), run / "final")
    (run / "manifest.json").write_text(json.dumps({"name": run.name, "task": "sft"}))
    assert (run / "final" / "model.safetensors").exists()
    settings = ServeSettings(models=[f"tiny={base}"], adapters={"mine": str(run)},
                             dtype="float32", data_dir=tmp_path / "data", jobs_worker=False)
    pool = ModelPool(settings)
    pool.load_settings_models()
    handle = pool.handles["mine"]
    assert Path(handle.source) == run / "final" / "adapter"
    assert handle.adapter is not None
    assert handle.group is pool.handles["tiny"].group  # over the shared base, not a copy
    lora = handle.group.model.base_model.model.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(lora.lora_B[handle.adapter].weight, peft.base_model.model.model
                               .layers[0].self_attn.q_proj.lora_B["default"].weight)
