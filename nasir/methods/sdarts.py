"""SDARTS (sdarts Sec. 3.2-3.3; search/smoothing.py): the weight step reads softmax(alpha) + delta, delta
random in the radius-eps ball (RS) or found by PGD (ADV, network in eval mode as the authors run it,
docs/methods.md "SDARTS"). The radius grows from 0.03 to `eps` over the epochs (`smoothing.epsilon`).
The perturbations are nasir/search/hooks.py `random` and `adversarial`."""

from __future__ import annotations

from nasir.methods.base import Param, Smoothing, positive_int

EPS = Param("eps", "eps_end", float, lambda v: v > 0, "a positive number (the final radius)", 0.3, "the final radius")
STEPS = Param("steps", "adv_steps", int, positive_int, "a whole number >= 1", 7, "PGD steps of SDARTS-ADV")

NONE = Smoothing("smooth", "none", "no smoothing (DARTS)", perturbs=False)
RS = Smoothing("smooth", "rs", "SDARTS-RS: random perturbation", params=(EPS,), perturb="random")
ADV = Smoothing("smooth", "adv", "SDARTS-ADV: adversarial perturbation (PGD)", params=(EPS, STEPS), perturb="adversarial")
