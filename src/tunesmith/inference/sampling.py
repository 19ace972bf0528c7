"""Drawing the next token from logits: greedy, or temperature + nucleus (top-p) sampling
with a generator of the caller's own (the serve scheduler's requests, GRPO's rollouts)."""

from __future__ import annotations

import torch


def make_generator(seed: int | None) -> torch.Generator:
    """A request's own sampling generator: seeded by the request, else from the OS."""
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(int(seed))
    else:
        gen.seed()
    return gen


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator) -> torch.Tensor:
    """Greedy at temperature 0, else temperature + nucleus (top-p) sampling; [n, vocab] → [n].

    A temperature so small that ``logits / temperature`` overflows (1e-300 is in range) is
    greedy too, its limit: the softmax of an infinite logit is not a distribution."""
    if temperature <= 0:
        return logits.argmax(-1)
    scaled = logits / temperature
    if not torch.isfinite(scaled.amax(-1)).all():
        return logits.argmax(-1)
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always the most likely token,
        # also when top_p is below float32's smallest number and compares as 0)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        drop[..., 0] = False
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
