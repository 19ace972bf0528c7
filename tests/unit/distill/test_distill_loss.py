"""Distillation divergences against values computed by hand from small distributions."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.train.objectives.distill import divergence, mixed_loss, soft_label_loss

P_T = [0.7, 0.2, 0.1]   # teacher
P_S = [0.4, 0.4, 0.2]   # student


def _logits(p: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor([p], dtype=torch.float64))


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_forward_kl_by_hand() -> None:
    got = divergence(_logits(P_S), _logits(P_T), "forward_kl")
    # 0.7 ln(0.7/0.4) + 0.2 ln(0.2/0.4) + 0.1 ln(0.1/0.2)
    assert float(got) == pytest.approx(0.7 * math.log(1.75) + 0.2 * math.log(0.5)
                                       + 0.1 * math.log(0.5), rel=1e-6)
    assert float(got) == pytest.approx(0.1837868, abs=1e-6)


def test_reverse_kl_by_hand() -> None:
    got = divergence(_logits(P_S), _logits(P_T), "reverse_kl")
    assert float(got) == pytest.approx(_kl(P_S, P_T), rel=1e-6)
    assert float(got) == pytest.approx(0.1920420, abs=1e-6)


@pytest.mark.parametrize("beta", [0.5, 0.2])
def test_generalised_jsd_by_hand(beta: float) -> None:
    m = [beta * t + (1 - beta) * s for t, s in zip(P_T, P_S)]
    want = beta * _kl(P_T, m) + (1 - beta) * _kl(P_S, m)
    got = divergence(_logits(P_S), _logits(P_T), "jsd", jsd_beta=beta)
    assert float(got) == pytest.approx(want, rel=1e-6)
    if beta == 0.5:  # the symmetric JSD is bounded by ln 2 and symmetric
        swapped = divergence(_logits(P_T), _logits(P_S), "jsd", jsd_beta=0.5)
        assert float(got) == pytest.approx(float(swapped), rel=1e-9) and float(got) < math.log(2)


def test_temperature_softens_and_scales_by_t_squared() -> None:
    s, t = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.5, 1.5, -0.5]])
    temp = 3.0
    ps = torch.softmax(s / temp, -1)[0].tolist()
    pt = torch.softmax(t / temp, -1)[0].tolist()
    got = divergence(s, t, "forward_kl", temperature=temp)
    assert float(got) == pytest.approx(temp ** 2 * _kl(pt, ps), rel=1e-5)


def test_identical_distributions_give_zero_and_rows_are_independent() -> None:
    x = torch.randn(5, 7)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        assert torch.allclose(divergence(x, x, kind), torch.zeros(5), atol=1e-6)
    two = divergence(torch.cat([_logits(P_S), _logits(P_T)]),
                     torch.cat([_logits(P_T), _logits(P_T)]), "forward_kl")
    assert two.shape == (2,) and float(two[1]) == pytest.approx(0.0, abs=1e-9)


def test_soft_labels_multi_label_uses_per_class_bernoullis() -> None:
    s, t = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, -1.0]])
    got = soft_label_loss(s, t, "forward_kl", 1.0, multi_label=True)
    sig = torch.sigmoid
    want = sum(_kl([float(sig(t[0, c])), 1 - float(sig(t[0, c]))],
                   [float(sig(s[0, c])), 1 - float(sig(s[0, c]))]) for c in range(2)) / 2
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_mixed_loss_weights() -> None:
    assert float(mixed_loss(torch.tensor(2.0), torch.tensor(4.0), 0.25)) == pytest.approx(3.5)


def test_gradient_of_forward_kl_is_student_minus_teacher() -> None:
    s = torch.tensor([[0.3, -0.2, 1.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0, -1.0]])
    divergence(s, t, "forward_kl").sum().backward()
    assert torch.allclose(s.grad, torch.softmax(s, -1).detach() - torch.softmax(t, -1),
                          atol=1e-6)
