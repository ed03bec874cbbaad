"""The DARTS architecture step, first and second order (docs/methods.md, "DARTS"; darts-slides "Approximation").

First order (xi = 0): alpha descends grad_alpha L_val(w, alpha).
Second order: alpha descends
    grad_alpha L_val(w', alpha) - xi * (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps)
with w' = one step of the weight optimiser from w on the training batch, w+- = w +- eps * grad_w' L_val(w', alpha),
eps = 0.01 / ||grad_w' L_val(w', alpha)|| and xi the current weight learning rate.

Which w': the slides write w' = w - xi * grad_w L_train(w, alpha); the DARTS reference code
(architect.py, `_compute_unrolled_model`) unrolls the actual SGD step, momentum and weight decay
included: w' = w - xi * (momentum * buf + grad_w L_train + wd * w). We take the code's reading: it is
the weight step the search really takes next, and the slides' is its special case momentum = wd = 0.
The momentum and decay terms do not depend on alpha, so the finite-difference term is the same.

The hypothetical weights w', w+ and w- are written into the live parameters and restored afterwards
(as the reference does with a model copy and in-place updates), so low-memory recomputation in the
backward pass sees the same weights as the forward; BN running statistics are restored too, so only
evaluations at the real weights w update them.

The architecture parameters are all of `Supernet.arch_parameters()`: alphas, and betas (stretchable
cells) and gammas (PC-DARTS) where the supernet has them; each update rule applies to all of them.
`rule` picks the gradient (nasir/methods supplies it per method); `mixed_level_grad` is MiLeNAS'
mixed-level rule (stretchable-cells Eq. 18, search/milenas.py, nasir/methods/milenas.py): the
architecture descends grad (L_train + lam * L_val) at the current w, first order; with a third batch
(`valid_beta`, the three-way split) the betas take their L_val from it. `regularizer()` (the
passive-aggressive term, Eq. 15) is added to the architecture loss of every rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasir.search.supernet import Supernet

Batch = tuple[torch.Tensor, torch.Tensor]
Reduce = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]
# rule(architect, train, valid, xi, valid_beta) -> (grads in arch_parameters() order, loss, logits)
Rule = Callable[..., tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]


def all_reduce_mean(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of `tensors` over the ranks of the default process group, in one flat all-reduce.

    A distributed search gives every rank a slice of each global batch; averaging every gradient the
    steps compute keeps the weights and the architecture variables identical on all ranks (other NAS
    libraries let the alphas drift apart: only DDP's weight gradients get averaged there).
    """
    import torch.distributed as dist

    if not tensors:
        return []
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    out, i = [], 0
    for t in tensors:
        out.append(flat[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


@contextlib.contextmanager
def weights_at(params: Sequence[nn.Parameter], values: Sequence[torch.Tensor]) -> Iterator[None]:
    """Temporarily give `params` the `values` (forward and backward must both run inside)."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)


@contextlib.contextmanager
def buffers_kept(module: nn.Module) -> Iterator[None]:
    """Evaluations at hypothetical weights must not move the BN running statistics."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


class Architect:
    """Updates the architecture variables of a `Supernet` with Adam (DARTS defaults: lr 3e-4,
    betas (0.5, 0.999), weight decay 1e-3), first or second order.

    `w_optimizer` is the weight optimiser; the second-order step reads its momentum and weight decay
    to unroll the step it is about to take (see the module docstring).
    """

    def __init__(self, model: Supernet, w_optimizer: torch.optim.Optimizer | None = None, *, order: int = 1,
                 lr: float = 3e-4, betas: tuple[float, float] = (0.5, 0.999), weight_decay: float = 1e-3,
                 criterion: nn.Module | None = None, fd_radius: float = 0.01, mixed_level: float = 1.0,
                 regularizer: Callable[[], torch.Tensor] | None = None, reduce: Reduce | None = None,
                 rule: Rule | None = None):  # fmt: skip
        if rule is None and order not in (1, 2):
            raise ValueError(f"the architecture step is DARTS order 1 or 2, got {order!r}")
        self.model = model
        self.w_optimizer = w_optimizer
        self.order = order
        # The gradient rule (nasir/methods: DARTS order 1 / 2, MiLeNAS' mixed level); None: DARTS of `order`.
        self.rule = rule
        self.mixed_level = mixed_level  # lambda' of Eq. 18
        self.regularizer = regularizer
        self.reduce = reduce  # averages every gradient over the ranks of a distributed search
        self.last_grads: list[torch.Tensor] = []
        self.criterion = criterion or nn.CrossEntropyLoss()
        # eps = fd_radius / ||grad_w' L_val||: w+- lie fd_radius away from w (DARTS: 0.01).
        self.fd_radius = fd_radius
        self.last_eps: float | None = None
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=betas, weight_decay=weight_decay)

    # ---- gradients -----------------------------------------------------------------------------
    def _grad(self, loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, list(params))
        return self.reduce(grads) if self.reduce is not None else list(grads)

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self.model(x)
        return self.criterion(logits, y), logits

    def first_order_grad(self, valid: Batch) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """grad_alpha L_val(w, alpha) (docs/methods.md, DARTS first order); also the loss and logits."""
        alphas = self.model.arch_parameters()
        loss, logits = self._loss(valid)
        return self._grad(loss, alphas), loss.detach(), logits.detach()

    def unrolled_weights(self, train: Batch, xi: float) -> list[torch.Tensor]:
        """w' = w - xi * (momentum * buf + grad_w L_train(w, alpha) + wd * w), the next SGD step (DARTS code)."""
        params = self.model.weight_parameters()
        loss, _ = self._loss(train)
        grads = self._grad(loss, params)
        momentum, wd, bufs = 0.0, 0.0, [None] * len(params)
        opt = self.w_optimizer
        if opt is not None:
            group = opt.param_groups[0]
            momentum, wd = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
            bufs = [opt.state.get(p, {}).get("momentum_buffer") for p in params]
        out = []
        with torch.no_grad():
            for p, g, buf in zip(params, grads, bufs):
                d = g + wd * p if wd else g
                if buf is not None and momentum:
                    d = d + momentum * buf
                out.append(p - xi * d)
        return out

    def second_order_grad(self, train: Batch, valid: Batch, xi: float) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The DARTS second-order gradient with the finite-difference Hessian-vector product (docs/methods.md)."""
        model = self.model
        params = model.weight_parameters()
        alphas = model.arch_parameters()
        w = [p.detach().clone() for p in params]
        w_prime = self.unrolled_weights(train, xi)
        with buffers_kept(model), weights_at(params, w_prime):
            loss, logits = self._loss(valid)
            g = self._grad(loss, alphas + params)
        d_alpha, d_w = list(g[: len(alphas)]), g[len(alphas) :]
        # eps = 0.01 / ||grad_w' L_val(w', alpha)|| (docs/methods.md; DARTS architect.py `r = 1e-2`).
        norm = torch.sqrt(sum((v.double() ** 2).sum() for v in d_w))
        eps = float(self.fd_radius / norm) if norm > 0 else 0.0
        self.last_eps = eps
        implicit = [torch.zeros_like(a) for a in alphas]
        if eps > 0.0:
            for sign in (1.0, -1.0):
                point = [wi + sign * eps * v for wi, v in zip(w, d_w)]
                with buffers_kept(model), weights_at(params, point):
                    lt, _ = self._loss(train)
                    ga = self._grad(lt, alphas)
                for acc, gi in zip(implicit, ga):
                    acc.add_(gi, alpha=sign / (2 * eps))
        grads = [da - xi * h for da, h in zip(d_alpha, implicit)]
        return grads, loss.detach(), logits.detach()

    def mixed_level_grad(self, train: Batch, valid: Batch, valid_beta: Batch | None = None
                         ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:  # fmt: skip
        """grad (L_train + lam * L_val) w.r.t. the architecture at the current w (Eq. 18, MiLeNAS).

        With `valid_beta`, the betas' L_val is taken on that batch, the others' on `valid`.
        """
        model = self.model
        params = model.arch_parameters()
        lt, _ = self._loss(train)
        g_train = self._grad(lt, params)
        lv, logits = self._loss(valid)
        beta_ids = {id(b) for b in model.beta_parameters()} if valid_beta is not None else set()
        own = [p for p in params if id(p) not in beta_ids]
        g_val = dict(zip(map(id, own), self._grad(lv, own)))
        if beta_ids:
            betas = [p for p in params if id(p) in beta_ids]
            lb, _ = self._loss(valid_beta)  # type: ignore[arg-type]
            g_val.update(zip(map(id, betas), self._grad(lb, betas)))
        grads = [gt + self.mixed_level * g_val[id(p)] for p, gt in zip(params, g_train)]
        return grads, lv.detach(), logits.detach()

    def gradient(self, train: Batch, valid: Batch, xi: float, valid_beta: Batch | None = None
                 ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:  # fmt: skip
        """The architecture gradient of this step's rule, the regulariser's gradient added."""
        if self.rule is not None:
            grads, loss, logits = self.rule(self, train, valid, xi, valid_beta)
        elif self.order == 1:
            grads, loss, logits = self.first_order_grad(valid)
        else:
            grads, loss, logits = self.second_order_grad(train, valid, xi)
        if self.regularizer is not None:
            params = self.model.arch_parameters()
            reg = torch.autograd.grad(self.regularizer(), params, allow_unused=True)
            grads = [g if r is None else g + r for g, r in zip(grads, reg)]
        return grads, loss, logits

    # ---- the step ------------------------------------------------------------------------------
    def step(self, train: Batch, valid: Batch, xi: float, valid_beta: Batch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One architecture step; returns the validation loss and logits (at w for order 1, at w' for 2).

        The gradients it descended stay in `last_grads` (arch_parameters() order): OStr's strength
        meter reads them, so operation strength costs no extra pass (ostr-darts Sec. III-D).
        """
        grads, loss, logits = self.gradient(train, valid, xi, valid_beta)
        self.last_grads = [g.detach() for g in grads]
        self.optimizer.zero_grad(set_to_none=True)
        for a, g in zip(self.model.arch_parameters(), grads):
            a.grad = g
        self.optimizer.step()
        return loss, logits


def weight_step(model: Supernet, optimizer: torch.optim.Optimizer, batch: Batch, *, clip: float = 5.0,
                criterion: nn.Module | None = None, soft: dict[str, torch.Tensor] | None = None,
                reduce: Reduce | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One weight step: descend grad_w L_train(w, alpha), gradient norm clipped at `clip` (DARTS: 5).

    `soft` replaces softmax(alpha) in the mixed ops (SDARTS trains w on perturbed weights); `reduce`
    averages the gradients over the ranks of a distributed search before clipping.
    """
    x, y = batch
    params = model.weight_parameters()
    logits = model(x) if soft is None else model(x, soft=soft)
    loss = (criterion or F.cross_entropy)(logits, y)
    optimizer.zero_grad(set_to_none=True)
    grads = torch.autograd.grad(loss, params)
    if reduce is not None:
        grads = reduce(grads)
    for p, g in zip(params, grads):
        p.grad = g
    nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return loss.detach(), logits.detach()
