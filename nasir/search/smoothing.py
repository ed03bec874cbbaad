"""SDARTS: perturb the architecture weights during the weight step, and the Hessian diagnostic.

SDARTS (sdarts Sec. 3.2-3.3, Algorithm 1) trains w on A_bar = softmax(alpha) + delta, so w works in
a neighbourhood of the architecture; the architecture step itself is unchanged. The perturbation is
added after the softmax ("the perturbation on A is performed after the softmax layer", Sec. 5.1).

How the runtime plugs these in, per weight step of epoch t (0-based) of T:
    eps = epsilon(t, T)
    A = {kind: softmax(alpha_kind)}                                     # what the mixed ops read
    A_rs = {k: random_smoothing(a, eps, gen) for k, a in A.items()}     # SDARTS-RS
    A_adv = adversarial(A, lambda A: train_loss(w, A), eps)             # SDARTS-ADV
then one SGD step on L_train(w, A_rs or A_adv).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

Weights = torch.Tensor | Mapping[str, torch.Tensor]


def epsilon(epoch: int, epochs: int, start: float = 0.03, end: float = 0.3) -> float:
    """The perturbation radius: "we initialize the norm ball as 0.03 and linearly increase it to 0.3" (Sec. 5.1).

    Reading taken: epochs are counted from 0 and the last one (epochs - 1) uses `end` exactly, so the
    ball does reach 0.3 as the text says; epochs outside the range are clamped.
    """
    if epochs <= 1:
        return start
    t = min(max(epoch / (epochs - 1), 0.0), 1.0)
    return start + (end - start) * t


def random_smoothing(weights: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """SDARTS-RS: weights + delta, delta ~ Uniform[-eps, eps] elementwise, fresh on every call (Sec. 3.2-3.3).

    `weights` are the architecture weights after the softmax; the generator must live on their device.
    """
    noise = torch.rand(weights.shape, generator=generator, device=weights.device, dtype=weights.dtype)
    return weights + (2 * noise - 1) * eps


def adversarial(weights: Weights, loss_fn: Callable[[Weights], torch.Tensor], eps: float, steps: int = 7,
                step_size: float | None = None, random_start: bool = True,
                generator: torch.Generator | None = None,
                reduce: Callable[[Sequence[torch.Tensor]], list[torch.Tensor]] | None = None) -> Weights:  # fmt: skip
    """SDARTS-ADV: weights + delta with delta ~ argmax_{||delta||_inf <= eps} L_train(w, weights + delta) (Sec. 3.2-3.3).

    Projected gradient ascent on delta; "the 7-step PGD attack" is the paper's default and one step
    "brings little performance decrease" (Sec. 5.1). `weights` is one tensor or a mapping of them (one per cell kind:
    the loss depends on all kinds jointly); `loss_fn` takes the same structure. Only delta receives
    gradients (torch.autograd.grad), so the network's .grad buffers are untouched. `reduce` averages the
    ascent gradients over the ranks of a distributed search, so every rank takes the same delta.

    Readings taken where sdarts.txt is silent or garbled: its update reads delta <- P(delta + lr *
    grad), P the projection onto the ball ("clipping in the case of the L_inf norm"), without a value
    for lr. We take the L_inf PGD of Madry et al. (2018a, the paper's reference for adversarial
    training): a sign-of-gradient step, from a uniform random start in the ball, with step size
    2 * eps / steps (our recollection of the authors' released code, not stated in the text), so
    that the steps can cross the whole ball.
    """
    single = isinstance(weights, torch.Tensor)
    ws: dict[str, torch.Tensor] = {"": weights} if single else dict(weights)  # type: ignore[arg-type]
    base = {k: w.detach() for k, w in ws.items()}
    step = 2 * eps / steps if step_size is None else step_size

    def pack(d: dict[str, torch.Tensor]) -> Weights:
        return d[""] if single else d

    delta = {}
    for k, w in base.items():
        if random_start:
            u = torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype)
            delta[k] = (2 * u - 1) * eps
        else:
            delta[k] = torch.zeros_like(w)
    for _ in range(steps):
        d = {k: v.clone().requires_grad_() for k, v in delta.items()}
        loss = loss_fn(pack({k: base[k] + d[k] for k in base}))
        grads = torch.autograd.grad(loss, list(d.values()), allow_unused=True)
        if reduce is not None:  # a distributed search ascends the loss of the global batch
            grads = reduce([torch.zeros_like(v) if g is None else g for g, v in zip(grads, d.values())])
        delta = {
            k: (d[k].detach() + step * (g.sign() if g is not None else 0)).clamp(-eps, eps)
            for (k, g) in zip(d, grads)
        }  # fmt: skip
    return pack({k: ws[k] + delta[k] for k in ws})


def hessian_max_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iters: int = 20,
                           tol: float = 1e-4, generator: torch.Generator | None = None) -> float:  # fmt: skip
    """The dominant eigenvalue of the Hessian of loss_fn() w.r.t. `params`, by power iteration.

    The SDARTS diagnostic (Sec. 4, after Zela et al. 2020a): of L_val w.r.t. alpha; DARTS lets it grow,
    SDARTS keeps it low. Hessian-vector products by double backward, so the Hessian is never formed.
    Power iteration converges to the eigenvalue of largest magnitude; it is returned with its sign
    (the Rayleigh quotient v^T H v, |v| = 1). Stops after `iters` products or once the estimate moves
    by less than tol * |estimate|.
    """
    params = list(params)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    norm = torch.sqrt(sum((x * x).sum() for x in v))
    v = [x / norm for x in v]
    estimate: float | None = None
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True, allow_unused=True)
        hv = [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, params)]
        new = float(sum((h * x).sum() for h, x in zip(hv, v)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if float(norm) == 0.0:
            return 0.0
        v = [h / norm for h in hv]
        done = estimate is not None and abs(new - estimate) <= tol * abs(new)
        estimate = new
        if done:
            break
    assert estimate is not None
    return estimate
