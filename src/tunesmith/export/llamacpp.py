"""Optional checks through llama.cpp (``llama-cpp-python``; not a dependency of tunesmith).

``pip install llama-cpp-python`` builds llama.cpp from source (tens of minutes on a small
machine); when it is installed, GGUF exports also report llama.cpp's generation speed and
tests can chat with the file through the real runtime.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunesmith.export.measure import SPEED_PROMPTS
from tunesmith.inference.generate import render_prompt


def available() -> bool:
    try:
        # deferred: may be missing: checked here
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def load(path: Path, n_ctx: int = 1024) -> Any:
    # deferred: torch is heavy and only this path needs it; optional (llama-cpp-python, optional)
    import torch
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=torch.get_num_threads(),
                 verbose=False, seed=0)


def chat(llm: Any, messages: list[dict[str, str]], max_tokens: int = 64) -> dict[str, Any]:
    """One greedy chat completion with the file's embedded chat template."""
    return llm.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                      temperature=0.0, top_k=1)


def tokens_per_s(path: Path, tok: Any, new_tokens: int = 32) -> dict[str, Any] | str:
    """llama.cpp's greedy generation speed on the same prompts as ``measure.speed``."""
    if not available():
        return "llama.cpp speed not measured (pip install llama-cpp-python to measure it)"
    # deferred: torch is heavy and only this path needs it
    import torch


    llm = load(path)
    prompts = [render_prompt(tok, p) for p in SPEED_PROMPTS]
    llm(prompts[0], max_tokens=2, temperature=0.0)
    produced, start = 0, time.perf_counter()
    for p in prompts:
        res = llm(p, max_tokens=new_tokens, temperature=0.0, top_k=1)
        produced += res["usage"]["completion_tokens"]
    elapsed = time.perf_counter() - start
    return {"value": round(produced / elapsed, 2), "unit": "tokens/s (llama.cpp)",
            "threads": torch.get_num_threads()}
