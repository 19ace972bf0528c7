"""ORPO and SimPO equal TRL's losses on a fixed batch (TRL's own loss functions called with
the same mean log-probabilities and NLL, composed as its get_batch_loss_metrics does)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tunesmith.train.objectives.preference_free import log1mexp, orpo_loss, simpo_loss

# mean response log-probabilities of 4 pairs and the batch's chosen NLL
C = torch.tensor([-1.2, -0.05, -2.5, -0.9], dtype=torch.float64)
R = torch.tensor([-1.4, -0.8, -2.0, -3.1], dtype=torch.float64)
NLL = torch.tensor(1.1625, dtype=torch.float64)
ACC = SimpleNamespace(device=torch.device("cpu"))


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_equals_trl(beta: float) -> None:
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    trl_self = SimpleNamespace(beta=beta, accelerator=ACC)
    losses, chosen, rejected, _, _ = ORPOTrainer.odds_ratio_loss(trl_self, C, R)
    want = float(NLL - losses.mean())  # ORPOTrainer.get_batch_loss_metrics
    ours = orpo_loss(C, R, NLL, beta)
    # TRL computes in float32 (policy log-probs are float32 in training too)
    assert abs(float(ours.losses.mean()) - want) < 1e-6
    assert torch.allclose(ours.chosen_rewards.float(), chosen)
    assert torch.allclose(ours.rejected_rewards.float(), rejected)


@pytest.mark.parametrize(("beta", "gamma", "eps", "alpha"), [(2.0, 1.0, 0.0, 0.0),
                                                             (2.5, 0.5, 0.1, 0.0),
                                                             (1.0, 1.4, 0.0, 0.3)])
def test_simpo_equals_trl(beta: float, gamma: float, eps: float, alpha: float) -> None:
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    trl_self = SimpleNamespace(beta=beta, simpo_gamma=gamma, label_smoothing=eps, alpha=0.0,
                               loss_type="simpo", accelerator=ACC)
    losses, chosen, _ = CPOTrainer.cpo_loss(trl_self, C, R)
    want = float(losses.mean() + alpha * NLL)  # CPOTrainer.get_batch_loss_metrics
    ours = simpo_loss(C, R, beta, gamma, eps, NLL, alpha)
    assert abs(float(ours.losses.mean()) - want) < 1e-12
    assert torch.allclose(ours.chosen_rewards, chosen)


def test_log1mexp_on_both_branches() -> None:
    x = torch.tensor([-1e-8, -0.5, -0.7, -5.0, -40.0], dtype=torch.float64)
    want = torch.log(1 - torch.exp(x.to(torch.float64)))
    assert torch.allclose(log1mexp(x), want, rtol=1e-6)


def test_simpo_margin_by_hand() -> None:
    # equal mean log-probs: the loss is -log σ(-γ), the margin still to be won
    t = simpo_loss(C, C, 2.0, 1.0)
    assert torch.allclose(t.losses, torch.full_like(C, -float(torch.log(torch.sigmoid(
        torch.tensor(-1.0, dtype=torch.float64))))))
