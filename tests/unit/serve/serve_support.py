"""Fixtures for the serving tests: a tiny Llama, two LoRA adapter runs over it, a tiny
classifier, and a TestClient over ``create_app`` (models built once per test session)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import build_tiny_model_dir
from tests.helpers.tiny_cls import build_bert_tokenizer, build_tiny_bert_dir


def make_lora_run(base_dir: Path, run_dir: Path, seed: int) -> Path:
    """A run directory whose final/ is a LoRA adapter with random (non-zero) weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                     init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    final = run_dir / "final"
    peft_model.save_pretrained(final, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(final)
    (run_dir / "manifest.json").write_text(json.dumps({"name": run_dir.name, "task": "sft"}))
    return run_dir


def make_classifier_run(run_dir: Path, base_dir: Path) -> Path:
    """A classifier run dir (final/ with a sentiment head, labels negative/positive)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tunesmith.models.artifacts import write_classifier_info

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1})
    final = run_dir / "final"
    model.save_pretrained(final, safe_serialization=True)
    build_bert_tokenizer().save_pretrained(final)
    write_classifier_info(final, {"labels": ["negative", "positive"], "multi_label": False,
                                  "max_length": 32, "text_field": "text"})
    (run_dir / "manifest.json").write_text(json.dumps({"name": run_dir.name,
                                                       "task": "classification"}))
    return run_dir


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-models")
    base = build_tiny_model_dir(root / "tiny-base")
    return {"base": base,
            "lora_a": make_lora_run(base, root / "runs" / "lora-a", 1),
            "lora_b": make_lora_run(base, root / "runs" / "lora-b", 2),
            "classifier": make_classifier_run(root / "runs" / "sentiment",
                                              build_tiny_bert_dir(root / "tiny-bert"))}


@pytest.fixture(scope="session")
def shared_pool(serve_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One model pool for the session (loading is the slow part); each app has its own DB."""
    from tunesmith.serve.api.engines import ModelPool
    from tunesmith.serve.settings import ServeSettings

    settings = ServeSettings(
        models=[f"tiny={serve_models['base']}", str(serve_models["lora_a"]),
                f"sentiment={serve_models['classifier']}"],
        adapters={"lora-b": str(serve_models["lora_b"])}, dtype="float32",
        data_dir=tmp_path_factory.mktemp("pool-data"))
    pool = ModelPool(settings)
    pool.load_settings_models()
    return pool


def make_client(pool: Any, data_dir: Path, **overrides: Any) -> Any:
    from fastapi.testclient import TestClient

    from tunesmith.serve.app import create_app
    from tunesmith.serve.settings import ServeSettings

    settings = ServeSettings(data_dir=data_dir, dtype="float32", jobs_worker=False, **overrides)
    pool.settings = settings  # job models are looked up in this test's data dir
    return TestClient(create_app(settings, pool=pool))


@pytest.fixture()
def client(shared_pool: Any, tmp_path: Path) -> Any:
    with make_client(shared_pool, tmp_path / "data") as c:
        yield c


def sse_events(text: str) -> list[Any]:
    """Parse an SSE body into JSON objects (and the literal "[DONE]")."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def assert_openai_error(resp: Any, status: int, param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err
