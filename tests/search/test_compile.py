"""Regional compilation (`build_supernet(compile=True)`, nasir/search/supernet.py `compile_cells`):
torch.compile of each searched cell gives the eager supernet's loss, gradients and BN running statistics
up to float rounding, as one graph per cell.

Compilation takes seconds per graph on a small CPU, so the space here is small (five candidates, two
nodes, one cell); the equality is checked in float64 at 1e-9 relative, where any other computation
(a dropped term, a missing BN statistic, a wrong weight) would show.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import spec_of

from nasir.search.supernet import FusedCell, build_supernet

pytestmark = pytest.mark.slow

SMALL = """
opset small = {none, max_pool_3x3, skip_connect, sep_conv_3x3, dil_conv_3x3}
cell normal {
  inputs c_k2, c_k1
  nodes n0..n1
  edges * -> n* : choice(small)
  output concat(n0..n1)
  keep 2 inputs per node
}
network tiny(C = 4, layers = 1, classes = 10) {
  input (1, 8, 8)
  stem conv3x3(3 * C), bn
  stack layers cells(C): normal
  head global_avg_pool, linear(classes)
}
"""


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_compiled_cells_give_the_eager_loss_gradients_and_statistics_in_one_graph():
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    spec = spec_of(SMALL)
    torch.set_default_dtype(torch.float64)
    try:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(4, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (4,), generator=g)
        out = []
        for compile in (False, True):
            model = build_supernet(spec, seed=0, compile=compile)
            model.train()
            assert model.compiled == (1 if compile else 0)
            assert any(isinstance(m, FusedCell) for m in model.modules())
            rows = []
            for _ in range(2):  # the second call runs the compiled graph without compiling again
                loss = F.cross_entropy(model(x), y)
                grads = torch.autograd.grad(loss, model.weight_parameters() + model.arch_parameters())
                rows.append((loss.detach(), grads))
            out.append((rows, [b.clone() for b in model.buffers()]))
    finally:
        torch.set_default_dtype(torch.float32)
    (eager, b0), (compiled, b1) = out
    for (l0, g0), (l1, g1) in zip(eager, compiled):
        assert abs(float(l1 - l0)) <= 1e-9 * abs(float(l0))
        for a, b in zip(g1, g0):
            assert a.shape == b.shape and _rel(a, b) <= 1e-9
        assert float(g0[-1].norm()) > 0  # the alpha gradient is not trivially zero
    for a, b in zip(b1, b0):  # every BN's running statistics updated twice, as in eager mode
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # One graph for the cell (the fused cell's custom backward ops trace); a graph break would cut
    # the cell into pieces that the compiler cannot fuse across (docs/performance.md).
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1

