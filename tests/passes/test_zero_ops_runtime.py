"""zero_ops at run time: skipping `none` changes neither the loss nor any gradient (passes/zero_ops.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import spec_of

from nasir.search.supernet import MixedOp, build_supernet
from nasir.targets.blocks import Zero

SPACE = """
opset darts = {none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5}
cell normal {
  inputs c_k2, c_k1
  nodes n0..n3
  edges * -> n* : choice(darts)
  output concat(n0..n3)
  keep 2 inputs per node
}
cell reduce like normal { stride 2 from inputs }
network tiny(C = 4, layers = 3, classes = 10) {
  input (1, 8, 8)
  stem conv3x3(3 * C), bn
  stack layers cells(C): normal, reduce at 1/3, 2/3
  head global_avg_pool, linear(classes)
}
"""


def test_skipping_none_gives_the_loss_and_gradients_of_an_explicit_zero_op():
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 10
    results = []
    for skip in (True, False):
        model = build_supernet(spec_of(SPACE), seed=7, skip_zero=skip, fuse=False)  # op by op: the same sums, so 1e-7
        with torch.no_grad():  # alphas away from uniform; `none` weighted heavily so its softmax share matters
            for a in model.arch_parameters():
                a.copy_(torch.randn(a.shape, generator=torch.Generator().manual_seed(1)))
                a[:, 0] += 1.0
        zeros = [op for m in model.modules() if isinstance(m, MixedOp) for op in m._ops if isinstance(op, Zero)]
        loss = F.cross_entropy(model(x), y)
        alpha_grads = torch.autograd.grad(loss, model.arch_parameters(), retain_graph=True)
        weight_grads = torch.autograd.grad(loss, model.weight_parameters())
        results.append((len(zeros), loss.detach(), alpha_grads, weight_grads))
    (n_skip, l_skip, a_skip, w_skip), (n_zero, l_zero, a_zero, w_zero) = results
    assert n_skip == 0 and n_zero == 3 * 14  # one explicit Zero per mixed edge when not skipped
    torch.testing.assert_close(l_skip, l_zero, rtol=0, atol=1e-7)
    for a, b in zip(a_skip, a_zero):
        assert a[:, 0].abs().sum() > 0  # none's alpha still takes part in the softmax and gets gradient
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    for a, b in zip(w_skip, w_zero):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
