"""Batched generation using the model's chat template (left padding, length-sorted batches).

``generate`` returns text; ``sample_ids`` returns the new token ids of ``n`` samples per
prompt of token ids (GRPO's rollouts). For Llama-family models ``sample_ids`` decodes with
the compact decoder of the serve engine (:mod:`tunesmith.inference.fast_decode`: each prompt
prefilled once, its ``n`` rows decoded together with every other prompt's, finished rows
leaving the batch) and draws with a generator seeded by ``settings.seed``; other models go
through ``model.generate`` with the prompts left-padded in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.inference.fast_decode import KVRows, LlamaDecoder, decoder_for
from tunesmith.inference.sampling import make_generator, pick_tokens

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
    eos = eos_ids(model, tok)
    fast = _fast_sampler(model)
    if fast is not None:
        return _sample_fast(model, *fast, prompts, settings, n, set(eos))
    device = next(model.parameters()).device
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


def _fast_sampler(model: Any) -> tuple[LlamaDecoder, str | None] | None:
    """(the compact decoder, the adapter every row uses) when it can run ``model`` now."""
    dec = decoder_for(model)
    if dec is None:
        return None
    if not hasattr(model, "peft_config"):
        return dec, None
    active = list(getattr(model.base_model, "active_adapters", []) or [])
    return (dec, active[0]) if len(active) == 1 else None


def _sample_fast(model: Any, dec: LlamaDecoder, adapter: str | None,
                 prompts: list[list[int]], settings: GenerationSettings, n: int,
                 eos: set[int]) -> list[list[int]]:
    gen = make_generator(settings.seed)
    was_training = model.training
    model.eval()  # LoRA dropout off, as in model.generate
    # in the weights' own dtypes (a caller's autocast would re-cast every product): a bf16
    # frozen base stays bf16, float32 weights decode in float32
    try:
        with torch.autocast(dec.device.type, enabled=False):
            return _decode_rows(dec, adapter, prompts, settings, n, eos, gen)
    finally:
        model.train(was_training)


def _decode_rows(dec: LlamaDecoder, adapter: str | None, prompts: list[list[int]],
                 settings: GenerationSettings, n: int, eos: set[int], gen: torch.Generator
                 ) -> list[list[int]]:
    """Greedy or sampled rows: each prompt prefilled once and its ``n`` rows decoded with
    every other prompt's; a row that draws an EOS leaves the batch (its cache with it)."""
    batch: KVRows | None = None
    first = []
    for p in prompts:
        kv = dec.new_cache(1, cap=len(p) + settings.max_new_tokens)
        first.append(dec.forward(torch.tensor([p], dtype=torch.long), kv, [adapter]
                                 ).expand(n, -1))
        rows = kv.repeat(n)
        if batch is None:
            batch = rows
        else:
            batch.extend(rows)
    assert batch is not None
    logits = torch.cat(first)
    out: list[list[int]] = [[] for _ in range(len(prompts) * n)]
    alive = list(range(len(out)))
    for step in range(settings.max_new_tokens):
        picked = pick_tokens(logits, settings.temperature, settings.top_p, gen).tolist()
        keep = []
        for j, (row, t) in enumerate(zip(alive, picked)):
            out[row].append(int(t))
            if t not in eos:
                keep.append(j)
        if not keep or step + 1 == settings.max_new_tokens:
            break
        batch.keep(keep)
        alive = [alive[j] for j in keep]
        tokens = torch.tensor([out[r][-1] for r in alive], dtype=torch.long).view(-1, 1)
        logits = dec.forward(tokens, batch, [adapter] * len(alive))
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
