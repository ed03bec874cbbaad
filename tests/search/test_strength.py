"""OStr-DARTS pieces against hand computations (ostr-darts Eq. 9-11, 17-18, Fig. 4b, Algorithm 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nasir.search.strength import EarlyStop, StrengthMeter, ostr_star, removal_importance


def step(alpha: torch.nn.Parameter, g: list[list[float]]) -> None:
    """An architecture step whose loss g . alpha has gradient exactly g."""
    alpha.grad = None
    (torch.tensor(g) * alpha).sum().backward()


def test_strength_is_the_mean_abs_gradient_over_the_last_b_steps():
    alpha = torch.nn.Parameter(torch.zeros(1, 2))
    meter = StrengthMeter(window=2)
    for g in ([[1.0, -4.0]], [[-3.0, 2.0]], [[5.0, -6.0]]):
        step(alpha, g)
        meter.record({"normal": alpha})
    # The window holds the last two steps: (|-3| + |5|) / 2, (|2| + |-6|) / 2. Abs before the mean (Eq. 11).
    assert meter.strength()["normal"].tolist() == [[4.0, 4.0]]
    assert len(meter) == 2


def test_strength_of_a_shared_alpha_sums_the_stacked_copies_inside_the_abs():
    # Two stacked cells share alpha (Eq. 10 sums over l = 1..L before |.|). Loss = c1.softmax(a) + c2.softmax(a).
    a = np.array([0.3, -0.2, 0.5])
    c1, c2 = np.array([1.0, -2.0, 0.5]), np.array([-3.0, 1.0, 2.0])
    p = np.exp(a) / np.exp(a).sum()
    jac = np.diag(p) - np.outer(p, p)  # d softmax / d alpha
    want = np.abs(jac.T @ (c1 + c2))
    alpha = torch.nn.Parameter(torch.tensor(a))
    w = torch.softmax(alpha, dim=0)
    (torch.tensor(c1) @ w + torch.tensor(c2) @ w).backward()
    meter = StrengthMeter(window=3)
    meter.record({"normal": alpha})
    assert meter.strength()["normal"].numpy() == pytest.approx(want)
    assert not np.allclose(want, np.abs(jac.T @ c1) + np.abs(jac.T @ c2))


def test_record_before_backward_is_an_error_and_state_round_trips():
    meter = StrengthMeter(window=2)
    with pytest.raises(ValueError, match="after backward"):
        meter.record({"normal": torch.nn.Parameter(torch.zeros(2, 2))})
    meter.record_grads({"normal": torch.tensor([[1.0, -2.0]]), "reduce": torch.tensor([[3.0, 0.0]])})
    meter.record_grads({"normal": torch.tensor([[3.0, 0.0]]), "reduce": torch.tensor([[1.0, 1.0]])})
    other = StrengthMeter(window=5)
    other.load_state_dict(meter.state_dict())
    other.record_grads({"normal": torch.tensor([[5.0, 4.0]]), "reduce": torch.tensor([[0.0, 0.0]])})
    assert other.strength()["normal"].tolist() == [[4.0, 2.0]]  # window 2 came back: (3 + 5)/2, (0 + 4)/2


def test_ostr_star_divides_by_the_softmax_weight():
    alpha = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)]])
    assert ostr_star(torch.tensor([[1.0, 1.0, 2.0]]), alpha)[0].tolist() == pytest.approx([2.0, 4.0, 8.0])


def test_ostr_star_equals_the_taylor_estimate_at_the_mixed_output():
    # Eq. 17-18: s* = |dL/do_bar . (o_o - o_bar)|, computed here from the op outputs by hand.
    rng = np.random.default_rng(0)
    outs = rng.normal(size=(4, 5))  # 4 ops, each a 5-vector
    a = rng.normal(size=4)
    target = rng.normal(size=5)
    p = np.exp(a) / np.exp(a).sum()
    o_bar = p @ outs
    dl_dobar = 2 * (o_bar - target)  # L = |o_bar - target|^2
    want = np.abs((outs - o_bar) @ dl_dobar)
    alpha = torch.nn.Parameter(torch.tensor(a))
    ((torch.softmax(alpha, 0) @ torch.tensor(outs) - torch.tensor(target)) ** 2).sum().backward()
    got = ostr_star(alpha.grad.abs()[None], alpha.detach()[None])[0]
    assert got.numpy() == pytest.approx(want)


class ToyMixed:
    """One cell kind; edge e outputs sum_o mask * softmax(alpha_e)_o * c_eo * x; prediction = sum of edges."""

    def __init__(self, alpha: np.ndarray, c: np.ndarray, x: np.ndarray, y: np.ndarray):
        self.alpha, self.c, self.x, self.y = (torch.tensor(v) for v in (alpha, c, x, y))
        self.mask = torch.ones_like(self.alpha)
        self.calls = 0

    def set_mask(self, masks):
        self.mask = masks["normal"].to(self.alpha)

    def loss(self):
        self.calls += 1
        w = torch.softmax(self.alpha, dim=-1) * self.mask * self.c
        pred = w.sum() * self.x
        return ((pred - self.y) ** 2).mean()


def test_removal_importance_hand_value():
    # One edge, ops o_k(x) = k * x for k = 1, 2, alpha = 0 -> weights 1/2, 1/2; x = 1, y = 0.
    # L = 1.5^2 = 2.25; without op 1: 1.0^2 = 1; without op 2: 0.5^2 = 0.25.
    toy = ToyMixed(np.zeros((1, 2)), np.array([[1.0, 2.0]]), np.array([1.0]), np.array([0.0]))
    imp = removal_importance(toy.loss, toy.set_mask, {"normal": (1, 2)})
    assert imp["normal"][0].tolist() == pytest.approx([1.0 - 2.25, 0.25 - 2.25])
    assert toy.mask.tolist() == [[1.0, 1.0]] and toy.calls == 3


def test_removal_importance_matches_the_closed_form_on_several_edges():
    rng = np.random.default_rng(1)
    alpha, c = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    x, y = rng.normal(size=16), rng.normal(size=16)
    toy = ToyMixed(alpha, c, x, y)
    p = np.exp(alpha) / np.exp(alpha).sum(axis=1, keepdims=True)
    full = (p * c).sum()
    base = np.mean((full * x - y) ** 2)
    want = np.array([[np.mean(((full - p[e, o] * c[e, o]) * x - y) ** 2) - base for o in range(4)] for e in range(3)])
    got = removal_importance(toy.loss, toy.set_mask, {"normal": (3, 4)})["normal"].numpy()
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def run(stopper: EarlyStop, archs) -> int | None:
    """The epoch (0-based) at which the search stops, or None."""
    return next((t for t, a in enumerate(archs) if stopper.update(a)), None)


def test_early_stop_counts_repeats_not_the_first_occurrence():
    # cnt after each epoch: x:0 y:0 y:1 y:2 -> stops at the 2nd repeat (3 equal derivations).
    assert run(EarlyStop(2), ["x", "y", "y", "y"]) == 3
    # A change resets the count: x:0 x:1 y:0 y:1 x:0 x:1 x:2.
    assert run(EarlyStop(2), ["x", "x", "y", "y", "x", "x", "x"]) == 6
    assert run(EarlyStop(1), ["x", "x"]) == 1
    assert run(EarlyStop(3), ["x", "x", "x", "y"]) is None


def test_early_stop_compares_the_first_epoch_with_the_initial_architecture():
    assert run(EarlyStop(1, initial=("n0", "skip")), [("n0", "skip")]) == 0
    assert run(EarlyStop(1, initial=None), [None]) == 0  # None is an architecture like any other
    s = EarlyStop(2, initial="random")
    assert [s.update(a) for a in ["x", "x", "x"]] == [False, False, True] and s.count == 2
