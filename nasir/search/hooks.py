"""The search layer's implementations of the registry's hooks (docs/runtime.md, "Adding a method").

The registry (nasir/methods) sits in the IR layer and imports no torch: each entry names its hooks
(`Method.gradient`, `Selection.scores`, `Smoothing.perturb`), and this module registers the
implementations under those names when it is imported (as targets/blocks.py registers the ops' builders
named in nasir/ops.py). The loop (search/loop.py) imports this module and looks the hooks up by name.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from nasir import methods
from nasir.search import smoothing
from nasir.search.architect import buffers_kept
from nasir.search.pcdarts import normalized_scores
from nasir.search.strength import ostr_star

# The perturbation's generator: stream 3 of (seed, epoch, step) (streams 0-2 draw the data).
SMOOTHING_STREAM = 3


# ---- architecture rules (Method.gradient) ------------------------------------------------------------
def darts_rule(options: Any):
    """DARTS (docs/methods.md, "DARTS"): first order (xi = 0) or second order (search/architect.py)."""
    if options.order == 1:
        return lambda arch, train, valid, xi, valid_beta: arch.first_order_grad(valid)
    return lambda arch, train, valid, xi, valid_beta: arch.second_order_grad(train, valid, xi)


def milenas_rule(options: Any):
    """MiLeNAS' mixed-level rule (stretchable-cells Eq. 18, search/milenas.py), first order."""
    return lambda arch, train, valid, xi, valid_beta: arch.mixed_level_grad(train, valid, valid_beta)


# ---- selections (Selection.scores) -------------------------------------------------------------------
def magnitude_scores(search: Any) -> dict[str, list[list[float]]]:
    """softmax(alpha) (DARTS), times the edge weights under PC-DARTS' edge normalisation (search/pcdarts.py)."""
    model = search.model
    with torch.no_grad():
        soft = {k: F.softmax(a.detach().double(), dim=-1) for k, a in model.alphas.items()}
        return {k: (normalized_scores(model.cells[k], v, model.gammas[k].detach().double()) if k in model.gammas else v).tolist()
                for k, v in soft.items()}  # fmt: skip


def strength_scores(search: Any) -> dict[str, list[list[float]]]:
    """Operation strength (OStr-DARTS Eq. 11) over the meter's window; magnitude before any architecture step."""
    strength = {k: v.double() for k, v in search.meter.strength().items()}
    if not strength:
        return magnitude_scores(search)
    return {k: v.tolist() for k, v in strength.items()}


def strength_star_scores(search: Any) -> dict[str, list[list[float]]]:
    """OStr* (OStr-DARTS Eq. 18, search/strength.py `ostr_star`); magnitude before any architecture step."""
    strength = {k: v.double() for k, v in search.meter.strength().items()}
    if not strength:
        return magnitude_scores(search)
    with torch.no_grad():
        return {k: ostr_star(v, search.model.alphas[k].detach().double()).tolist() for k, v in strength.items()}


def naive_scores(search: Any) -> dict[str, list[list[float]]]:
    """The loss increase on removal (OStr-DARTS Fig. 4b) on a fixed batch (search/diagnostics.py)."""
    return {k: v.tolist() for k, v in search.removal_scores().items()}


# ---- smoothings (Smoothing.perturb; sdarts Sec. 3.2-3.3, search/smoothing.py) ------------------------
def _soft(search: Any) -> dict[str, Any]:
    with torch.no_grad():
        return {k: v.detach() for k, v in search.model.softmax_weights().items()}


def random_perturbation(search: Any, batch: Any, eps: float) -> dict[str, Any]:
    """SDARTS-RS: softmax(alpha) + delta, delta uniform in the radius-eps ball."""
    soft = _soft(search)
    g = search.generator(SMOOTHING_STREAM)
    return {k: smoothing.random_smoothing(v, eps, g) for k, v in soft.items()}


def adversarial_perturbation(search: Any, batch: Any, eps: float) -> dict[str, Any]:
    """SDARTS-ADV: delta by PGD, the network in eval mode as the authors attack (docs/methods.md, "SDARTS")."""
    model = search.model
    soft = _soft(search)
    g = search.generator(SMOOTHING_STREAM)
    x, y = batch

    def loss(weights):
        return F.cross_entropy(model(x, soft=weights), y)

    model.eval()  # the weight step itself runs in train mode
    try:
        with buffers_kept(model):
            return smoothing.adversarial(soft, loss, eps, steps=search.opt.adv_steps, generator=g, reduce=search.reduce)
    finally:
        model.train()


methods.register_hooks("rules", {"darts": darts_rule, "milenas": milenas_rule})
methods.register_hooks("scores", {"magnitude": magnitude_scores, "strength": strength_scores,
                                  "strength_star": strength_star_scores, "naive": naive_scores})  # fmt: skip
methods.register_hooks("perturbations", {"random": random_perturbation, "adversarial": adversarial_perturbation})


def rule(entry: methods.Method, options: Any):
    """The architect's gradient rule of a method entry, for these options."""
    return methods.hook("rules", entry.gradient)(options)


def scores(entry: methods.Selection, search: Any) -> dict[str, list[list[float]]]:
    return methods.hook("scores", entry.scores)(search)


def perturb(entry: methods.Smoothing, search: Any, batch: Any, eps: float) -> dict[str, Any] | None:
    """The weights the mixed ops read under this smoothing; None (softmax(alpha)) when it perturbs nothing."""
    if not entry.perturbs:
        return None
    return methods.hook("perturbations", entry.perturb)(search, batch, eps)
