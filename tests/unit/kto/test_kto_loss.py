"""The KTO loss equals TRL's KTOTrainer on a fixed batch (its model replaced by fixed per-token
log-probs, precomputed reference log-probs as TRL's precompute path); z₀ clamping and the
row weights by hand."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tunesmith.train.objectives.kto import kto_loss

# 5 rows: summed completion log-probs (policy, reference), of the mismatched rows, ratings
POL = torch.tensor([-12.0, -30.5, -7.25, -20.0, -9.0], dtype=torch.float64)
REF = torch.tensor([-13.0, -30.0, -8.0, -21.0, -8.5], dtype=torch.float64)
POL_KL = torch.tensor([-15.0, -28.0, -11.0, -19.0, -10.0], dtype=torch.float64)
REF_KL = torch.tensor([-16.5, -28.25, -11.5, -19.5, -10.5], dtype=torch.float64)
GOOD = torch.tensor([True, False, True, False, True])
COUNTS = [6, 11, 3, 9, 4]


def _trl_loss(beta: float, dw: float, uw: float, pol_kl: torch.Tensor = POL_KL) -> float:
    from trl.trainer.kto_trainer import KTOTrainer

    n, width = len(POL), max(COUNTS) + 1

    def per_token(totals: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(n, width - 1, dtype=torch.float64)
        for i, (total, k) in enumerate(zip(totals, COUNTS)):
            out[i, :k] = total / k  # sums to the sequence log-prob
        return out

    mask = torch.zeros(n, width, dtype=torch.long)
    for i, k in enumerate(COUNTS):
        mask[i, 1:k + 1] = 1
    inputs = {"input_ids": torch.ones(n, width, dtype=torch.long),
              "attention_mask": torch.ones(n, width, dtype=torch.long),
              "completion_mask": mask, "KL_input_ids": torch.ones(n, width, dtype=torch.long),
              "KL_attention_mask": torch.ones(n, width, dtype=torch.long),
              "KL_completion_mask": mask, "label": GOOD,
              "ref_logps": REF, "ref_KL_logps": REF_KL}

    def model(**kw: Any) -> SimpleNamespace:
        lp = per_token(pol_kl if kw["input_ids"] is inputs["KL_input_ids"] else POL)
        return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp),
                               mean_logits=torch.zeros_like(lp))

    acc = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda t: t)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=acc, aux_loss_enabled=False,
        precompute_ref_logps=True, calculate_KL=True, loss_type="kto", beta=beta,
        desirable_weight=dw, undesirable_weight=uw, _tp_size=1, _total_train_tokens=0,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    trainer._compute_kl_logps = lambda m, b: KTOTrainer._compute_kl_logps(trainer, m, b)
    return float(KTOTrainer._compute_loss(trainer, model, inputs, False))


@pytest.mark.parametrize(("beta", "dw", "uw"), [(0.1, 1.0, 1.0), (0.5, 1.0, 1.33),
                                                (2.0, 0.7, 1.0)])
def test_kto_equals_trl(beta: float, dw: float, uw: float) -> None:
    ours = kto_loss(POL, REF, GOOD, POL_KL, REF_KL, beta, dw, uw).losses.mean()
    assert abs(float(ours) - _trl_loss(beta, dw, uw)) < 1e-12


def test_kl_is_clamped_at_zero_like_trl() -> None:
    low = POL_KL - 5.0  # policy below reference on the mismatched rows: z0 = 0
    terms = kto_loss(POL, REF, GOOD, low, REF_KL, 0.3)
    assert float(terms.kl) == 0.0
    assert abs(float(terms.losses.mean()) - _trl_loss(0.3, 1.0, 1.0, low)) < 1e-12


def test_loss_by_hand() -> None:
    beta = 0.5
    terms = kto_loss(POL, REF, GOOD, POL_KL, REF_KL, beta, 2.0, 3.0)
    z0 = max(0.0, float((POL_KL - REF_KL).mean()))
    for i in range(len(POL)):
        r = float(POL[i] - REF[i])
        sig = 1 / (1 + math.exp(-beta * ((r - z0) if GOOD[i] else (z0 - r))))
        assert float(terms.losses[i]) == pytest.approx((2.0 if GOOD[i] else 3.0) * (1 - sig))
    sums = terms.sums()
    assert sums["count/chosen"] == 3 and sums["count/rejected"] == 2
    assert sums["rewards/chosen"] == pytest.approx(beta * (1.0 + 0.75 - 0.5))
