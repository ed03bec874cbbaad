"""OStr-DARTS selection: operation strength, OStr*, the naive pruning criterion, and early stop.

The supernet optimisation is unchanged; only the scores handed to `Derive` change (ostr-darts,
Sec. III). All scores are per cell kind, tensors [edges, ops] in `Cell.alpha_rows` order, so they
plug into `Derive({kind: scores.tolist()})` like softmax(alpha) does for magnitude selection.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Hashable, Mapping

import torch

from nasir import ir


class StrengthMeter:
    """s_o^e = (1/B) sum over the last B architecture steps of |dL/dalpha_o^e| (Eq. 10-11, ostr-darts).

    Call `record(alphas)` after each architecture step's backward (before the optimizer zeroes the
    gradients); it reads `alpha.grad`. Because every stacked copy of a cell kind shares one alpha,
    that gradient already sums the L copies inside the absolute value, as Eq. 10 does. It costs no
    extra forward or backward ("without extra costs", Sec. III-D).
    """

    def __init__(self, window: int):
        if window < 1:
            raise ValueError("the strength window B must be at least 1")
        self.window = window
        self._history: dict[str, deque[torch.Tensor]] = {}

    def record(self, alphas: Mapping[str, torch.Tensor]) -> None:
        """Record |alpha.grad| of every cell kind (e.g. {"normal": alpha_normal, "reduce": alpha_reduce})."""
        grads = {}
        for kind, a in alphas.items():
            if a.grad is None:
                raise ValueError(f"alpha of '{kind}' has no gradient: call record() after backward()")
            grads[kind] = a.grad
        self.record_grads(grads)

    def record_grads(self, grads: Mapping[str, torch.Tensor]) -> None:
        """Record |g| for gradients obtained otherwise (e.g. from torch.autograd.grad)."""
        for kind, g in grads.items():
            self._history.setdefault(kind, deque(maxlen=self.window)).append(g.detach().abs().clone())

    def __len__(self) -> int:
        """Minibatches currently averaged (at most B)."""
        return min((len(h) for h in self._history.values()), default=0)

    def strength(self) -> dict[str, torch.Tensor]:
        """The operation strength per cell kind (Eq. 11); empty before the first record."""
        return {kind: torch.stack(tuple(h)).mean(dim=0) for kind, h in self._history.items()}

    def reset(self) -> None:
        self._history.clear()

    def state_dict(self) -> dict:
        return {"window": self.window, "history": {k: torch.stack(tuple(h)) for k, h in self._history.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        self.window = int(state["window"])
        self._history = {k: deque(h.unbind(0), maxlen=self.window) for k, h in state["history"].items()}


def ostr_star(strength: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """OStr*: s*_o^e = s_o^e / softmax(alpha^e)_o (Eq. 17-18, ostr-darts), per row of [edges, ops].

    By Eq. 9, dL/dalpha_o = softmax(alpha)_o * dL/do_bar (o_o - o_bar), so s* estimates
    |dL/do_bar (o_bar - o_o)|: the Taylor expansion of selecting o, taken at o_bar (Eq. 18).
    """
    return strength / torch.softmax(alpha, dim=-1)


LossFn = Callable[[], torch.Tensor | float]
MaskSetter = Callable[[Mapping[str, torch.Tensor]], None]


def removal_importance(
    loss_fn: LossFn, set_mask: MaskSetter, shapes: Mapping[str, tuple[int, int]]
) -> dict[str, torch.Tensor]:
    """The naive pruning criterion (Fig. 4b, ostr-darts): L(supernet without o on edge e) - L(supernet).

    `set_mask({kind: mask[edges, ops]})` makes every mixed op of that kind compute
    sum_o mask_o * softmax(alpha)_o * o(x): a removed op's term is zeroed without renormalising the
    others, as pruning zeroes a unit ("the loss change induced by removing an operation", Sec. III-B).
    `loss_fn()` evaluates the loss on fixed data (the same batches every call). One evaluation per
    candidate op, under no_grad; the mask is all ones again afterwards. Larger means the op matters
    more, so the scores go to `Derive` as they are.
    """
    ones = {k: torch.ones(s) for k, s in shapes.items()}

    def loss(masks: Mapping[str, torch.Tensor]) -> float:
        set_mask(masks)
        with torch.no_grad():
            return float(loss_fn())

    try:
        base = loss(ones)
        out = {}
        for kind, (edges, n_ops) in shapes.items():
            imp = torch.empty(edges, n_ops)
            for e in range(edges):
                for o in range(n_ops):
                    mask = ones[kind].clone()
                    mask[e, o] = 0.0
                    imp[e, o] = loss({**ones, kind: mask}) - base
            out[kind] = imp
    finally:
        set_mask(ones)
    return out


_NOTHING = object()


def architecture_key(spec: ir.Spec) -> str:
    """The derived architecture as an order-free set of (cell, source, target, op), as a canonical string.

    What Algorithm 1 (ostr-darts) compares between epochs: "the architecture" is which edges exist and
    which op each carries; the order in which a derivation lists the kept edges (by score) is not part
    of it, so two derivations that rank the same edges differently are the same architecture. Sorted
    and JSON-encoded so that it is hashable and checkpointable (torch.load weights_only).
    """
    edges = sorted({(c.name, e.src, e.dst, str(e.op)) for c in spec.cells for e in c.edges})
    return json.dumps(edges)


class EarlyStop:
    """Algorithm 1 (ostr-darts): re-derive each epoch; stop once the architecture has not changed for C epochs.

    The algorithm keeps cnt = 0 and, per epoch t, sets cnt += 1 if A_t == A_{t-1} else cnt = 0; it
    runs while cnt < C. So the first repeat counts 1, and the search stops at the C-th consecutive
    repeat (C + 1 equal derivations in a row). A_0 is "the initial random architecture": pass it as
    `initial` to compare the first epoch against it; without it the first derivation only sets A_0.
    Reading taken: the printed loop condition "cnt < C or t <= T" would never stop early; we read it
    as "and", the runtime bounding t by the epoch count. Architectures are any values with ==.
    """

    def __init__(self, patience: int, initial: Hashable = _NOTHING):
        if patience < 1:
            raise ValueError("early-stop patience C must be at least 1")
        self.patience = patience
        self.count = 0
        self._last = initial

    def update(self, arch: Hashable) -> bool:
        """Record this epoch's derived architecture; True when the search should stop."""
        if self._last is not _NOTHING and arch == self._last:
            self.count += 1
        else:
            self.count = 0
        self._last = arch
        return self.stop

    @property
    def stop(self) -> bool:
        return self.count >= self.patience

    def state_dict(self) -> dict:
        """Count and last architecture (None before the first); the architecture must be checkpointable (e.g. a str)."""
        return {"count": self.count, "last": None if self._last is _NOTHING else self._last}

    def load_state_dict(self, state: Mapping) -> None:
        self.count = int(state["count"])
        self._last = _NOTHING if state["last"] is None else state["last"]
