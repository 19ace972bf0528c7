"""``--engine llamacpp``: generation through llama-cpp-python on the run's GGUF, in process.

For CPU users who want llama.cpp's kernels behind tunesmith's API. A served model is
exported to GGUF once (``export/gguf.py``'s writer, ``--gguf-quant``, default ``q8_0``) and
cached under ``<cache_root>/serve-gguf/<key>/``, the key hashing the source directory's
path, file sizes and modification times, so a retrained run is exported again and an
unchanged one loads at once. A LoRA run is **not** merged: its base is exported once and the
adapter is written as a llama.cpp GGUF LoRA adapter (serve/api/gguf_adapter.py) applied at
run time, so the adapters over one base share its weights in memory, as in the built-in
engine.

Prompts are rendered and tokenized with the run's own tokenizer exactly as the built-in
engine does (routes.py), and the token ids go to llama.cpp as they are; the tokens it
generates are turned into text by the same :class:`~tunesmith.serve.api.decode.ChoiceText`
(stop strings, held-back text, finish reasons, the model's EOS ids), so tool-call parsing,
streaming, records, feedback and monitoring are unchanged. Sampling: ``temperature`` 0 is
llama.cpp's greedy sampler; otherwise temperature then top-p, no top-k/min-p/penalties
(the built-in engine's settings), seeded per request (choice ``i`` of ``n`` uses
``seed + i``).

llama.cpp decodes one sequence at a time here: the requests of one base take its lock in
turn (``--max-queue`` waiting ones at most, then 429 with ``Retry-After``), and a request
for another adapter than the last one resets the prompt cache (its keys and values were
computed with the other adapter).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.inference.generate import eos_ids
from tunesmith.io import atomic_directory, cache_root
from tunesmith.serve.api.decode import (
    ChoiceText,
    DecodeParams,
    DecodeResult,
    Delta,
    collect_streams,
    end_ids,
)
from tunesmith.serve.api.scheduler import QueueFull

log = logging.getLogger("tunesmith.serve")

INSTALL = ('CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python (it compiles '
           "llama.cpp from source: see docs/serve.md for the time it takes)")
QUANTS = ("f32", "f16", "bf16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1")
MAX_CTX = 8192  # KV cache allocated per base (llama.cpp reserves it up front)
FORMAT = 1  # bump when the cached files' layout changes


def installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def check_installed() -> None:
    if not installed():
        raise ModelError("--engine llamacpp needs llama-cpp-python", where="--engine",
                         fix=f"{INSTALL}, or use --engine builtin")


def _cache_key(*parts: Any, files: Path | None = None) -> str:
    """A hash of ``parts`` and of the files of ``files`` (names, sizes, mtimes)."""
    h = hashlib.sha256(json.dumps([FORMAT, *map(str, parts)]).encode())
    if files is not None:
        for f in sorted(files.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(files)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def cached_gguf(model_dir: Path, quant: str) -> Path:
    """The GGUF of the full model in ``model_dir``, written on first use, then reused."""
    # deferred: the exporter loads torch and gguf; only this engine needs them
    from tunesmith.export.gguf import check_supported, write_gguf
    from tunesmith.export.merge import load_full
    from tunesmith.export.source import resolve_source

    model_dir = model_dir.resolve()
    out = cache_root() / "serve-gguf" / _cache_key(model_dir, quant, files=model_dir)
    path = out / f"model-{quant}.gguf"
    if path.exists():
        return path
    source = resolve_source(str(model_dir))
    check_supported(source)
    log.info("exporting %s to GGUF %s for --engine llamacpp (once; cached in %s)", model_dir,
             quant, out)
    model, tok = load_full(source)
    with atomic_directory(out) as tmp:
        write_gguf(model, tok, tmp / path.name, quant, name=model_dir.name)
    return path


def cached_lora_gguf(adapter_dir: Path, base_config: Any) -> Path:
    """The llama.cpp LoRA adapter file of the PEFT adapter in ``adapter_dir``."""
    # deferred: only this engine writes adapters
    from tunesmith.serve.api.gguf_adapter import write_lora_gguf

    adapter_dir = adapter_dir.resolve()
    out = cache_root() / "serve-gguf" / _cache_key(adapter_dir, "lora", files=adapter_dir)
    path = out / "adapter-lora.gguf"
    if not path.exists():
        with atomic_directory(out) as tmp:
            write_lora_gguf(adapter_dir, base_config, tmp / path.name)
    return path


_PATCH = threading.Lock()


@contextlib.contextmanager
def _no_extra_buffer_types() -> Iterator[None]:
    """Load weights without llama.cpp's extra CPU buffer types (AMX, repacked layouts)
    unless ``TUNESMITH_LLAMACPP_EXTRA_BUFTS=1``: on this project's machines a native build
    with AMX_INT8 segfaults on the first forward of a quantized (q8_0, q4_0) GGUF; f16/f32
    are unaffected. ``Llama`` does not take the flag, so its default is patched while it
    loads."""
    # deferred: optional (llama-cpp-python)
    import llama_cpp.llama as llama_module

    if os.environ.get("TUNESMITH_LLAMACPP_EXTRA_BUFTS") == "1":
        yield
        return
    lib = llama_module.llama_cpp
    with _PATCH:
        default = lib.llama_model_default_params

        def params() -> Any:
            p = default()
            p.use_extra_bufts = False
            return p

        lib.llama_model_default_params = params
        try:
            yield
        finally:
            lib.llama_model_default_params = default


class LlamaCppBase:
    """One base GGUF loaded in llama.cpp, the LoRA adapters loaded over it, and its lock."""

    def __init__(self, key: str, gguf: Path, n_ctx: int, max_queue: int) -> None:
        # deferred: optional (llama-cpp-python); torch only for its thread count
        import torch
        from llama_cpp import Llama

        self.key, self.gguf, self.n_ctx, self.max_queue = key, gguf, n_ctx, max_queue
        with _no_extra_buffer_types():
            self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx,
                             n_threads=torch.get_num_threads(), verbose=False)
        self.lock = threading.Lock()
        self.adapters: dict[str, Any] = {}  # adapter GGUF path → llama_adapter_lora_p
        self.current: str | None = None  # the adapter set on the context now
        self.waiting = 0
        self._count = threading.Lock()

    def load_adapter(self, path: Path) -> str:
        # deferred: optional (llama-cpp-python)
        import llama_cpp

        key = str(path)
        with self.lock:
            if key not in self.adapters:
                ptr = llama_cpp.llama_adapter_lora_init(self.llm.model, key.encode())
                if not ptr:
                    raise ModelError("llama.cpp could not load the LoRA adapter", where=key,
                                     fix="serve it with --engine builtin and report this")
                self.adapters[key] = ptr
        return key

    def select(self, adapter: str | None) -> None:
        """Put ``adapter`` (None: the bare base) on the context; call under the lock."""
        if adapter == self.current:
            return
        # deferred: optional (llama-cpp-python)
        import llama_cpp

        ctx = self.llm.ctx
        if adapter is None:
            rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            ptrs = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.adapters[adapter])
            rc = llama_cpp.llama_set_adapters_lora(ctx, ptrs, 1, (ctypes.c_float * 1)(1.0))
        if rc:
            raise RuntimeError(f"llama.cpp could not set the LoRA adapter {adapter}")
        self.llm.reset()  # the cached prompt was computed with the other adapter
        self.current = adapter

    def check_capacity(self) -> None:
        if self.waiting >= self.max_queue:
            raise QueueFull(self.waiting)

    def waiting_delta(self, d: int) -> None:
        with self._count:
            self.waiting += d


@dataclass
class LlamaCppHandle:
    """A served causal LM decoded by llama.cpp: its base, adapter (None: the base itself),
    tokenizer (prompts and text, as the built-in engine) and EOS ids."""

    name: str
    source: str
    base: LlamaCppBase
    adapter: str | None
    tokenizer: Any
    context_length: int
    eos: frozenset[int]
    created: int = 0
    kind: str = "lm"

    def check_capacity(self) -> None:
        """429 now (before a stream starts) when the base's queue is full."""
        self.base.check_capacity()

    def stream(self, ids: list[int], params: DecodeParams, cancel: threading.Event,
               stats: dict[str, int]) -> Iterator[Delta]:
        """Decode ``params.n`` choices of one prompt, one after another; their deltas."""
        base = self.base
        stats["completion_tokens"] = 0
        base.check_capacity()
        base.waiting_delta(1)
        try:
            base.lock.acquire()
        finally:
            base.waiting_delta(-1)
        try:
            base.select(self.adapter)
            for i in range(params.n):
                if cancel.is_set():
                    return
                yield from self._choice(i, ids, params, cancel, stats)
        finally:
            base.lock.release()

    def _choice(self, index: int, ids: list[int], params: DecodeParams,
                cancel: threading.Event, stats: dict[str, int]) -> Iterator[Delta]:
        llm = self.base.llm
        seed = params.seed + index if params.seed is not None else secrets.randbits(31)
        llm.set_seed(seed & 0xFFFFFFFF)
        eos = end_ids(self.eos, params)
        text = ChoiceText(index, self.tokenizer, eos, params.stop)
        greedy = params.temperature <= 0
        tokens = llm.generate(ids, temp=0.0 if greedy else params.temperature,
                              top_p=1.0 if greedy else params.top_p, top_k=0, min_p=0.0,
                              typical_p=1.0, repeat_penalty=1.0)
        count = 0
        try:
            for token in tokens:
                if cancel.is_set():
                    return
                token = int(token)
                count += 1
                if token not in eos:
                    stats["completion_tokens"] += 1
                delta = text.push(token)
                if delta is not None:
                    yield delta
                if text.finish:
                    return
                if count >= params.max_tokens:
                    yield text.length()
                    return
        finally:
            tokens.close()

    def generate(self, prompts: list[tuple[list[int], DecodeParams]]) -> list[DecodeResult]:
        return collect_streams(self.stream, prompts)


class LlamaCppEngine:
    """The bases loaded by the llamacpp engine (one per base GGUF), shared by adapters."""

    def __init__(self, quant: str, max_queue: int) -> None:
        check_installed()
        if quant not in QUANTS:
            raise ModelError("unknown --gguf-quant", where="--gguf-quant", got=quant,
                             fix=f"use one of {', '.join(QUANTS)}")
        self.quant, self.max_queue = quant, max_queue
        self.bases: dict[str, LlamaCppBase] = {}
        self.lock = threading.RLock()

    def handle(self, name: str, src: Path | str, created: int) -> LlamaCppHandle:
        """Load ``src`` (a model or LoRA adapter directory) and serve it as ``name``."""
        # deferred: transformers' readers; only this engine needs them here
        from transformers import AutoConfig, GenerationConfig

        from tunesmith.models.artifacts import adapter_base
        from tunesmith.models.load import load_tokenizer
        from tunesmith.models.registry import resolve_model_dir

        if not isinstance(src, Path):
            raise ModelError("--engine llamacpp serves models on disk", where=name, got=src,
                             fix="download the model first (or pass a run directory)")
        is_adapter = (src / "adapter_config.json").exists()
        weights = Path(str(resolve_model_dir(adapter_base(src)))) if is_adapter else src
        cfg = AutoConfig.from_pretrained(str(weights))
        try:
            tok = load_tokenizer(src)
        except ModelError:  # an adapter saved without tokenizer files uses the base's
            tok = load_tokenizer(weights)
        try:
            gen_cfg = GenerationConfig.from_pretrained(str(weights))
        except OSError:  # no generation_config.json: the tokenizer's EOS only
            gen_cfg = None
        eos = frozenset(eos_ids(SimpleNamespace(generation_config=gen_cfg), tok))
        ctx = min(MAX_CTX, next((v for k in ("max_position_embeddings", "n_positions")
                                 if isinstance(v := getattr(cfg, k, None), int) and v > 0),
                                2048))
        with self.lock:
            key = str(weights.resolve())
            base = self.bases.get(key)
            if base is None:
                base = LlamaCppBase(key, cached_gguf(weights, self.quant), ctx, self.max_queue)
                self.bases[key] = base
            adapter = base.load_adapter(cached_lora_gguf(src, cfg)) if is_adapter else None
        return LlamaCppHandle(name, str(src), base, adapter, tok, ctx, eos, created)

    def release(self, old: LlamaCppHandle, handles: Any) -> None:
        """Drop ``old``'s base when no served name uses it any more."""
        with self.lock:
            if not any(getattr(h, "base", None) is old.base for h in handles):
                self.bases.pop(old.base.key, None)
