"""GRPO's group-normalised advantages and clipped loss on hand-made numbers."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.train.objectives.grpo import group_advantages, grpo_token_loss


def test_advantages_are_normalised_within_each_group() -> None:
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    a = group_advantages(r)
    std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    assert a[0].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 1 +
                                          [-0.5 / (std + 1e-4), 0.5 / (std + 1e-4)])
    assert a[1].tolist() == [0.0] * 4  # a group with one reward teaches nothing
    assert group_advantages(r, scale=False)[0].tolist() == [0.5, -0.5, -0.5, 0.5]


def test_clipping_by_hand() -> None:
    old = torch.zeros(4)
    logps = torch.log(torch.tensor([1.5, 0.5, 1.1, 1.5]))  # ratios
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    t = grpo_token_loss(logps, old, adv, None, 0.0, 0.2)
    # A>0, ρ=1.5: clipped to 1.2; A<0, ρ=0.5: clipped to 0.8; ρ=1.1 inside; A<0, ρ=1.5: min
    # takes the unclipped -1.5 (pessimistic), clip inactive
    assert t.loss.tolist() == pytest.approx([-1.2, 0.8, -1.1, 1.5])
    assert t.clipped.tolist() == [True, True, False, False]
    high = grpo_token_loss(logps, old, adv, None, 0.0, 0.2, epsilon_high=0.6)
    assert high.loss[0].item() == pytest.approx(-1.5) and not high.clipped[0]


def test_kl_is_the_k3_estimator() -> None:
    logps = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -1.0])
    t = grpo_token_loss(logps, logps.detach(), torch.zeros(2), ref, 0.1, 0.2)
    want = [math.exp(d) - d - 1 for d in (-0.5, 1.0)]
    assert t.kl.tolist() == pytest.approx(want)
    assert t.loss.tolist() == pytest.approx([0.1 * w for w in want])


def test_gradient_with_ratio_one_is_the_policy_gradient() -> None:
    logps = torch.tensor([-1.0, -2.0], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    grpo_token_loss(logps, logps.detach(), adv, None, 0.0, 0.2).loss.sum().backward()
    assert logps.grad.tolist() == pytest.approx([-2.0, 1.0])
