"""Pictures of a recurrent search: softmax(alpha) as a heatmap, one row per edge (source -> node)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from nasir.io import atomic_write_with
from nasir.rnn.space import SearchSpace


def alpha_heatmap(space: SearchSpace, alpha: Sequence[Sequence[float]], path: Path, title: str = "rnn") -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    soft = torch.tensor(alpha, dtype=torch.float64).softmax(-1)
    fig = Figure(figsize=(6, 1.2 + 0.25 * soft.shape[0]))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(soft.numpy(), cmap="Blues", vmin=0.0, aspect="auto")
    ax.set_yticks(range(soft.shape[0]), [f"s{p} -> s{i}" for p, i in space.row_edges()], fontsize=6)
    ax.set_xticks(range(soft.shape[1]), space.ops, rotation=30, ha="right", fontsize=7)
    ax.set_title(f"{title}: softmax(alpha)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path
