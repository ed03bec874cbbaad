"""Selection by magnitude (DARTS): softmax(alpha), times the edge weights under PC-DARTS' edge
normalisation (search/pcdarts.py `normalized_scores`)."""

from __future__ import annotations

from typing import Any

from nasir.methods.base import Selection


def scores(search: Any) -> dict[str, list[list[float]]]:
    import torch
    import torch.nn.functional as F

    from nasir.search.pcdarts import normalized_scores

    model = search.model
    with torch.no_grad():
        soft = {k: F.softmax(a.detach().double(), dim=-1) for k, a in model.alphas.items()}
        return {k: (normalized_scores(model.cells[k], v, model.gammas[k].detach().double()) if k in model.gammas else v).tolist()
                for k, v in soft.items()}  # fmt: skip


SELECTION = Selection("select", "magnitude", "softmax(alpha) (DARTS)", scores=scores)
