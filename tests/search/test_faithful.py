"""Issue 12: each method as its authors' code runs it, against small re-implementations written here.

PC-DARTS' cell (the authors' MixedOp / Cell.forward), its warm-up and a sync-free edge normalisation;
OStr-DARTS' early stop on order-free architectures; the NAS-Bench-201 derivation's full argmax; the
stretchable cell's empty code; the optimiser settings of the search block.
(SDARTS' Random_alpha / Linf_PGD_alpha and the Hessian are in test_smoothing.py; `topology outputs 2`'s
8 edges in tests/passes/test_topology.py.)
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_SPACE, spec_of

from nasir import ir
from nasir.diagnostics import DiagnosticError
from nasir.lower import resolve
from nasir.passes.derive import Derive
from nasir.passes.mixed_ops import MixedOps
from nasir.passes.topology import Topology
from nasir.pipeline import PassManager
from nasir.search import pcdarts
from nasir.search.runner import Search, make_options, search
from nasir.search.strength import EarlyStop, architecture_key
from nasir.search.supernet import build_supernet
from nasir.search.topology import most_likely_codes, most_likely_edges, removed_nodes
from nasir.verify import verify


# ---- PC-DARTS -----------------------------------------------------------------------------------------------
def authors_channel_shuffle(x, groups):
    batchsize, num_channels, height, width = x.data.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


def authors_mixed_op(ops, x, weights, k):
    """PC-DARTS' MixedOp.forward: 1/k of the channels through the weighted ops, the rest bypass, shuffle."""
    dim_2 = x.shape[1]
    xtemp = x[:, : dim_2 // k, :, :]
    xtemp2 = x[:, dim_2 // k :, :, :]
    temp1 = sum(w * op(xtemp) for w, op in zip(weights, ops))
    if temp1.shape[2] == x.shape[2]:
        ans = torch.cat([temp1, xtemp2], dim=1)
    else:
        ans = torch.cat([temp1, F.max_pool2d(xtemp2, 2, 2)], dim=1)
    return authors_channel_shuffle(ans, k)


def authors_cell(cell_ir, module, s0, s1, soft, gamma, k, fold=False):
    """PC-DARTS' Cell.forward: s = sum_j weights2[j] * MixedOp_j(h_j, weights[j]); weights2 a softmax of the
    edge variables over each node's input edges. `fold=True` is the reading this issue fixes (the edge
    weight folded into the op weights: only the mixed part scaled)."""
    states = {cell_ir.states[0]: module.preprocess0(s0), cell_ir.states[1]: module.preprocess1(s1)}
    for j in cell_ir.node_names:
        into = [(kk, e) for kk, e in enumerate(cell_ir.edges) if e.dst == j]
        w2 = torch.softmax(torch.stack([gamma[e.alpha] for _, e in into]), 0)
        total = 0
        for (kk, e), g in zip(into, w2):
            inner = module._ops[kk].op  # nasir's MixedOp: the ops it computes and their candidate indices
            ops_ = [lambda x, i=i, m=inner: m._ops[m.index.index(i)](x) if i in m.index else 0 for i in range(len(e.candidates))]
            row = soft[e.alpha]
            if fold:
                total = total + authors_mixed_op(ops_, states[e.src], row * g, k)
            else:
                total = total + g * authors_mixed_op(ops_, states[e.src], row, k)
        states[j] = total
    return torch.cat([states[n] for n in cell_ir.output.nodes], dim=1)


@pytest.mark.parametrize("index", [0, 1])  # the normal cell, then a reduction cell (bypass max-pooled)
def test_pcdarts_cell_output_equals_the_authors_cell_forward(index):
    spec = spec_of(TINY_SPACE)
    net = build_supernet(spec, seed=0, partial_channels=2).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in [*net.alpha_parameters(), *net.gammas.values()]:
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(2, 1, 8, 8, generator=g)
    with torch.no_grad():
        s0 = s1 = net.net.stem(x)
        weights = net.edge_weights()
        for m, kind in zip(net.net.cells[:index], net.net.cell_kinds):
            s0, s1 = s1, m(s0, s1, weights[kind])
        module, kind = net.net.cells[index], net.net.cell_kinds[index]
        ours = module(s0, s1, weights[kind])
        soft = torch.softmax(net.alphas[kind], -1)
        want = authors_cell(net.cells[kind], module, s0, s1, soft, net.gammas[kind], 2)
        folded = authors_cell(net.cells[kind], module, s0, s1, soft, net.gammas[kind], 2, fold=True)
    assert module.reduction == (index == 1)
    torch.testing.assert_close(ours, want, atol=1e-6, rtol=1e-5)
    assert float((ours - folded).abs().max()) > 1e-2  # the folded reading is measurably another function


def test_edge_normalization_makes_no_host_to_device_copy_once_its_plan_is_cached(monkeypatch):
    cell = build_supernet(spec_of(TINY_SPACE), seed=0, partial_channels=2).cells["normal"]
    gamma = torch.randn(len(cell.alpha_rows))
    first = pcdarts.edge_normalization(cell, gamma)

    def refuse(*a, **k):
        raise AssertionError("host data copied to a tensor inside the forward")

    monkeypatch.setattr(torch, "tensor", refuse)
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "tolist", refuse)
    assert torch.equal(pcdarts.edge_normalization(cell, gamma), first)


def _runner(text_or_path, tmp_path, **flags) -> Search:
    spec, plan = resolve(text_or_path, ["C=4", "layers=3"]) if not isinstance(text_or_path, ir.Spec) else text_or_path
    opts = make_options(spec, data="synthetic:32", overrides={"C": 4, "layers": 3}, limit_batches=None, channels_last=False,
                        low_memory=False, device=torch.device("cpu"), **{"batch_size": 8, "seed": 0, "epochs": 2, **flags})  # fmt: skip
    return Search(spec, plan, opts, tmp_path, progress=False, artifacts=False)


def _space(tmp_path, search_block: str = ""):
    path = tmp_path / "space.cell"
    path.write_text(TINY_SPACE + search_block)
    return path


def test_pcdarts_warms_up_15_epochs_by_default_and_the_spec_or_flag_sets_it(tmp_path):
    assert _runner(_space(tmp_path), tmp_path / "a", method="pcdarts").opt.warmup_epochs == 15
    assert _runner(_space(tmp_path), tmp_path / "b").opt.warmup_epochs == 0  # DARTS: none
    spec_zero = _space(tmp_path, "search {\n  method pcdarts(k = 2)\n  warmup 0\n}\n")
    assert _runner(spec_zero, tmp_path / "c").opt.warmup_epochs == 0
    assert _runner(spec_zero, tmp_path / "d", warmup=3).opt.warmup_epochs == 3  # the flag over the spec


def test_warmup_epochs_take_weight_steps_only(tmp_path):
    path = _space(tmp_path)
    kw = dict(data="synthetic:32", overrides=["C=4", "layers=3"], batch_size=8, seed=0, device="cpu", progress=False,
              artifacts=False, method="pcdarts", partial_channels=2, epochs=2, warmup=1)  # fmt: skip
    initial = build_supernet(resolve(path, ["C=4", "layers=3"])[0], seed=0, partial_channels=2)
    result = search(path, out=tmp_path / "run", **kw)
    epoch1 = json.loads((tmp_path / "run" / "alphas" / "epoch_001.json").read_text())
    assert epoch1 == initial.alpha_values()  # no architecture step in the warm-up epoch
    assert result.alphas != initial.alpha_values()  # epoch 2 steps the architecture
    assert result.metrics[0]["warmup"] is True and result.metrics[0]["arch_loss"] is None
    assert "warmup" not in result.metrics[1] and result.metrics[1]["arch_loss"] > 0
    covered = search(path, out=tmp_path / "run2", **{**kw, "warmup": 2})
    assert any("no architecture step" in n for n in covered.notes) and covered.alphas == initial.alpha_values()


# ---- OStr-DARTS Algorithm 1 ---------------------------------------------------------------------------------
RANKED = """
opset o = {none, skip_connect, sep_conv_3x3}
cell c {
  inputs a, b
  nodes n0..n1
  edges * -> n* : choice(o)
  output concat(n0..n1)
  keep 2 inputs per node
}
"""


def derivation(first_edge_wins: bool) -> ir.Spec:
    """The same architecture, with n1's two kept edges ranked one way or the other."""
    spec = PassManager([MixedOps()]).apply(spec_of(RANKED))
    c = spec.cell("c")
    rows = []
    for e in sorted((e for e in c.edges if e.alpha is not None), key=lambda e: e.alpha):
        top = {("a", "n1"): 0.9 if first_edge_wins else 0.8, ("n0", "n1"): 0.8 if first_edge_wins else 0.9}
        rows.append([0.0, 0.1, top.get((e.src, e.dst), 0.5 if e.dst == "n0" else 0.1)])
    return Derive({"c": rows}).run(spec).spec


def test_architectures_that_differ_only_in_edge_rank_compare_equal():
    from nasir.search.artefacts import canonical as _canonical

    one, other = derivation(True), derivation(False)
    assert _canonical(one) != _canonical(other)  # printed, the kept edges come in score order
    assert architecture_key(one) == architecture_key(other)
    edges = {(e.src, e.dst, e.op) for e in one.cell("c").edges}
    assert edges == {("a", "n0", "sep_conv_3x3"), ("b", "n0", "sep_conv_3x3"), ("a", "n1", "sep_conv_3x3"),
                     ("n0", "n1", "sep_conv_3x3")}  # fmt: skip
    changed = Derive({"c": [[0.0, 0.9, 0.1]] * 5}).run(PassManager([MixedOps()]).apply(spec_of(RANKED))).spec
    assert architecture_key(changed) != architecture_key(one)


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_early_stop_fires_after_exactly_c_unchanged_epochs_while_ranks_swap(patience):
    # Algorithm 1 by hand: cnt += 1 when A_t == A_{t-1} (as sets), else 0; stop when cnt == C.
    archs = [derivation(t % 2 == 0) for t in range(10)]  # the ranks swap every epoch
    stop = EarlyStop(patience)
    fired = next(t for t, a in enumerate(archs, 1) if stop.update(architecture_key(a)))
    assert fired == patience + 1
    from nasir.search.artefacts import canonical as _canonical

    printed = EarlyStop(patience)  # the old comparison never sees the architecture repeat
    assert not any(printed.update(_canonical(a)) for a in archs)


# ---- NAS-Bench-201 derivation -------------------------------------------------------------------------------
NB201 = """
opset nb201 = {none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3}
cell c {
  inputs x
  nodes n1..n3
  edges * -> n* : choice(nb201)
  output n3
}
"""
DARTSLIKE = NB201.replace("inputs x", "inputs x, y").replace("output n3", "output concat(n1..n3)\n  keep 1 inputs per node")


def _ops_of(spec) -> dict[tuple[str, str], str]:
    return {(e.src, e.dst): e.op for e in spec.cell("c").edges}


def test_nb201_derivation_takes_the_argmax_over_all_ops_none_included():
    spec = PassManager([MixedOps()]).apply(spec_of(NB201))
    c = spec.cell("c")
    ops_ = c.alpha_rows[0]
    g = torch.Generator().manual_seed(0)
    alphas = torch.randn(len(c.alpha_rows), len(ops_), generator=g)
    alphas[0, ops_.index("none")] = 5.0  # x -> n1: none wins
    alphas[4, ops_.index("none")] = 5.0  # n1 -> n3 (row 4 in IR order): none wins
    scores = torch.softmax(alphas, -1).tolist()
    got = _ops_of(Derive({"c": scores}).run(spec).spec)
    by_edge = {(e.src, e.dst): e.alpha for e in c.edges}
    want = {edge: ops_[max(range(len(ops_)), key=lambda o, r=r: scores[r][o])] for edge, r in by_edge.items()}  # argmax by hand
    assert list(want.values()).count("none") >= 2
    assert got == want  # all six edges, `none` where it wins (the NB201 string then reads none~i)
    # The switch: drop_none=True is the earlier rule, best op other than none on every edge.
    old = _ops_of(Derive({"c": scores}, drop_none=True).run(spec).spec)
    assert "none" not in old.values()
    assert all(old[edge] == max((o for o in ops_ if o != "none"), key=lambda o, r=r: scores[r][ops_.index(o)])
               for edge, r in by_edge.items())  # fmt: skip


def test_a_cell_with_keep_still_drops_none_and_drop_none_false_keeps_it():
    spec = PassManager([MixedOps()]).apply(spec_of(DARTSLIKE))
    c = spec.cell("c")
    ops_ = c.alpha_rows[0]
    scores = [[0.9 if o == "none" else 0.1 + 0.01 * i for i, o in enumerate(ops_)] for _ in c.alpha_rows]
    got = Derive({"c": scores}).run(spec).spec
    assert "none" not in {e.op for e in got.cell("c").edges}
    assert {e.op for e in got.cell("c").edges} == {"avg_pool_3x3"}  # the best op but none
    forced = Derive({"c": scores}, drop_none=False).run(spec).spec
    assert {e.op for e in forced.cell("c").edges} == {"none"}


# ---- stretchable cells: the empty code removes the node ----------------------------------------------------
ANY = """
opset o = {skip_connect, sep_conv_3x3}
cell c {
  inputs a, b
  nodes n0..n2
  edges * -> n* : choice(o)
  topology outputs any
  output concat(n0..n2)
}
"""


def test_empty_code_removes_the_node_for_every_combination_of_codes():
    spec = PassManager([MixedOps(), Topology()]).apply(spec_of(ANY))
    c = spec.cell("c")
    rows = c.beta_rows
    scores = [[0.2, 0.8]] * len(c.alpha_rows)  # sep_conv_3x3 on every kept edge
    checked = 0
    for combo in itertools.product(*(range(len(r.codes)) for r in rows)):
        betas = [F.one_hot(torch.tensor(k), len(r.codes)).double() * 3 for k, r in zip(combo, rows)]
        code = {r.node: r.codes[k] for k, r in zip(combo, rows)}
        # The paper by hand: i -> j exists iff j is in i's code; a node whose code is empty is removed;
        # then nodes left without inputs go (iteratively), the rest stay in the concatenation.
        removed = {n for n in c.node_names if n in code and code[n] == ()}
        alive = [n for n in c.node_names if n not in removed]
        edges = {(i, j) for i, js in code.items() for j in js if i not in removed and j not in removed}
        while True:
            fed = {j for i, j in edges if i in ("a", "b") or i in alive}
            dead = [n for n in alive if n not in fed]
            if not dead:
                break
            alive = [n for n in alive if n not in dead]
            edges = {(i, j) for i, j in edges if i not in dead and j not in dead}
        got = Derive({"c": scores}, keep_edges={"c": most_likely_edges(c, betas)},
                     remove_nodes={"c": removed_nodes(c, betas)}).run(spec).spec.cell("c")  # fmt: skip
        assert set(got.output.nodes) == set(alive), (code, got.output.nodes)
        assert {(e.src, e.dst) for e in got.edges} == edges, code
        assert removed_nodes(c, betas) == removed and most_likely_codes(c, betas) == code
        checked += 1
    assert checked == 8 * 8 * 4 * 2


def test_empty_code_reading_applies_only_to_outputs_any():
    spec = PassManager([MixedOps(), Topology()]).apply(spec_of(ANY.replace("outputs any", "outputs 1")))
    c = spec.cell("c")
    assert removed_nodes(c, [torch.zeros(len(r.codes)) for r in c.beta_rows]) == set()


# ---- settings a researcher needs in the spec ----------------------------------------------------------------
SETTINGS = """search {
  method pcdarts(k = 2)
  lr 0.1
  lr_min 0
  momentum 0.8
  weight_decay 1e-4
  arch_lr 6e-4
  arch_weight_decay 0
  warmup 3
}
"""


def test_optimiser_settings_come_from_the_spec_and_reach_the_optimisers(tmp_path):
    run = _runner(_space(tmp_path, SETTINGS), tmp_path / "r")
    o = run.opt
    assert (o.w_lr, o.w_lr_min, o.momentum, o.w_weight_decay, o.a_lr, o.a_weight_decay, o.warmup) == (0.1, 0.0, 0.8, 1e-4, 6e-4, 0.0, 3)
    group = run.w_opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.8, 1e-4)
    a = run.architect.optimizer.param_groups[0]
    assert (a["lr"], a["weight_decay"]) == (6e-4, 0.0)
    assert run.sched.eta_min == 0.0
    flags = _runner(_space(tmp_path, SETTINGS), tmp_path / "f", w_lr=0.05, a_lr=1e-3, momentum=0.5).opt
    assert (flags.w_lr, flags.a_lr, flags.momentum, flags.w_weight_decay) == (0.05, 1e-3, 0.5, 1e-4)  # flags over the spec
    defaults = _runner(_space(tmp_path), tmp_path / "d").opt  # the papers' (DARTS reference) defaults
    assert (defaults.w_lr, defaults.w_lr_min, defaults.momentum, defaults.w_weight_decay, defaults.a_lr,
            defaults.a_weight_decay) == (0.025, 0.001, 0.9, 3e-4, 3e-4, 1e-3)  # fmt: skip


def test_verify_accepts_the_optimiser_settings():
    assert not verify(spec_of(TINY_SPACE + SETTINGS)).errors


@pytest.mark.parametrize("setting,message,col", [
    ("momentum 1.5", "'momentum' must be a number in [0, 1)", 3),
    ("lr 0", "'lr' must be a positive number (the weight learning rate)", 3),
    ("arch_lr fast", "'arch_lr' must be a positive number (the architecture learning rate)", 3),
    ("warmup 1.5", "'warmup' must be a whole number >= 0", 3),
])  # fmt: skip
def test_bad_optimiser_settings_point_at_the_setting(tmp_path, setting, message, col):
    path = _space(tmp_path, "search {\n  " + setting + "\n}\n")
    with pytest.raises(DiagnosticError) as info:
        _runner(path, tmp_path / "x")
    (d,) = info.value.diagnostics
    assert d.message == message and d.span.col == col and d.span.line == TINY_SPACE.count("\n") + 2


def test_bad_optimiser_flags_are_errors(tmp_path):
    with pytest.raises(DiagnosticError, match=r"momentum must be a number in \[0, 1\), got 2"):
        _runner(_space(tmp_path), tmp_path / "x", momentum=2.0)
    with pytest.raises(DiagnosticError, match="warmup must be a whole number >= 0"):
        _runner(_space(tmp_path), tmp_path / "y", warmup=-1)


def test_cli_flags_set_the_optimisers(tmp_path):
    import argparse

    from nasir.search.cli import add_search_parser, run_search

    parser = argparse.ArgumentParser(prog="nasir")
    add_search_parser(parser.add_subparsers(dest="command"))
    argv = ["search", str(_space(tmp_path)), "--data", "synthetic:16", "--epochs", "1", "--batch-size", "8", "--seed", "0",
            "--device", "cpu", "--set", "C=4", "--set", "layers=3", "--lr", "0.05", "--lr-min", "0", "--momentum", "0.5",
            "--weight-decay", "0", "--arch-lr", "1e-3", "--arch-weight-decay", "0", "--warmup", "0",
            "--out", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert run_search(parser.parse_args(argv)) == 0
    opts = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["options"]
    assert (opts["w_lr"], opts["w_lr_min"], opts["momentum"], opts["w_weight_decay"], opts["a_lr"], opts["a_weight_decay"],
            opts["warmup"]) == (0.05, 0.0, 0.5, 0.0, 1e-3, 0.0, 0)  # fmt: skip
