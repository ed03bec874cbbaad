"""SDARTS pieces: the eps schedule, RS noise, ADV PGD, and the Hessian power iteration against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasir.search.smoothing import adversarial, epsilon, hessian_max_eigenvalue, project, random_smoothing


def test_epsilon_follows_the_authors_schedule():
    # 0.03 + (0.3 - 0.03) * epoch / epochs, epoch 0-based (docs/methods.md, SDARTS): the last epoch stays below 0.3.
    assert epsilon(0, 50) == pytest.approx(0.03)
    assert epsilon(49, 50) == pytest.approx(0.03 + 0.27 * 49 / 50)
    assert epsilon(10, 11) - epsilon(9, 11) == pytest.approx(0.27 / 11)
    assert [epsilon(t, 4, start=0.0, end=0.4) for t in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert epsilon(0, 1) == pytest.approx(0.03) and epsilon(99, 50) == pytest.approx(0.3)


def oracle_clip(rows: torch.Tensor) -> None:
    """The authors' `clip()`, row by row and in place, as they write it."""
    for line in rows:
        max_index = line.argmax()
        line.data.clamp_(0, 1)
        if line.sum() == 0.0:
            line.data[max_index] = 1.0
        line.data.div_(line.sum())


def test_project_matches_the_authors_clip_including_the_all_negative_row():
    w = torch.tensor([[0.5, -0.2, 0.9], [-0.1, -0.3, -0.05], [1.4, 0.2, -0.1], [0.2, 0.3, 0.5]])
    want = w.clone()
    oracle_clip(want)
    torch.testing.assert_close(project(w), want, atol=1e-7, rtol=0)
    assert project(w)[1].tolist() == [0.0, 0.0, 1.0]  # all negative: one-hot at the argmax
    assert project(w)[3].tolist() == pytest.approx([0.2, 0.3, 0.5])  # a simplex point stays


def test_random_smoothing_old_reading_adds_unprojected_uniform_noise():
    # project_simplex=False: nasir's earlier reading, kept as a switch.
    w = torch.softmax(torch.randn(14, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    g = torch.Generator().manual_seed(1)
    samples = torch.stack([random_smoothing(w, 0.2, g, project_simplex=False) - w for _ in range(500)])
    assert samples.abs().max() <= 0.2 + 1e-7
    # Uniform[-0.2, 0.2]: mean 0, variance 0.2^2 / 3, and both ends of the interval are reached.
    assert samples.mean().item() == pytest.approx(0.0, abs=3e-3)
    assert samples.var().item() == pytest.approx(0.04 / 3, rel=0.03)
    assert samples.max() > 0.199 and samples.min() < -0.199
    assert not torch.equal(samples[0], samples[1])
    again = random_smoothing(w, 0.2, torch.Generator().manual_seed(1), project_simplex=False) - w
    assert torch.equal(again, samples[0])
    assert float((samples + w).min()) < 0  # rows leave the simplex: what the projection fixes


def test_adversarial_old_reading_reaches_the_worst_corner_of_a_linear_loss():
    # L = c . (A + delta) is maximised over the L_inf ball at delta = eps * sign(c). From any start in
    # the ball, 7 sign steps of 2 eps / 7 reach it (no projection: the earlier reading, kept as a switch).
    c = torch.tensor([[1.0, -2.0, 0.5], [-0.1, 3.0, -4.0]])
    A = torch.softmax(torch.zeros(2, 3), dim=-1)
    for seed in range(5):
        out = adversarial(A, lambda a: (c * a).sum(), eps=0.1, generator=torch.Generator().manual_seed(seed),
                          project_simplex=False, keep_if_worse=False)  # fmt: skip
        assert torch.allclose(out - A, 0.1 * c.sign())


def test_adversarial_stays_on_the_simplex_raises_the_loss_and_handles_cell_kinds():
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
        assert float(out[k].min()) >= 0 and out[k].sum(-1).tolist() == pytest.approx([1.0] * 14, abs=1e-6)
    assert loss(out) >= loss(A)
    old = adversarial(A, loss, eps=0.05, steps=7, generator=g, project_simplex=False, keep_if_worse=False)
    assert all(float((old[k] - A[k]).abs().max()) <= 0.05 + 1e-7 for k in A)


def test_adversarial_keeps_the_start_when_the_attack_lowers_the_loss():
    # A loss whose maximum is the start point itself: no attack can raise it, and the authors then
    # return the unperturbed weights (L(before) > L(after)).
    A = torch.softmax(torch.tensor([[0.3, -0.2, 0.1]]), -1)

    def loss(a):
        return -((a - A) ** 2).sum()

    out = adversarial(A, loss, eps=0.1, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, A)  # L(A) = 0 > L(anything else)
    moved = adversarial(A, loss, eps=0.1, steps=3, generator=torch.Generator().manual_seed(0), keep_if_worse=False)
    assert not torch.equal(moved, A)


# ---- the authors' algorithm on a tiny supernet ------------------------------------------------------------
class AuthorsModel:
    """What the authors' code sees: arch parameters holding softmax(alpha) (after `softmax_arch_parameters`),
    `_loss(X, y)`, `clip()`, train/eval; the network is nasir's supernet with fixed weights."""

    def __init__(self, net, soft: dict[str, torch.Tensor]):
        self.net, self.kinds = net, list(soft)
        self.params = [torch.nn.Parameter(soft[k].clone()) for k in self.kinds]
        self.training = True

    def arch_parameters(self):
        return self.params

    def _loss(self, X, y):
        return torch.nn.functional.cross_entropy(self.net(X, soft=dict(zip(self.kinds, self.params))), y)

    def clip(self):
        for p in self.params:
            oracle_clip(p)

    def eval(self):
        self.training = False
        self.net.eval()

    def train(self):
        self.training = True
        self.net.train()

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def oracle_random_alpha(model, epsilon, g):
    for p in model.arch_parameters():
        p.data.add_(torch.zeros_like(p).uniform_(-epsilon, epsilon, generator=g))
    model.clip()


def oracle_linf_pgd_alpha(model, X, y, epsilon, steps, g):
    training = model.training
    if training:
        model.eval()
    saved_params = [p.clone() for p in model.arch_parameters()]
    lr = 2 * epsilon / steps
    with torch.no_grad():
        loss_before = model._loss(X, y)
    for p in model.arch_parameters():
        p.data.add_(torch.zeros_like(p).uniform_(-epsilon, epsilon, generator=g))
    model.clip()
    for _ in range(steps):
        model.zero_grad()
        loss = -model._loss(X, y)
        loss.backward()
        for p in model.arch_parameters():  # Linf_SGD: p <- p - lr * sign(grad of -loss)
            p.data.add_(torch.sign(p.grad), alpha=-lr)
        diff = [(model.arch_parameters()[i] - saved_params[i]).clamp_(-epsilon, epsilon) for i in range(len(saved_params))]
        for i, p in enumerate(model.arch_parameters()):
            p.data.copy_(diff[i] + saved_params[i])
        model.clip()
    model.zero_grad()
    with torch.no_grad():
        loss_after = model._loss(X, y)
    if loss_before > loss_after:
        for i, p in enumerate(model.arch_parameters()):
            p.data.copy_(saved_params[i])
    if training:
        model.train()


def tiny_supernet():
    from helpers import TINY_SPACE, spec_of

    from nasir.search.supernet import build_supernet

    net = build_supernet(spec_of(TINY_SPACE), seed=0)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # alphas away from uniform, so that eps exceeds some softmax weights
        for a in net.alpha_parameters():
            a.copy_(2 * torch.randn(a.shape, generator=g))
    x = torch.randn(6, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    return net, x, y


@pytest.mark.parametrize("eps", [0.03, 0.3])
def test_random_smoothing_equals_the_authors_random_alpha(eps):
    net, _, _ = tiny_supernet()
    soft = {k: v.detach() for k, v in net.softmax_weights().items()}
    assert any(float(v.min()) < eps for v in soft.values())
    authors = AuthorsModel(net, soft)
    oracle_random_alpha(authors, eps, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    ours = {k: random_smoothing(v, eps, g) for k, v in soft.items()}
    for k, p in zip(authors.kinds, authors.params):
        torch.testing.assert_close(ours[k], p.detach(), atol=1e-6, rtol=0)
        assert float(ours[k].min()) >= 0 and ours[k].sum(-1).tolist() == pytest.approx([1.0] * len(p), abs=1e-6)


@pytest.mark.parametrize("eps", [0.03, 0.3])
def test_adversarial_equals_the_authors_linf_pgd_alpha_in_eval_mode(eps):
    net, x, y = tiny_supernet()
    net.train()
    soft = {k: v.detach() for k, v in net.softmax_weights().items()}
    authors = AuthorsModel(net, soft)
    stats = [b.clone() for b in net.buffers()]
    oracle_linf_pgd_alpha(authors, x, y, eps, 3, torch.Generator().manual_seed(5))
    assert net.training and all(torch.equal(a, b) for a, b in zip(stats, net.buffers()))
    net.eval()  # the runner's _smoothed does this around the attack

    def loss(a):
        return torch.nn.functional.cross_entropy(net(x, soft=a), y)

    ours = adversarial(soft, loss, eps, steps=3, generator=torch.Generator().manual_seed(5))
    net.train()
    for k, p in zip(authors.kinds, authors.params):
        torch.testing.assert_close(ours[k], p.detach(), atol=1e-6, rtol=0)
        assert float(ours[k].min()) >= 0 and ours[k].sum(-1).tolist() == pytest.approx([1.0] * len(p), abs=1e-6)
    # The old reading (no projection) leaves the simplex at eps = 0.3 on this supernet.
    if eps == 0.3:
        net.eval()
        old = adversarial(soft, loss, eps, steps=3, generator=torch.Generator().manual_seed(5), project_simplex=False,
                          keep_if_worse=False)  # fmt: skip
        net.train()
        assert min(float(v.min()) for v in old.values()) < 0


def test_adversarial_leaves_network_gradients_alone():
    w = torch.nn.Parameter(torch.tensor([2.0, -1.0]))
    A = torch.tensor([0.5, 0.5])
    adversarial(A, lambda a: (w * a).sum() ** 2, eps=0.1)
    assert w.grad is None


def quadratic(A: np.ndarray, seed: int = 0):
    x = torch.tensor(np.random.default_rng(seed).normal(size=A.shape[0]), requires_grad=True)
    At = torch.tensor(A)
    return (lambda: 0.5 * x @ At @ x), [x]


def largest(A: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(A)[-1])  # the largest algebraic eigenvalue, what SDARTS reports


@pytest.mark.parametrize("method", ["power", "lanczos", "full"])
def test_hessian_eigenvalue_of_a_diagonal_quadratic(method):
    A = np.diag([1.0, 4.0, -0.5, 2.0])
    fn, params = quadratic(A)
    eig = hessian_max_eigenvalue(fn, params, iters=200, tol=1e-8, generator=torch.Generator().manual_seed(0), method=method)
    assert eig.value == pytest.approx(4.0, rel=1e-6) and eig.converged and eig.method == method


@pytest.mark.parametrize("method", ["power", "lanczos", "full"])
@pytest.mark.parametrize("eigs", [[5.0, 2.0, -1.0, 0.5, 0.1], [-6.0, 3.0, 1.0, 0.2]])
def test_hessian_eigenvalue_is_the_largest_algebraic_one_even_when_a_negative_one_dominates(eigs, method):
    rng = np.random.default_rng(len(eigs))
    Q, _ = np.linalg.qr(rng.normal(size=(len(eigs), len(eigs))))
    A = Q @ np.diag(eigs) @ Q.T  # symmetric, not diagonal
    assert np.abs(A - np.diag(np.diag(A))).max() > 0.1
    fn, params = quadratic(A)
    eig = hessian_max_eigenvalue(fn, params, iters=300, tol=1e-7, generator=torch.Generator().manual_seed(0), method=method)
    assert eig.value == pytest.approx(max(eigs), rel=1e-4) and eig.converged  # 3.0, not -6.0, for the second


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_an_iteration_that_runs_out_of_products_is_flagged(method):
    # Eigenvalues 1.0, 0.99, ...: two products cannot separate them.
    A = np.diag([1.0, 0.99, 0.5, 0.3, 0.1])
    fn, params = quadratic(A)
    eig = hessian_max_eigenvalue(fn, params, iters=2, tol=1e-6, generator=torch.Generator().manual_seed(0), method=method)
    assert not eig.converged and eig.products == 2


def test_lanczos_finds_a_clustered_top_eigenvalue_that_power_iteration_misses_in_the_same_products():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(60, 60)))
    eigs = np.concatenate([[2.0, 1.98], rng.uniform(-1.5, 1.5, size=58)])
    A = Q @ np.diag(eigs) @ Q.T
    fn, params = quadratic(A)
    kw = dict(iters=30, tol=1e-4, generator=torch.Generator().manual_seed(0))
    lanczos = hessian_max_eigenvalue(fn, params, method="lanczos", **kw)
    assert lanczos.converged and lanczos.value == pytest.approx(2.0, rel=1e-6) and lanczos.products <= 30
    assert not hessian_max_eigenvalue(fn, params, method="power", **kw).converged


def test_auto_forms_the_hessian_when_that_is_cheaper():
    fn, params = quadratic(np.diag([1.0, 2.0, 3.0]))
    assert hessian_max_eigenvalue(fn, params, iters=20).method == "full"  # 3 products < 20
    fn, params = quadratic(np.diag(np.linspace(0.1, 2.0, 50)))
    assert hessian_max_eigenvalue(fn, params, iters=20, generator=torch.Generator().manual_seed(0)).method == "lanczos"


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
    want = largest((H + H.T) / 2)
    for method in ("power", "lanczos", "full"):
        got = hessian_max_eigenvalue(
            lambda: loss_of(a1, a2), [a1, a2], iters=500, tol=1e-9, generator=torch.Generator().manual_seed(0), method=method
        )
        assert got.value == pytest.approx(want, rel=1e-4) and got.converged
