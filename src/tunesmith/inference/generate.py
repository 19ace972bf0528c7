"""Batched generation using the model's chat template (left padding, length-sorted batches).

``generate`` returns text; ``sample_ids`` is the same decode path for prompts that are
already token ids and returns the new token ids, ``n`` samples per prompt (GRPO's rollouts:
the KV cache of ``model.generate``, the prompts left-padded in one batch).
"""

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


def render_prompt(tok: Any, prompt: Prompt, system: str | None = None,
                  template_kwargs: dict[str, Any] | None = None) -> str:
    """Chat prompts go through the chat template; plain strings too when there is one.
    ``template_kwargs`` override the template's switches (a request's chat_template_kwargs)."""
    if isinstance(prompt, str):
        if not getattr(tok, "chat_template", None):
            return prompt
        prompt = [{"role": "user", "content": prompt}]
    msgs = [{"role": m["role"], "content": m["content"]} for m in prompt]
    if system and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}] + msgs
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                   **(template_kwargs or {}))


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
            with torch.inference_mode():
                ids = model.generate(**enc, **decode_kwargs(tok, settings, eos))
            new = ids[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                out[i] = tok.decode(row, skip_special_tokens=True).strip()
    finally:
        tok.padding_side = side
    return out


def decode_kwargs(tok: Any, settings: GenerationSettings, eos: list[int]) -> dict[str, Any]:
    """``model.generate`` settings: sampling when ``temperature`` > 0, else greedy."""
    kwargs: dict[str, Any] = dict(max_new_tokens=settings.max_new_tokens,
                                  pad_token_id=tok.pad_token_id, eos_token_id=eos)
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def sample_ids(model: Any, tok: Any, prompts: list[list[int]], settings: GenerationSettings,
               n: int = 1) -> list[list[int]]:
    """``n`` completions (new token ids, cut after the first EOS, which is kept) of each
    prompt, prompt-major: ``out[i * n + j]`` is sample j of prompt i. The model is put in
    eval mode with the KV cache on for the call and restored after."""
    device = next(model.parameters()).device
    eos = eos_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every prompt ends where decoding starts
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 num_return_sequences=n, use_cache=True,
                                 **{**decode_kwargs(tok, settings, eos), "top_k": 0})
    finally:
        model.train(was_training)
    stops = set(eos)
    result = []
    for row in out[:, width:].tolist():
        end = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
        result.append(row[:end])
    return result


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
