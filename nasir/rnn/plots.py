"""Pictures of a recurrent search: softmax(alpha) as a table, one row per edge (source -> node).

Like the CNN search's alphas.png (targets/draw.py `table`): a short search moves softmax(alpha) little
away from uniform, so each cell is coloured by its distance from 1/K on a diverging map scaled to the
largest such distance, and annotated with its value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nasir.io import atomic_write_with
from nasir.rnn.space import SearchSpace


def alpha_heatmap(space: SearchSpace, alpha: Sequence[Sequence[float]], path: Path, title: str = "rnn") -> Path:
    fig = alpha_figure(space, alpha, title)
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def alpha_figure(space: SearchSpace, alpha: Sequence[Sequence[float]], title: str = "rnn") -> Any:
    """The Figure alpha_heatmap writes (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nasir.targets.draw import mean_spread, table

    soft = torch.tensor(alpha, dtype=torch.float64).softmax(-1).tolist()
    fig = Figure(figsize=(7, 1.2 + 0.25 * len(soft)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    table(ax, [f"s{p} -> s{i}" for p, i in space.row_edges()], [space.ops] * len(soft), soft, fmt="{:.3f}",
          title=f"{title}: softmax(alpha) (mean max - min per edge {mean_spread(soft):.2g})", label="softmax(alpha) - 1/K")  # fmt: skip
    fig.tight_layout()
    return fig
