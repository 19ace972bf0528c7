"""``--engine llamacpp``.

Without llama-cpp-python: the GGUF LoRA adapter's tensors are exactly PEFT's update in
llama.cpp's layout (base GGUF + adapter = merged GGUF, tensor by tensor), adapters llama.cpp
cannot express are refused with the fix, the GGUF cache is written once and rewritten when
the run changes, and the decoding loop (max_tokens, EOS, stop strings, n, seeds, adapter
switch) is checked over a scripted llama.cpp stand-in.

With it (marker ``llamacpp``, opt-in: ``pytest -m llamacpp``; skipped when llama_cpp is not
importable): the engine's greedy answers through the API equal llama-cpp-python called
directly on the same GGUF, for the base and for a LoRA adapter over it.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.tiny import build_tiny_model_dir

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def _lora_run(base: Path, out: Path, seed: int, **extra: Any) -> Path:
    """A LoRA adapter directory over ``base`` with random non-zero weights on every linear
    layer (q and k included: their llama.cpp layout is permuted)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                     "up_proj", "down_proj"], **extra)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llamacpp")
    base = build_tiny_model_dir(root / "base", tie=False)
    return {"base": base, "lora": _lora_run(base, root / "lora", 1),
            "rslora": _lora_run(base, root / "rslora", 2, use_rslora=True,
                                alpha_pattern={"v_proj": 2.0}, rank_pattern={"o_proj": 2})}


def _read(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    return {t.name: np.array(t.data, dtype=np.float32) for t in GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("which", ["lora", "rslora"])
def test_gguf_lora_adapter_is_the_merged_update(tiny: dict[str, Path], tmp_path: Path,
                                                which: str) -> None:
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunesmith.export.gguf import write_gguf
    from tunesmith.models.load import load_tokenizer
    from tunesmith.serve.api.gguf_adapter import write_lora_gguf

    tok = load_tokenizer(tiny["base"])
    base = AutoModelForCausalLM.from_pretrained(tiny["base"]).eval()
    write_gguf(base, tok, tmp_path / "base.gguf", "f32")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny["base"]),
                                       str(tiny[which])).merge_and_unload().eval()
    write_gguf(merged, tok, tmp_path / "merged.gguf", "f32")
    write_lora_gguf(tiny[which], AutoConfig.from_pretrained(tiny["base"]),
                    tmp_path / "adapter.gguf")
    b, m, a = (_read(tmp_path / f) for f in ("base.gguf", "merged.gguf", "adapter.gguf"))
    adapted = sorted(n[:-len(".lora_a")] for n in a if n.endswith(".lora_a"))
    assert len(adapted) == 2 * 7  # two layers, seven linear layers each
    for name in adapted:
        # llama.cpp computes W x + B (A x) with the GGUF's W: it must give the merged W
        delta = a[name + ".lora_b"] @ a[name + ".lora_a"]
        np.testing.assert_allclose(b[name] + delta, m[name], atol=2e-5, err_msg=name)
    for name in set(b) - set(adapted):  # norms, embeddings, head: untouched
        np.testing.assert_array_equal(b[name], m[name])
    from gguf import GGUFReader

    fields = GGUFReader(str(tmp_path / "adapter.gguf")).fields
    assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
    assert bytes(fields["adapter.type"].parts[-1]).decode() == "lora"


def test_adapters_llama_cpp_cannot_express_are_refused(tiny: dict[str, Path],
                                                      tmp_path: Path) -> None:
    import shutil

    from transformers import AutoConfig

    from tunesmith.errors import ModelError
    from tunesmith.serve.api.gguf_adapter import write_lora_gguf

    dora = shutil.copytree(tiny["lora"], tmp_path / "dora")
    cfg = json.loads((dora / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (dora / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError) as info:
        write_lora_gguf(dora, AutoConfig.from_pretrained(tiny["base"]), tmp_path / "x.gguf")
    text = info.value.render()
    assert "use_dora" in text and "--engine builtin" in text
    assert not (tmp_path / "x.gguf").exists()


def test_gguf_cache_is_written_once_and_follows_the_run(tiny: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    import os
    import shutil

    from tunesmith.serve.api import llamacpp

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    model = shutil.copytree(tiny["base"], tmp_path / "model")
    first = llamacpp.cached_gguf(model, "f32")
    assert first.is_relative_to(tmp_path / "home") and first.stat().st_size > 0
    stamp = first.stat().st_mtime_ns
    assert llamacpp.cached_gguf(model, "f32") == first and first.stat().st_mtime_ns == stamp
    assert llamacpp.cached_gguf(model, "q8_0") != first  # another weight type: another file
    weights = model / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the run was retrained
    assert llamacpp.cached_gguf(model, "f32") != first


class _ScriptedLlama:
    """Stands in for ``llama_cpp.Llama``: ``generate`` yields a scripted token list."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.seeds, self.resets, self.calls = script, [], 0, []

    def set_seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def reset(self) -> None:
        self.resets += 1

    def generate(self, ids: list[int], **kw: Any) -> Iterator[int]:
        self.calls.append((list(ids), kw))

        def tokens() -> Iterator[int]:  # a generator, as llama_cpp's (closed when done)
            yield from list(self.script) + [self.script[-1]] * 1000
        return tokens()


def _scripted_handle(script: list[int], tok: Any, eos: int) -> Any:
    from tunesmith.serve.api.llamacpp import LlamaCppBase, LlamaCppHandle

    base = LlamaCppBase.__new__(LlamaCppBase)
    base.llm, base.lock, base.adapters, base.current = _ScriptedLlama(script), \
        threading.Lock(), {"a.gguf": object()}, None
    base.waiting, base._count, base.max_queue, base.key = 0, threading.Lock(), 4, "k"
    return LlamaCppHandle("m", "src", base, None, tok, 512, frozenset({eos}))


def test_decoding_loop_over_llama_cpp_tokens(tiny: dict[str, Path]) -> None:
    from tunesmith.models.load import load_tokenizer
    from tunesmith.serve.api.decode import DecodeParams

    tok = load_tokenizer(tiny["base"])
    eos = tok.eos_token_id
    words = tok("hello yes no maybe red blue", add_special_tokens=False)["input_ids"]
    h = _scripted_handle(words + [eos], tok, eos)

    # max_tokens: cut with "length"; the text of those tokens
    (res,) = h.generate([([1, 2, 3], DecodeParams(max_tokens=3, temperature=0.0))])
    assert res.finish_reasons == ["length"] and res.completion_tokens == 3
    assert res.texts[0] == tok.decode(words[:3])
    ids, kw = h.base.llm.calls[-1]
    assert ids == [1, 2, 3] and kw["temp"] == 0.0 and kw["top_k"] == 0
    # EOS: "stop", the whole text, EOS not counted
    (res,) = h.generate([([1], DecodeParams(max_tokens=50))])
    assert res.finish_reasons == ["stop"] and res.texts[0] == tok.decode(words)
    assert res.completion_tokens == len(words)
    # a stop string: cut before it; n choices seeded seed, seed + 1; sampling settings passed
    h.base.llm.seeds.clear()
    (res,) = h.generate([([1], DecodeParams(max_tokens=50, n=2, temperature=0.7, top_p=0.9,
                                             seed=11, stop=[" red"]))])
    assert res.texts == [tok.decode(words).split(" red")[0]] * 2
    assert res.finish_reasons == ["stop", "stop"] and h.base.llm.seeds == [11, 12]
    assert h.base.llm.calls[-1][1]["temp"] == 0.7 and h.base.llm.calls[-1][1]["top_p"] == 0.9
    # a cancelled stream stops; the lock is free again
    cancel = threading.Event()
    cancel.set()
    assert list(h.stream([1], DecodeParams(max_tokens=5), cancel, {})) == []
    assert not h.base.lock.locked()


def test_adapter_switch_resets_the_prompt_cache(tiny: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    calls: list[Any] = []
    fake = types.SimpleNamespace(
        llama_set_adapters_lora=lambda ctx, ptrs, n, scales: calls.append(n) or 0,
        llama_adapter_lora_p_ctypes=__import__("ctypes").c_void_p)
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    h = _scripted_handle([5], None, 0)
    h.base.llm.ctx = None
    base = h.base
    base.select(None)  # already the bare base: nothing to do
    assert calls == [] and base.llm.resets == 0
    base.adapters["a.gguf"] = None
    base.select("a.gguf")
    base.select("a.gguf")
    base.select(None)
    assert calls == [1, 0] and base.llm.resets == 2


@pytest.mark.llamacpp
@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed (see "
                    "docs/serve.md for the build command)")
def test_llamacpp_engine_answers_like_llama_cpp_called_directly(
        tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient
    from llama_cpp import Llama

    from tunesmith.models.load import load_tokenizer
    from tunesmith.serve.api.llamacpp import LlamaCppHandle, cached_gguf, cached_lora_gguf
    from tunesmith.serve.app import create_app
    from tunesmith.serve.settings import ServeSettings

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    settings = ServeSettings(models=[f"tiny={tiny['base']}", f"ad={tiny['lora']}"],
                             engine="llamacpp", data_dir=tmp_path / "data", jobs_worker=False,
                             extra={"gguf_quant": "f32"})
    client = TestClient(create_app(settings))
    pool = client.app.state.pool
    assert all(isinstance(pool.handles[n], LlamaCppHandle) for n in ("tiny", "ad"))
    assert pool.handles["tiny"].base is pool.handles["ad"].base  # one base in memory
    tok = load_tokenizer(tiny["base"])
    msgs = [{"role": "user", "content": "Say hello."}]
    ids = tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
              add_special_tokens=False)["input_ids"]  # as routes.py renders a chat
    gguf = cached_gguf(tiny["base"], "f32")

    def direct(lora: Path | None) -> str:
        from transformers import AutoConfig

        kw = {"lora_path": str(cached_lora_gguf(lora, AutoConfig.from_pretrained(
            tiny["base"])))} if lora else {}
        llm = Llama(model_path=str(gguf), n_ctx=512, verbose=False, **kw)
        out = []
        for t in llm.generate(ids, temp=0.0, top_k=0, min_p=0.0, top_p=1.0,
                              repeat_penalty=1.0):
            if t == tok.eos_token_id or len(out) == 12:
                break
            out.append(int(t))
        return tok.decode(out, skip_special_tokens=True)

    answers = {}
    for name in ("tiny", "ad", "tiny"):  # back to the base after the adapter
        r = client.post("/v1/chat/completions", json={"model": name, "messages": msgs,
                                                       "max_tokens": 12, "temperature": 0})
        assert r.status_code == 200, r.text
        answers.setdefault(name, set()).add(r.json()["choices"][0]["message"]["content"])
    assert answers["tiny"] == {direct(None)}
    assert answers["ad"] == {direct(tiny["lora"])}
    assert answers["tiny"] != answers["ad"]  # the adapter changes the answer
    # and the f32 GGUF + GGUF LoRA decode what transformers + PEFT decode (scale, layout)
    builtin = TestClient(create_app(ServeSettings(
        models=[f"tiny={tiny['base']}", f"ad={tiny['lora']}"], dtype="float32",
        data_dir=tmp_path / "builtin", jobs_worker=False)))
    for name in ("tiny", "ad"):
        r = builtin.post("/v1/chat/completions", json={"model": name, "messages": msgs,
                                                        "max_tokens": 12, "temperature": 0})
        assert {r.json()["choices"][0]["message"]["content"]} == answers[name], name
    # streaming reassembles to the same text
    r = client.post("/v1/chat/completions", json={"model": "ad", "messages": msgs,
                                                   "max_tokens": 12, "temperature": 0,
                                                   "stream": True})
    from tests.unit.serve.serve_support import sse_events

    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in sse_events(r.text)
                   if e != "[DONE]" and e["choices"])
    assert {text} == answers["ad"]
    # a seeded sample is reproducible
    body = {"model": "tiny", "messages": msgs, "max_tokens": 8, "temperature": 1.0,
            "seed": 3}
    one = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    two = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    assert one == two
