"""DARTS steps on the recurrent supernet with truncated BPTT (DARTS Sec. 2.3 Eq. 6-8; docs/recurrent.md).

Every step takes the hidden state the previous step of its stream left (detached: truncated BPTT) and
returns the new one, so the state is carried across batches as the authors do; the architecture step
keeps its own stream on the validation data.

First order: alpha descends grad_alpha L_val(w, alpha).
Second order (Eq. 7-8): w' = w - xi * (clip(grad_w L_train(w, alpha)) + wd * w) -- plain SGD, the
search's weight optimiser -- and alpha descends
    grad_alpha L_val(w', alpha) - xi * c * (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps)
with v = clip(grad_w' L_val(w', alpha)), w+- = w +- eps v, eps = 0.01 / ||v||, and c <= 1 the factor by
which the training gradient was clipped (docs/recurrent.md, "Second order"). With a clip that does not bind
this is the finite-difference form of the gradient of the unrolled objective L_val(w', alpha).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasir.rnn.cell import SearchLM
from nasir.search.architect import buffers_kept, weights_at

Batch = tuple[torch.Tensor, torch.Tensor]  # words [T, B], targets [T * B]


def lm_loss(model: nn.Module, batch: Batch, hidden: torch.Tensor, *, ar: float = 0.0, tar: float = 0.0):
    """(loss with AR/TAR, plain NLL, next hidden state). AR: ar * mean(dropped h^2); TAR: tar * mean((h_t - h_{t-1})^2)."""
    words, targets = batch
    log_prob, h, raw, dropped = model(words, hidden, return_h=True)
    nll = F.nll_loss(log_prob.reshape(-1, log_prob.size(-1)), targets)
    loss = nll
    if ar:
        loss = loss + ar * dropped.pow(2).mean()
    if tar:
        loss = loss + tar * (raw[1:] - raw[:-1]).pow(2).mean()
    return loss, nll, h


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The generator states the dropout masks of a forward pass on `device` draw from (CPU, and CUDA's)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def clip_coef(grads: Sequence[torch.Tensor], max_norm: float) -> float:
    """min(1, max_norm / (||grads|| + 1e-6)): the factor clip_grad_norm_ scales by."""
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    return min(1.0, max_norm / (norm + 1e-6))


class RecurrentArchitect:
    """Adam on alpha (the authors' search: lr 3e-3, betas (0.9, 0.999), weight decay 1e-3), order 1 or 2."""

    def __init__(self, model: SearchLM, *, order: int = 1, lr: float = 3e-3, weight_decay: float = 1e-3,
                 w_weight_decay: float = 5e-7, clip: float = 0.25, fd_radius: float = 0.01):  # fmt: skip
        if order not in (1, 2):
            raise ValueError(f"the recurrent architecture step is DARTS order 1 or 2, got {order!r}")
        self.model, self.order = model, order
        self.w_weight_decay, self.clip, self.fd_radius = w_weight_decay, clip, fd_radius
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
        self.last_grads: list[torch.Tensor] = []
        self.last_eps: float | None = None

    def first_order_grad(self, valid: Batch, hidden_valid: torch.Tensor):
        loss, _, h = lm_loss(self.model, valid, hidden_valid)
        return list(torch.autograd.grad(loss, self.model.arch_parameters())), loss.detach(), h.detach()

    def unrolled_weights(self, train: Batch, hidden_train: torch.Tensor, xi: float) -> tuple[list[torch.Tensor], float]:
        """w' = w - xi * (c * grad_w L_train + wd * w) and the clip factor c."""
        params = self.model.weight_parameters()
        loss, _, _ = lm_loss(self.model, train, hidden_train)
        grads = torch.autograd.grad(loss, params)
        c = clip_coef(grads, self.clip)
        with torch.no_grad():
            return [p - xi * (c * g + self.w_weight_decay * p) for p, g in zip(params, grads)], c

    def second_order_grad(self, train: Batch, hidden_train: torch.Tensor, valid: Batch, hidden_valid: torch.Tensor, xi: float):
        model = self.model
        params, alphas = model.weight_parameters(), model.arch_parameters()
        w = [p.detach().clone() for p in params]
        with buffers_kept(model):
            w_prime, c = self.unrolled_weights(train, hidden_train, xi)
        # The masks of the dropouts are random draws; every evaluation of one step uses the same draws
        # (drawn on the model's device: the CUDA generator there, the CPU's on the CPU).
        device = params[0].device
        rng = _rng_state(device)
        with buffers_kept(model), weights_at(params, w_prime):
            loss, _, h = lm_loss(model, valid, hidden_valid)
            g = torch.autograd.grad(loss, alphas + params)
        d_alpha, v = list(g[: len(alphas)]), list(g[len(alphas) :])
        cv = clip_coef(v, self.clip)
        v = [x * cv for x in v]
        norm = math.sqrt(sum(float((x.double() ** 2).sum()) for x in v))
        eps = self.fd_radius / norm if norm > 0 else 0.0
        self.last_eps = eps
        if eps > 0:
            implicit = [torch.zeros_like(a) for a in alphas]
            for sign in (1.0, -1.0):
                with buffers_kept(model), weights_at(params, [wi + sign * eps * vi for wi, vi in zip(w, v)]):
                    _set_rng_state(rng, device)
                    lt, _, _ = lm_loss(model, train, hidden_train)
                    ga = torch.autograd.grad(lt, alphas)
                for acc, gi in zip(implicit, ga):
                    acc.add_(gi, alpha=sign / (2 * eps))
            d_alpha = [da - xi * c * hv for da, hv in zip(d_alpha, implicit)]
        return d_alpha, loss.detach(), h.detach()

    def gradient(self, train: Batch, hidden_train: torch.Tensor, valid: Batch, hidden_valid: torch.Tensor, xi: float):
        if self.order == 1:
            return self.first_order_grad(valid, hidden_valid)
        return self.second_order_grad(train, hidden_train, valid, hidden_valid, xi)

    def step(self, train: Batch, hidden_train: torch.Tensor, valid: Batch, hidden_valid: torch.Tensor, xi: float):
        """One architecture step; returns (validation loss, the validation stream's next hidden state)."""
        grads, loss, h = self.gradient(train, hidden_train.detach(), valid, hidden_valid.detach(), xi)
        self.last_grads = [g.detach() for g in grads]
        self.optimizer.zero_grad(set_to_none=True)
        for a, g in zip(self.model.arch_parameters(), grads):
            a.grad = g
        self.optimizer.step()
        return loss, h

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def weight_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, hidden: torch.Tensor, *,
                clip: float = 0.25, ar: float = 0.0, tar: float = 1e-3, lr_scale: float = 1.0):  # fmt: skip
    """One SGD step on L_train + AR + TAR from the carried (detached) state, gradient norm clipped at `clip`.

    `lr_scale` scales this step's learning rate (the authors scale it by seq_len / bptt for a random
    sequence length). Returns (NLL, next hidden state, detached).
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    loss, nll, h = lm_loss(model, batch, hidden.detach(), ar=ar, tar=tar)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, clip)
    saved = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = g["lr"] * lr_scale
    optimizer.step()
    for g, lr in zip(optimizer.param_groups, saved):
        g["lr"] = lr
    return nll.detach(), h.detach()


def evaluate(model: nn.Module, data: torch.Tensor, bptt: int, batch: int) -> float:
    """Mean NLL per word over `data` ([rows, batch], batchified), the state carried, in eval mode."""
    from nasir.rnn.corpus import get_batch

    was = model.training
    model.eval()
    total, count = 0.0, 0
    h = model.init_hidden(batch)
    try:
        with torch.no_grad():
            for i in range(0, data.size(0) - 1, bptt):
                words, targets = get_batch(data, i, bptt)
                log_prob, h = model(words, h)
                total += float(F.nll_loss(log_prob.reshape(-1, log_prob.size(-1)), targets, reduction="sum"))
                count += targets.numel()
    finally:
        model.train(was)
    return total / max(count, 1)
