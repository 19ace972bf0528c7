"""The DPO/IPO losses equal TRL's DPOTrainer on fixed log-probabilities; label smoothing
and logged rewards against hand-computed values; per-sequence log-probs against logits."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tunesmith.train.objectives.dpo import dpo_loss, sequence_logps

# a fixed batch of 4 pairs: summed response log-probs, reference log-probs, token counts
PC = torch.tensor([-12.0, -30.5, -7.25, -20.0], dtype=torch.float64)
PR = torch.tensor([-14.0, -29.0, -9.0, -19.5], dtype=torch.float64)
RC = torch.tensor([-13.0, -30.0, -8.0, -21.0], dtype=torch.float64)
RR = torch.tensor([-13.5, -30.0, -8.5, -19.0], dtype=torch.float64)
NC = torch.tensor([6, 11, 3, 9])
NR = torch.tensor([7, 10, 5, 8])


def _trl_loss(loss_type: str, beta: float, label_smoothing: float = 0.0) -> float:
    """TRL 1.16 ``DPOTrainer._compute_loss`` on the same batch, its model replaced by fixed
    per-token log-probs (precomputed reference log-probs, as TRL's precompute path)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    n = len(PC)
    width = int(max(NC.max(), NR.max())) + 1
    completion = torch.zeros(2 * n, width, dtype=torch.long)
    per_token = torch.zeros(2 * n, width - 1, dtype=torch.float64)
    for i, (total, count) in enumerate(zip(torch.cat([PC, PR]), torch.cat([NC, NR]))):
        k = int(count)
        completion[i, 1:k + 1] = 1
        per_token[i, :k] = total / k  # sums to the sequence log-prob
    inputs = {"input_ids": torch.ones(2 * n, width, dtype=torch.long),
              "attention_mask": torch.ones(2 * n, width, dtype=torch.long),
              "completion_mask": completion, "ref_chosen_logps": RC, "ref_rejected_logps": RR}
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token),
                              is_top1=torch.zeros_like(per_token, dtype=torch.bool))

    def model(**_: Any) -> SimpleNamespace:
        return outputs

    acc = SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t,
                          gather_for_metrics=lambda t: t, unwrap_model=lambda m: m)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=acc, aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
        use_weighting=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1, ref_model=None)
    loss = DPOTrainer._compute_loss(trainer, model, inputs, False)
    return float(loss)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_sigmoid_equals_trl(beta: float) -> None:
    ours = dpo_loss(PC, PR, RC, RR, beta, "sigmoid").losses.mean()
    assert float(ours) == pytest.approx(_trl_loss("sigmoid", beta), rel=1e-9)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_ipo_equals_trl(beta: float) -> None:
    ours = dpo_loss(PC, PR, RC, RR, beta, "ipo", chosen_tokens=NC, rejected_tokens=NR)
    assert float(ours.losses.mean()) == pytest.approx(_trl_loss("ipo", beta), rel=1e-9)


def test_label_smoothing_is_conservative_dpo_by_hand() -> None:
    beta, eps = 0.2, 0.1
    terms = dpo_loss(PC, PR, RC, RR, beta, "sigmoid", label_smoothing=eps)
    for i in range(len(PC)):
        delta = float((PC[i] - RC[i]) - (PR[i] - RR[i]))
        sig = 1 / (1 + math.exp(-beta * delta))
        expected = -(1 - eps) * math.log(sig) - eps * math.log(1 - sig)
        assert float(terms.losses[i]) == pytest.approx(expected, rel=1e-12)


def test_rewards_accuracy_and_margin() -> None:
    terms = dpo_loss(PC, PR, RC, RR, 0.5, "sigmoid")
    assert terms.chosen_rewards.tolist() == pytest.approx([0.5, -0.25, 0.375, 0.5])
    assert terms.rejected_rewards.tolist() == pytest.approx([-0.25, 0.5, -0.25, -0.25])
    sums = terms.sums()
    assert sums["rewards/accuracy"] == 3.0  # pair 1 prefers the rejected response
    assert sums["rewards/margin"] == pytest.approx(0.75 - 0.75 + 0.625 + 0.75)
    tie = dpo_loss(RC, RR, RC, RR, 0.5, "sigmoid")  # policy == reference: every pair ties
    assert tie.sums()["rewards/accuracy"] == pytest.approx(2.0)  # ties count half


def test_gradient_matches_closed_form() -> None:
    pc = PC.clone().requires_grad_(True)
    beta = 0.3
    dpo_loss(pc, PR, RC, RR, beta, "sigmoid").losses.sum().backward()
    delta = (PC - RC) - (PR - RR)
    assert torch.allclose(pc.grad, -beta * torch.sigmoid(-beta * delta))


def test_sequence_logps_match_full_logits(tiny_model_dir: Any) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    ids = torch.tensor([[5, 9, 14, 22, 31, 7, 0, 0], [3, 4, 5, 6, 7, 8, 9, 10]])
    mask = (torch.arange(8) < torch.tensor([[6], [8]])).long()
    labels = torch.full_like(ids, -100)
    labels[0, 3:6] = ids[0, 3:6]
    labels[1, 2:8] = ids[1, 2:8]
    got, counts = sequence_logps(model, ids, mask, labels, chunk=2)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    want = [sum(float(logp[b, t - 1, ids[b, t]]) for t in range(8) if labels[b, t] != -100)
            for b in range(2)]
    assert counts.tolist() == [3, 6]
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    got.sum().backward()  # checkpointed chunks give gradients
    assert model.model.embed_tokens.weight.grad is not None


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_by_hand(beta: float) -> None:
    """IPO: (Δ̄ − 1/(2β))² per pair, Δ̄ the policy-minus-reference log-ratio difference
    averaged per response token (Azar et al., 2023, as TRL computes it)."""
    ours = dpo_loss(PC, PR, RC, RR, beta, "ipo", chosen_tokens=NC, rejected_tokens=NR)
    for i in range(len(PC)):
        delta = (float(PC[i]) - float(RC[i])) / int(NC[i]) \
            - (float(PR[i]) - float(RR[i])) / int(NR[i])
        assert float(ours.losses[i]) == pytest.approx((delta - 1 / (2 * beta)) ** 2, rel=1e-12)
