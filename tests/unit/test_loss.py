"""The fused LM-head + cross-entropy equals torch's cross-entropy on full logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tunesmith.data.templates import IGNORE
from tunesmith.train.loss import CausalLMLoss, linear_cross_entropy


def _inputs(n: int = 37, hidden: int = 24, vocab: int = 101, seed: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) * 0.3
    t = torch.randint(0, vocab, (n,), generator=g)
    return h, w, t


def _reference(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    h = h.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    logits = h @ w.T
    loss = F.cross_entropy(logits, t, reduction="sum")
    # a non-unit upstream gradient checks that backward scales by grad_loss
    (loss * 0.5).backward()
    correct = (logits.argmax(-1) == t).sum()
    return loss.detach(), correct, h.grad, w.grad


def _fused(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, chunk: int,
           dtype: torch.dtype = torch.float32, weight_grad: bool = True
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    h = h.clone().requires_grad_(True)
    w = w.clone().requires_grad_(weight_grad)
    loss, correct = linear_cross_entropy(h, w, t, chunk=chunk, dtype=dtype)
    (loss * 0.5).backward()
    return loss.detach(), correct, h.grad, w.grad


@pytest.mark.parametrize("chunk", [1024, 8, 5])
def test_fused_matches_cross_entropy_fp32(chunk: int) -> None:
    h, w, t = _inputs()
    ref_loss, ref_correct, ref_gh, ref_gw = _reference(h, w, t)
    loss, correct, gh, gw = _fused(h, w, t, chunk)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    assert int(correct) == int(ref_correct)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-4, atol=1e-5)
    assert gw is not None
    torch.testing.assert_close(gw, ref_gw, rtol=1e-4, atol=1e-5)


def test_fused_without_weight_grad_frozen_head() -> None:
    # LoRA: the head is frozen; only the hidden states need a gradient
    h, w, t = _inputs(seed=1)
    ref_loss, _, ref_gh, _ = _reference(h, w, t)
    loss, _, gh, gw = _fused(h, w, t, chunk=16, weight_grad=False)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-4, atol=1e-5)
    assert gw is None


def test_fused_bf16_head_within_tolerance() -> None:
    h, w, t = _inputs(n=64, hidden=32, vocab=257, seed=2)
    ref_loss, _, ref_gh, ref_gw = _reference(h, w, t)
    loss, _, gh, gw = _fused(h, w, t, chunk=16, dtype=torch.bfloat16)
    assert loss.dtype == torch.float32
    assert gh.dtype == torch.float32 and gw is not None and gw.dtype == torch.float32
    # bf16 keeps ~3 significant digits: compare relative to the size of each quantity
    assert abs(float(loss) - float(ref_loss)) / float(ref_loss) < 1e-2
    for got, ref in ((gh, ref_gh), (gw, ref_gw)):
        rel = float((got - ref).norm() / ref.norm())
        assert rel < 3e-2, rel
        cos = F.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
        assert float(cos) > 0.999


def test_no_grad_path_matches() -> None:
    h, w, t = _inputs(seed=3)
    ref_loss, ref_correct, _, _ = _reference(h, w, t)
    with torch.no_grad():
        loss, correct = linear_cross_entropy(h, w, t, chunk=7)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    assert int(correct) == int(ref_correct)


def test_causal_lm_loss_matches_transformers_loss(tiny_model_dir: Path) -> None:
    """Shift and mask alignment: the wrapper's summed loss / token count equals HF's mean loss
    on the same labels, and the parameter gradients agree."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.randint(3, model.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.clone()
    labels[:, :4] = IGNORE
    labels[1, 9:] = IGNORE

    wrapper = CausalLMLoss(model, chunk=64)
    assert wrapper.fused
    loss_sum, n, _ = wrapper(input_ids=ids, attention_mask=mask, labels=labels)
    (loss_sum / n).backward()
    ours = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    hf = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    hf.backward()
    assert int(n) == int((labels[:, 1:] != IGNORE).sum())
    torch.testing.assert_close(loss_sum / n, hf.detach(), rtol=1e-5, atol=1e-5)
    for k, p in model.named_parameters():
        torch.testing.assert_close(ours[k], p.grad, rtol=1e-4, atol=1e-6, msg=k)


def test_frozen_head_is_cast_once_and_again_after_it_changes(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    head = model.get_output_embeddings().weight
    head.requires_grad_(False)
    wrapper = CausalLMLoss(model, chunk=64, head_dtype=torch.bfloat16)
    ids = torch.randint(3, model.config.vocab_size, (2, 10))
    labels = ids.clone()
    labels[:, :3] = IGNORE

    def loss() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return wrapper(input_ids=ids, attention_mask=torch.ones_like(ids),
                           labels=labels)[0].detach()

    first = loss()
    cached = wrapper._cast_head[1]
    assert cached.dtype == torch.bfloat16 and torch.equal(cached, head.to(torch.bfloat16))
    assert torch.equal(loss(), first) and wrapper._cast_head[1] is cached  # reused
    with torch.no_grad():
        head.mul_(2.0)  # changed in place (a loaded checkpoint, an unfrozen step)
    changed = loss()
    assert wrapper._cast_head[1] is not cached and not torch.equal(changed, first)
    assert torch.equal(wrapper._cast_head[1], head.to(torch.bfloat16))
    head.requires_grad_(True)  # a trained head is never served from the cache
    assert wrapper._head_weight(head) is head
