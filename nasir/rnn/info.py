"""`nasir info` of a recurrent language model: parameters, MACs per token, depth of the cell (docs/recurrent.md).

params            every parameter once, the tied decoder weight counted once (the authors' count:
                  sum of numel over model.parameters(), which yields a shared tensor once)
params_untied     the decoder weight counted again, as an untied model would have it
params_no_embedding  without the embedding/decoder matrix (the cell and the decoder bias)
macs_per_token    multiply-accumulates of the matmuls per word: W0, one W_i per node (i per node in
                  the search supernet, which multiplies all i earlier states), the decoder; elementwise
                  gates and the embedding lookup are not counted
depth             matmul steps on the longest path from (x_t, h_{t-1}) to h_t (s0 is 1)
"""

from __future__ import annotations

from typing import Any

from nasir.rnn.space import Genotype, LanguageModel, SearchSpace


def lm_info(lm: LanguageModel, cell: Genotype | SearchSpace) -> dict[str, Any]:
    V, ninp, H = lm.tokens, lm.ninp, lm.nhid
    n = cell.nodes
    embedding = V * ninp
    w0 = (ninp + H) * 2 * H
    ws = n * H * 2 * H
    params = embedding + V + w0 + ws  # embedding (= decoder weight), decoder bias, W0, the W_i
    if isinstance(cell, Genotype):
        node_macs = n * H * 2 * H
        depth: int | None = cell.depth()
        kind, alphas = "derived", 0
    else:
        node_macs = sum(i * H * 2 * H for i in range(1, n + 1))
        depth = None
        kind, alphas = "search", len(cell.edges) * len(cell.ops)
    return {
        "kind": "recurrent",
        "cell": kind,
        "tokens": V,
        "ninp": ninp,
        "nhid": H,
        "nodes": n,
        "params": params,
        "params_untied": params + embedding,
        "params_no_embedding": params - embedding,
        "macs_per_token": w0 + node_macs + ninp * V,
        "depth": depth,
        "alphas": alphas,
    }


def format_info(info: dict[str, Any]) -> str:
    lines = [
        f"recurrent language model ({info['cell']} cell, {info['nodes']} nodes), vocabulary {info['tokens']}, ninp = nhid = {info['nhid']}",
        f"  params            {info['params']:,} (tied decoder counted once)",
        f"  params untied     {info['params_untied']:,} (decoder weight counted separately)",
        f"  params w/o embedding {info['params_no_embedding']:,}",
        f"  MACs per token    {info['macs_per_token']:,}",
    ]
    if info["depth"] is not None:
        lines.append(f"  cell depth        {info['depth']}")
    if info["alphas"]:
        lines.append(f"  alphas            {info['alphas']}")
    return "\n".join(lines) + "\n"
