"""DARTS architecture steps against direct autograd computations (docs/methods.md, "DARTS")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_SPACE, spec_of
from torch.func import functional_call

from nasir.search.architect import Architect, weight_step
from nasir.search.supernet import build_supernet

TINY = TINY_SPACE


def setup(seed: int = 0, dtype=torch.float64):
    model = build_supernet(spec_of(TINY), seed=seed).to(dtype)
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    g = torch.Generator().manual_seed(seed)
    batch = lambda: (torch.randn(8, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 10, (8,), generator=g))  # noqa: E731
    # One weight step first, so the SGD momentum buffers that the unrolled step reads are not empty.
    weight_step(model, w_opt, batch())
    with torch.no_grad():  # alphas away from uniform, so the softmax Jacobian is generic
        for a in model.arch_parameters():
            a.copy_(torch.randn(a.shape, generator=g, dtype=dtype))
    return model, w_opt, batch(), batch()


def exact_unrolled_grad(model, w_opt, train, valid, xi):
    """grad_alpha L_val(w'(alpha), alpha) by autograd through the unrolled SGD step (create_graph)."""
    named = model.named_weight_parameters()
    params = [p for _, p in named]
    group = w_opt.param_groups[0]
    loss = F.cross_entropy(model(train[0]), train[1])
    grads = torch.autograd.grad(loss, params, create_graph=True)
    unrolled = {}
    for (name, p), g in zip(named, grads):
        buf = w_opt.state[p]["momentum_buffer"]
        unrolled[name] = p.detach() - xi * (group["momentum"] * buf + g + group["weight_decay"] * p.detach())
    val = F.cross_entropy(functional_call(model, unrolled, (valid[0],)), valid[1])
    return torch.autograd.grad(val, model.arch_parameters())


def _cat(xs) -> torch.Tensor:
    return torch.cat([x.flatten() for x in xs])


def test_second_order_gradient_matches_autograd_of_the_unrolled_objective():
    model, w_opt, train, valid = setup()
    xi = 0.5  # large enough that the implicit (Hessian) term is a sizeable part of the gradient
    # DARTS' radius 0.01 crosses ReLU and max-pool kinks of this tiny random net, where the gradient
    # jumps; a small radius in float64 makes the central difference converge to the exact product.
    arch = Architect(model, w_opt, order=2, fd_radius=1e-6)
    approx = _cat(arch.second_order_grad(train, valid, xi)[0])
    exact = _cat(exact_unrolled_grad(model, w_opt, train, valid, xi))
    first = _cat(arch.first_order_grad(valid)[0])
    implicit = (exact - first).norm()
    assert implicit > 0.1 * exact.norm()  # the second-order correction is not negligible here
    assert (approx - exact).norm() < 1e-6 * exact.norm()


def test_finite_difference_radius_is_darts_0_01():
    model, w_opt, train, valid = setup(seed=5)
    xi = 0.1
    arch = Architect(model, w_opt, order=2)
    arch.second_order_grad(train, valid, xi)
    # grad_w' L_val(w', alpha), computed here by autograd through functional_call.
    named = model.named_weight_parameters()
    unrolled = {n: w.clone().requires_grad_() for (n, _), w in zip(named, arch.unrolled_weights(train, xi))}
    val = F.cross_entropy(functional_call(model, unrolled, (valid[0],)), valid[1])
    v = torch.autograd.grad(val, list(unrolled.values()))
    assert arch.last_eps * _cat(v).norm().item() == pytest.approx(0.01, rel=1e-9)


def test_first_order_is_the_gradient_of_the_validation_loss_and_xi_zero_reduces_to_it():
    model, w_opt, train, valid = setup(seed=1)
    arch = Architect(model, w_opt, order=2)
    first = arch.first_order_grad(valid)[0]
    loss = F.cross_entropy(model(valid[0]), valid[1])
    want = torch.autograd.grad(loss, model.arch_parameters())
    for a, b in zip(first, want):
        torch.testing.assert_close(a, b)
    # xi = 0: w' = w, and the finite-difference term is multiplied by 0 (docs/methods.md: first order is xi = 0).
    zero = arch.second_order_grad(train, valid, 0.0)[0]
    for a, b in zip(zero, want):
        torch.testing.assert_close(a, b)


def test_architecture_step_restores_weights_and_running_statistics():
    model, w_opt, train, valid = setup(seed=2)
    weights = [p.detach().clone() for p in model.weight_parameters()]
    twin, _, _, _ = setup(seed=2)
    Architect(model, w_opt, order=2).step(train, valid, xi=0.1)
    for p, w in zip(model.weight_parameters(), weights):
        assert torch.equal(p, w)
    # Only the evaluation at the real weights (the training batch of the unrolled step) moves BN statistics.
    twin(train[0])
    for a, b in zip(model.buffers(), twin.buffers()):
        torch.testing.assert_close(a, b)


def test_alpha_optimizer_has_the_darts_defaults_and_steps_only_alphas():
    model, w_opt, train, valid = setup(seed=3, dtype=torch.float32)
    arch = Architect(model, w_opt, order=1)
    group = arch.optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (3e-4, (0.5, 0.999), 1e-3)
    before = [a.detach().clone() for a in model.arch_parameters()]
    weights = [p.detach().clone() for p in model.weight_parameters()]
    arch.step(train, valid, xi=0.025)
    # Adam's first step moves every coordinate by about lr (times the sign of its gradient).
    for a, b in zip(model.arch_parameters(), before):
        assert torch.allclose((a - b).abs().max(), torch.tensor(3e-4), rtol=0.05)
    assert all(torch.equal(p, w) for p, w in zip(model.weight_parameters(), weights))


def test_weight_step_clips_the_gradient_norm_at_5():
    model, w_opt, train, _ = setup(seed=4, dtype=torch.float32)
    opt = torch.optim.SGD(model.weight_parameters(), 1.0)  # plain SGD: the update is the clipped gradient
    with torch.no_grad():
        model.net.classifier.weight.mul_(1e3)  # a huge gradient
    before = [p.detach().clone() for p in model.weight_parameters()]
    weight_step(model, opt, train, clip=5.0)
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.weight_parameters(), before))).item()
    assert step == pytest.approx(5.0, rel=1e-4)
