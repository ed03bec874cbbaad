"""SDARTS: perturb the architecture weights during the weight step, and the Hessian diagnostic.

SDARTS (sdarts Sec. 3.2-3.3, Algorithm 1) trains w on A_bar = softmax(alpha) + delta, so w works in
a neighbourhood of the architecture; the architecture step itself is unchanged. The perturbation is
added after the softmax ("the perturbation on A is performed after the softmax layer", Sec. 5.1).
Where the paper is silent we follow the authors' released code (docs/methods.md, "SDARTS"): every
perturbed row is projected back onto the simplex (`project`), ADV attacks with the network in eval
mode and keeps the unperturbed weights when the attack did not raise the loss, and the radius grows
as 0.03 + (0.3 - 0.03) * epoch / epochs.

How the runtime plugs these in, per weight step of epoch t (0-based) of T:
    eps = epsilon(t, T)
    A = {kind: softmax(alpha_kind)}                                     # what the mixed ops read
    A_rs = {k: random_smoothing(a, eps, gen) for k, a in A.items()}     # SDARTS-RS
    A_adv = adversarial(A, lambda A: train_loss(w, A), eps)             # SDARTS-ADV (network in eval mode)
then one SGD step on L_train(w, A_rs or A_adv) (network in train mode).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch

Weights = torch.Tensor | Mapping[str, torch.Tensor]
Reduce = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]


def epsilon(epoch: int, epochs: int, start: float = 0.03, end: float = 0.3) -> float:
    """The perturbation radius of epoch `epoch` (0-based) of `epochs`: start + (end - start) * epoch / epochs.

    sdarts Sec. 5.1: "we initialize the norm ball as 0.03 and linearly increase it to 0.3"; the
    authors' schedule (docs/methods.md, "SDARTS") divides by the epoch count, so the last epoch's
    radius is just under `end`. Epochs outside [0, epochs] are clamped.
    """
    if epochs <= 0:
        return start
    t = min(max(epoch / epochs, 0.0), 1.0)
    return start + (end - start) * t


def project(weights: torch.Tensor) -> torch.Tensor:
    """Each row (last dimension) clamped to [0, 1] and renormalised to sum 1: back onto the simplex.

    The authors' `clip()` (docs/methods.md, "SDARTS"): a row whose clamped entries are all 0 becomes
    one-hot at the argmax of the unclamped row (the first on ties, as torch.argmax picks).
    """
    top = weights.argmax(dim=-1, keepdim=True)
    c = weights.clamp(0.0, 1.0)
    empty = c.sum(dim=-1, keepdim=True) == 0
    c = torch.where(empty, torch.zeros_like(c).scatter(-1, top, 1.0), c)
    return c / c.sum(dim=-1, keepdim=True)


def _uniform(w: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """delta ~ Uniform[-eps, eps] elementwise, drawn as the authors draw it (`uniform_(-eps, eps)`)."""
    return torch.empty_like(w).uniform_(-eps, eps, generator=generator)


def random_smoothing(weights: torch.Tensor, eps: float, generator: torch.Generator | None = None,
                     project_simplex: bool = True) -> torch.Tensor:  # fmt: skip
    """SDARTS-RS: project(weights + delta), delta ~ Uniform[-eps, eps] elementwise, fresh on every call.

    `weights` are the architecture weights after the softmax; the generator must live on their device.
    `project_simplex=False` is nasir's earlier reading (no projection: rows leave the simplex once eps
    exceeds a weight); the authors project (`Random_alpha`, docs/methods.md).
    """
    out = weights + _uniform(weights, eps, generator)
    return project(out) if project_simplex else out


def adversarial(weights: Weights, loss_fn: Callable[[Weights], torch.Tensor], eps: float, steps: int = 7,
                step_size: float | None = None, random_start: bool = True,
                generator: torch.Generator | None = None, reduce: Reduce | None = None,
                project_simplex: bool = True, keep_if_worse: bool = True) -> Weights:  # fmt: skip
    """SDARTS-ADV: the weights A' in the L_inf ball of radius eps around A that (approximately) maximise
    L_train(w, A') (sdarts Sec. 3.2-3.3), by the authors' projected gradient ascent (`Linf_PGD_alpha`,
    docs/methods.md, "SDARTS"):

        A' = project(A + U[-eps, eps])                               (random start)
        steps times: A' = project(A + clamp(A' + lr * sign(grad L(A')) - A, -eps, eps)),  lr = 2 eps / steps
        return A if L(A) > L(A') else A'                             (keep_if_worse)

    `weights` is one tensor or a mapping of them (one per cell kind: the loss depends on all kinds
    jointly); `loss_fn` takes the same structure. The caller puts the network in eval mode (the
    authors attack in eval mode). Only A' receives gradients (torch.autograd.grad), so the network's
    .grad buffers are untouched. `reduce` averages the ascent gradients and the two compared losses
    over the ranks of a distributed search, so every rank takes the same A'.
    `project_simplex=False, keep_if_worse=False` is nasir's earlier reading (no projection, always the attack).
    """
    single = isinstance(weights, torch.Tensor)
    base: dict[str, torch.Tensor] = {"": weights.detach()} if single else {k: w.detach() for k, w in weights.items()}  # type: ignore[union-attr]
    lr = 2 * eps / steps if step_size is None else step_size
    proj = project if project_simplex else (lambda t: t)

    def pack(d: dict[str, torch.Tensor]) -> Weights:
        return d[""] if single else d

    def value(a: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            loss = loss_fn(pack(a)).detach().reshape(1)
        return reduce([loss])[0] if reduce is not None else loss

    before = value(base) if keep_if_worse else None
    a = {k: proj(w + _uniform(w, eps, generator)) if random_start else w.clone() for k, w in base.items()}
    for _ in range(steps):
        d = {k: v.clone().requires_grad_() for k, v in a.items()}
        loss = loss_fn(pack(d))
        grads = torch.autograd.grad(loss, list(d.values()), allow_unused=True)
        grads = [torch.zeros_like(v) if g is None else g for g, v in zip(grads, d.values())]
        if reduce is not None:  # a distributed search ascends the loss of the global batch
            grads = reduce(grads)
        a = {k: proj(base[k] + (d[k].detach() + lr * g.sign() - base[k]).clamp(-eps, eps)) for k, g in zip(d, grads)}
    if before is not None:  # chosen on the device: no host synchronisation per attack
        worse = before > value(a)
        a = {k: torch.where(worse, base[k], w) for k, w in a.items()}
    return pack(a)


class Eigenvalue(NamedTuple):
    """The largest eigenvalue found, whether it converged (relative residual ||Hv - lv|| / |l| <= tol), and how."""

    value: float
    converged: bool
    method: str  # "full", "lanczos" or "power"
    products: int  # Hessian-vector products spent


def _flat(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in xs])


def hessian_max_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iters: int = 20,
                           tol: float = 1e-3, generator: torch.Generator | None = None,
                           method: str = "auto") -> Eigenvalue:  # fmt: skip
    """The largest (algebraic) eigenvalue of the Hessian of loss_fn() w.r.t. `params`.

    The SDARTS diagnostic (Sec. 4, after Zela et al. 2020a): the dominant eigenvalue of the full
    Hessian of L_val w.r.t. alpha on one batch, which the authors compute by forming the Hessian and
    taking its largest eigenvalue (docs/methods.md, "Hessian"). `method`:
      full     form H by one Hessian-vector product per coordinate, symmetrise, eigvalsh: exact.
      lanczos  at most `iters` products: Lanczos with full reorthogonalisation; the largest Ritz value
               of the tridiagonal matrix, converged when its residual ||Hy - l y|| = beta_k |s_k| is
               <= tol * |l| (else flagged). Converges to the algebraic top of the spectrum directly.
      power    power iteration (at most `iters` products) finds the eigenvalue l1 of largest magnitude;
               if l1 < 0, a second power iteration on H - l1 I (eigenvalues >= 0) finds l_max - l1.
               Flagged unless the residual ||Hv - l v|| <= tol * |l|. Kept for comparison: it needs
               many more products than Lanczos when the top eigenvalues are close.
      auto     full when that needs no more products than the iterative method (n <= iters), else lanczos.
    """
    params = list(params)
    n = sum(p.numel() for p in params)
    if method not in ("auto", "full", "lanczos", "power"):
        raise ValueError(f"method must be auto, full, lanczos or power, got {method!r}")
    if method == "auto":
        method = "full" if n <= iters else "lanczos"
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    device = params[0].device
    products = 0

    def hvp(v: torch.Tensor) -> torch.Tensor:
        nonlocal products
        products += 1
        parts, i = [], 0
        for p in params:
            parts.append(v[i : i + p.numel()].view_as(p).to(p.dtype))
            i += p.numel()
        hv = torch.autograd.grad(grads, params, grad_outputs=parts, retain_graph=True, allow_unused=True)
        return _flat([torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, params)]).double()

    def start() -> torch.Tensor:
        v = torch.randn(n, generator=generator, dtype=torch.float64).to(device)
        return v / v.norm()

    if method == "full":
        eye = torch.eye(n, dtype=torch.float64, device=device)
        H = torch.stack([hvp(eye[i]) for i in range(n)])
        H = (H + H.T) / 2
        return Eigenvalue(float(torch.linalg.eigvalsh(H.cpu())[-1]), True, "full", products)

    if method == "lanczos":
        basis: list[torch.Tensor] = []
        diag: list[float] = []
        off: list[float] = []
        v, prev, beta = start(), None, 0.0
        theta, ok = 0.0, False
        for _ in range(min(iters, n)):
            w = hvp(v)
            a = float(w @ v)
            w = w - a * v - (beta * prev if prev is not None else 0.0)
            basis.append(v)
            diag.append(a)
            for _twice in range(2):  # full reorthogonalisation, twice is enough in floating point
                for u in basis:
                    w = w - (w @ u) * u
            T = torch.diag(torch.tensor(diag, dtype=torch.float64))
            if off:
                o = torch.tensor(off, dtype=torch.float64)
                T = T + torch.diag(o, 1) + torch.diag(o, -1)
            evals, evecs = torch.linalg.eigh(T)
            theta = float(evals[-1])
            beta = float(w.norm())
            residual = beta * abs(float(evecs[-1, -1]))
            ok = residual <= tol * max(abs(theta), 1e-12)
            if ok or beta == 0.0:  # converged, or an invariant subspace: the Ritz value is exact
                ok = True
                break
            off.append(beta)
            prev, v = v, w / beta
        return Eigenvalue(theta, ok, "lanczos", products)

    def power(shift: float) -> tuple[float, bool]:
        v = start()
        lam, ok = 0.0, False
        for _ in range(iters):
            hv = hvp(v) - shift * v
            lam = float(hv @ v)  # the Rayleigh quotient of H - shift I at the unit vector v
            residual = float((hv - lam * v).norm())
            norm = float(hv.norm())
            if norm == 0.0:  # v is in the null space: H - shift I is 0 along it
                return lam, True
            ok = residual <= tol * max(abs(lam), 1e-12)
            if ok:
                break
            v = hv / norm
        return lam, ok

    l1, ok1 = power(0.0)
    if l1 >= 0:
        return Eigenvalue(l1, ok1, "power", products)
    l2, ok2 = power(l1)  # eigenvalues of H - l1 I are >= 0 when l1 is the most negative; the largest is l_max - l1
    return Eigenvalue(l2 + l1, ok1 and ok2, "power", products)
