"""Batched generation using the model's chat template (left padding, length-sorted batches)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

Prompt = str | list[dict[str, str]]


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    system: str | None = None
    batch_size: int = 8


def render_prompt(tok: Any, prompt: Prompt, system: str | None = None) -> str:
    """Chat prompts go through the chat template; plain strings too when there is one."""
    if isinstance(prompt, str):
        if not getattr(tok, "chat_template", None):
            return prompt
        prompt = [{"role": "user", "content": prompt}]
    msgs = [{"role": m["role"], "content": m["content"]} for m in prompt]
    if system and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}] + msgs
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def generate(model: Any, tok: Any, prompts: list[Prompt], settings: GenerationSettings
             ) -> list[str]:
    """Generate one completion per prompt (order preserved)."""
    texts = [render_prompt(tok, p, settings.system) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: list[str] = [""] * len(texts)
    side = tok.padding_side
    tok.padding_side = "left"
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    device = next(model.parameters()).device
    eos = eos_ids(model, tok)
    try:
        for start in range(0, len(order), settings.batch_size):
            idx = order[start:start + settings.batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True,
                      add_special_tokens=not getattr(tok, "chat_template", None))
            enc = {k: v.to(device) for k, v in enc.items()}
            kwargs: dict[str, Any] = dict(max_new_tokens=settings.max_new_tokens,
                                          pad_token_id=tok.pad_token_id, eos_token_id=eos)
            if settings.temperature > 0:
                kwargs.update(do_sample=True, temperature=settings.temperature,
                              top_p=settings.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                ids = model.generate(**enc, **kwargs)
            new = ids[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                out[i] = tok.decode(row, skip_special_tokens=True).strip()
    finally:
        tok.padding_side = side
    return out


def eos_ids(model: Any, tok: Any) -> list[int]:
    ids = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(gen_eos)
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return sorted(ids)
