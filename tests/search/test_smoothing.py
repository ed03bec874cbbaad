"""SDARTS pieces: the eps schedule, RS noise, ADV PGD, and the Hessian power iteration against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasir.search.smoothing import adversarial, epsilon, hessian_max_eigenvalue, random_smoothing


def test_epsilon_rises_linearly_from_003_to_03_over_the_epochs():
    assert epsilon(0, 50) == pytest.approx(0.03)
    assert epsilon(49, 50) == pytest.approx(0.3)
    assert epsilon(10, 11) - epsilon(9, 11) == pytest.approx(0.027)  # (0.3 - 0.03) / 10 per epoch
    assert [epsilon(t, 4, start=0.0, end=0.3) for t in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert epsilon(0, 1) == pytest.approx(0.03) and epsilon(99, 50) == pytest.approx(0.3)


def test_random_smoothing_noise_is_uniform_in_the_ball_fresh_and_seeded():
    w = torch.softmax(torch.randn(14, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    g = torch.Generator().manual_seed(1)
    samples = torch.stack([random_smoothing(w, 0.2, g) - w for _ in range(500)])
    assert samples.abs().max() <= 0.2 + 1e-7
    # Uniform[-0.2, 0.2]: mean 0, variance 0.2^2 / 3, and both ends of the interval are reached.
    assert samples.mean().item() == pytest.approx(0.0, abs=3e-3)
    assert samples.var().item() == pytest.approx(0.04 / 3, rel=0.03)
    assert samples.max() > 0.199 and samples.min() < -0.199
    assert not torch.equal(samples[0], samples[1])
    again = random_smoothing(w, 0.2, torch.Generator().manual_seed(1)) - w
    assert torch.equal(again, samples[0])


def test_adversarial_reaches_the_worst_corner_of_a_linear_loss():
    # L = c . (A + delta) is maximised over the L_inf ball at delta = eps * sign(c). From any start in
    # the ball, 7 sign steps of 2 eps / 7 reach it.
    c = torch.tensor([[1.0, -2.0, 0.5], [-0.1, 3.0, -4.0]])
    A = torch.softmax(torch.zeros(2, 3), dim=-1)
    for seed in range(5):
        out = adversarial(A, lambda a: (c * a).sum(), eps=0.1, generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(out - A, 0.1 * c.sign())


def test_adversarial_stays_in_the_ball_raises_the_loss_and_handles_cell_kinds():
    g = torch.Generator().manual_seed(0)
    A = {
        "normal": torch.softmax(torch.randn(14, 7, generator=g), -1),
        "reduce": torch.softmax(torch.randn(14, 7, generator=g), -1),
    }
    t = {k: torch.randn(14, 7, generator=g) for k in A}

    def loss(a):  # a smooth, non-linear loss coupling the two kinds
        return sum(((a[k] - t[k]) ** 2).sum() for k in a) + (a["normal"] * a["reduce"]).sum() ** 2

    out = adversarial(A, loss, eps=0.05, steps=7, generator=g)
    assert set(out) == {"normal", "reduce"}
    for k in A:
        assert (out[k] - A[k]).abs().max() <= 0.05 + 1e-7
    assert loss(out) > loss(A)
    one = adversarial(A, loss, eps=0.05, steps=1, random_start=False)
    assert loss(one) > loss(A)


def test_adversarial_leaves_network_gradients_alone():
    w = torch.nn.Parameter(torch.tensor([2.0, -1.0]))
    A = torch.tensor([0.5, 0.5])
    adversarial(A, lambda a: (w * a).sum() ** 2, eps=0.1)
    assert w.grad is None


def quadratic(A: np.ndarray, seed: int = 0):
    x = torch.tensor(np.random.default_rng(seed).normal(size=A.shape[0]), requires_grad=True)
    At = torch.tensor(A)
    return (lambda: 0.5 * x @ At @ x), [x]


def dominant(A: np.ndarray) -> float:
    ev = np.linalg.eigvalsh(A)
    return float(ev[np.argmax(np.abs(ev))])


def test_hessian_eigenvalue_of_a_diagonal_quadratic():
    A = np.diag([1.0, 4.0, -0.5, 2.0])
    fn, params = quadratic(A)
    assert hessian_max_eigenvalue(
        fn, params, iters=60, tol=1e-10, generator=torch.Generator().manual_seed(0)
    ) == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize("eigs", [[5.0, 2.0, -1.0, 0.5, 0.1], [-6.0, 3.0, 1.0, 0.2]])
def test_hessian_eigenvalue_of_a_rotated_quadratic_matches_numpy(eigs):
    rng = np.random.default_rng(len(eigs))
    Q, _ = np.linalg.qr(rng.normal(size=(len(eigs), len(eigs))))
    A = Q @ np.diag(eigs) @ Q.T  # symmetric, not diagonal
    assert np.abs(A - np.diag(np.diag(A))).max() > 0.1
    fn, params = quadratic(A)
    got = hessian_max_eigenvalue(fn, params, iters=20, tol=1e-8, generator=torch.Generator().manual_seed(0))
    assert got == pytest.approx(dominant(A), rel=1e-4)


def test_hessian_eigenvalue_of_a_softmax_mixed_loss_over_two_parameter_tensors():
    # A DARTS-like loss in alpha: a mixed op with softmax weights, a cross-entropy head.
    g = torch.Generator().manual_seed(3)
    outs = torch.randn(3, 5, 4, dtype=torch.float64, generator=g)  # 3 ops, 5 samples, 4 classes
    y = torch.tensor([0, 1, 2, 3, 1])
    a1 = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    a2 = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)

    def loss_of(x1, x2):
        logits = (
            torch.einsum("o,onc->nc", torch.softmax(x1, 0), outs) * 3
            + torch.einsum("o,onc->nc", torch.softmax(x2, 0), outs) ** 2
        )
        return torch.nn.functional.cross_entropy(logits, y)

    H = torch.autograd.functional.hessian(lambda z: loss_of(z[:3], z[3:]), torch.cat([a1, a2]).detach()).numpy()
    want = dominant((H + H.T) / 2)
    got = hessian_max_eigenvalue(
        lambda: loss_of(a1, a2), [a1, a2], iters=200, tol=1e-12, generator=torch.Generator().manual_seed(0)
    )
    assert got == pytest.approx(want, rel=1e-4)
