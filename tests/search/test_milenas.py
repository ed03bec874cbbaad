"""MiLeNAS mixed-level gradient (stretchable-cells Eq. 18) against a hand derivation; the three-way split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasir.search.milenas import mixed_level_grads, three_way_split


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def test_mixed_level_gradient_matches_the_chain_rule_by_hand():
    # pred = (softmax(alpha) . c) * (softmax(beta) . d) * w * x, L = mean((pred - y)^2) on two batches.
    rng = np.random.default_rng(0)
    alpha, beta, c, d = rng.normal(size=3), rng.normal(size=2), rng.normal(size=3), rng.normal(size=2)
    w = 0.7
    (xt, yt), (xv, yv) = (rng.normal(size=8), rng.normal(size=8)), (rng.normal(size=6), rng.normal(size=6))
    lam = 0.5

    def grads(x, y):
        pa, pb = softmax(alpha), softmax(beta)
        A, B = pa @ c, pb @ d
        r = A * B * w * x - y
        dl_dA = np.mean(2 * r * B * w * x)
        dl_dB = np.mean(2 * r * A * w * x)
        # d(p . c)/d alpha_k = p_k (c_k - p . c)
        return dl_dA * pa * (c - A), dl_dB * pb * (d - B)

    (ga_t, gb_t), (ga_v, gb_v) = grads(xt, yt), grads(xv, yv)
    want_a, want_b = ga_t + lam * ga_v, gb_t + lam * gb_v

    ta, tb = torch.tensor(alpha, requires_grad=True), torch.tensor(beta, requires_grad=True)
    tw = torch.nn.Parameter(torch.tensor(w, dtype=torch.float64))
    tc, td = torch.tensor(c), torch.tensor(d)

    def loss(x, y):
        pred = (torch.softmax(ta, 0) @ tc) * (torch.softmax(tb, 0) @ td) * tw * torch.tensor(x)
        return ((pred - torch.tensor(y)) ** 2).mean()

    got_a, got_b = mixed_level_grads(loss(xt, yt), loss(xv, yv), [ta, tb], lam=lam)
    assert got_a.numpy() == pytest.approx(want_a, rel=1e-10)
    assert got_b.numpy() == pytest.approx(want_b, rel=1e-10)
    assert tw.grad is None and ta.grad is None  # no .grad buffer touched


def test_mixed_level_gradient_of_an_unused_parameter_is_zero():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    unused = torch.zeros(3, requires_grad=True)
    ga, gu = mixed_level_grads((a**2).sum(), a.sum(), [a, unused], lam=2.0)
    assert ga.tolist() == [2 * 1 + 2, 2 * 2 + 2] and gu.tolist() == [0.0, 0.0, 0.0]


def test_three_way_split_is_disjoint_covering_equal_and_seeded():
    s = three_way_split(10, seed=0)
    assert [len(s.weights), len(s.alpha), len(s.beta)] == [3, 3, 4]
    assert sorted(s.weights + s.alpha + s.beta) == list(range(10))
    assert s == three_way_split(10, seed=0)
    assert s != three_way_split(10, seed=1)
    halves = three_way_split(100, seed=3, fractions=(0.5, 0.25, 0.25))
    assert [len(p) for p in halves] == [50, 25, 25]
    with pytest.raises(ValueError, match="sum to 1"):
        three_way_split(10, 0, (0.5, 0.5, 0.5))
