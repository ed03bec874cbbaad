"""SDARTS (sdarts Sec. 3.2-3.3; search/smoothing.py): the weight step reads softmax(alpha) + delta, delta
random in the radius-eps ball (RS) or found by PGD (ADV, network in eval mode as the authors run it,
docs/methods.md "SDARTS"). The radius grows from 0.03 to `eps` over the epochs (`smoothing.epsilon`)."""

from __future__ import annotations

from typing import Any

from nasir.methods.base import Param, Smoothing, positive_int

EPS = Param("eps", "eps_end", float, lambda v: v > 0, "a positive number (the final radius)", 0.3, "the final radius")
STEPS = Param("steps", "adv_steps", int, positive_int, "a whole number >= 1", 7, "PGD steps of SDARTS-ADV")
RNG_STREAM = 3  # the perturbation's generator: stream 3 of (seed, epoch, step) (streams 0-2 draw the data)


def _soft(search: Any) -> dict[str, Any]:
    import torch

    with torch.no_grad():
        return {k: v.detach() for k, v in search.model.softmax_weights().items()}


def random(search: Any, batch: Any, eps: float) -> dict[str, Any]:
    from nasir.search import smoothing

    soft = _soft(search)
    g = search.generator(RNG_STREAM)
    return {k: smoothing.random_smoothing(v, eps, g) for k, v in soft.items()}


def adversarial(search: Any, batch: Any, eps: float) -> dict[str, Any]:
    import torch.nn.functional as F

    from nasir.search import smoothing
    from nasir.search.architect import buffers_kept

    model = search.model
    soft = _soft(search)
    g = search.generator(RNG_STREAM)
    x, y = batch

    def loss(weights):
        return F.cross_entropy(model(x, soft=weights), y)

    model.eval()  # the authors attack in eval mode (docs/methods.md, "SDARTS"); the weight step runs in train mode
    try:
        with buffers_kept(model):
            return smoothing.adversarial(soft, loss, eps, steps=search.opt.adv_steps, generator=g, reduce=search.reduce)
    finally:
        model.train()


NONE = Smoothing("smooth", "none", "no smoothing (DARTS)", perturbs=False)
RS = Smoothing("smooth", "rs", "SDARTS-RS: random perturbation", params=(EPS,), perturb=random)
ADV = Smoothing("smooth", "adv", "SDARTS-ADV: adversarial perturbation (PGD)", params=(EPS, STEPS), perturb=adversarial)
