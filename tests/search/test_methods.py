"""The papers' methods inside the search job: each checked against a computation made here from its files.

OStr selection (strength, OStr*, naive), early stop, SDARTS (RS, ADV, the Hessian eigenvalue),
stretchable cells with MiLeNAS, PC-DARTS; settings from the spec and from the CLI, alone and combined.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import EXAMPLES, TINY_SPACE, spec_of

from nasir.diagnostics import DiagnosticError
from nasir.lower import resolve
from nasir.passes.derive import Derive
from nasir.search.architect import Architect
from nasir.search.cli import add_search_parser, run_search
from nasir.search.hooks import milenas_rule
from nasir.search.runner import Search, make_options, search
from nasir.search.supernet import build_supernet

TINY = dict(data="synthetic:32", overrides=["C=4", "layers=3"], batch_size=8, seed=0, device="cpu", progress=False,
            artifacts=False)  # fmt: skip
SPEC = EXAMPLES / "digits.cell"
STRETCH = TINY_SPACE.replace("keep 2 inputs per node", "topology outputs any").replace(
    "choice(darts)", "choice(darts - none)"
)


def _read(out: Path, name: str):
    return json.loads((out / name).read_text())


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _cells(text: str) -> str:
    """The cells of a derived spec's text (what selection decides), without header and network."""
    return text[text.index("cell ") : text.index("network ")]


def _derive(spec_path, scores, keep_edges=None) -> str:
    from nasir.search.artefacts import canonical as _canonical
    from nasir.search.supernet import prepare

    spec, _ = resolve(spec_path, ["C=4", "layers=3"])
    return _cells(_canonical(Derive(scores, keep_edges=keep_edges).run(prepare(spec)).spec))


def _runner(spec, tmp_path, overrides=(("C", 4), ("layers", 3)), **flags) -> Search:
    spec, plan = resolve(spec, [f"{k}={v}" for k, v in overrides])
    opts = make_options(spec, data="synthetic:32", overrides=dict(overrides), limit_batches=None,
                        channels_last=False, low_memory=False, device=torch.device("cpu"),
                        **{"batch_size": 8, "seed": 0, "epochs": 2, **flags})  # fmt: skip
    return Search(spec, plan, opts, tmp_path, progress=False, artifacts=False)


# ---- settings -------------------------------------------------------------------------------------------
def test_search_block_spells_every_method_and_flags_override_it():
    spec = spec_of(TINY_SPACE + """search {
      method pcdarts(k = 2)
      select strength(window = 3)
      smooth adv(steps = 2, eps = 0.2)
      early_stop 4
      hessian true
    }""")
    kw = dict(data="digits", overrides={}, limit_batches=None, channels_last=False, low_memory=False, device=torch.device("cpu"))
    o = make_options(spec, **kw)
    assert (o.method, o.partial_channels, o.order, o.select, o.strength_window) == ("pcdarts", 2, 1, "strength", 3)
    assert (o.smooth, o.adv_steps, o.eps_start, o.eps_end, o.early_stop, o.hessian) == ("adv", 2, 0.03, 0.2, 4, True)
    o = make_options(spec, **kw, method="darts", partial_channels=1, select="naive", smooth="rs", early_stop=None)
    assert (o.method, o.partial_channels, o.select, o.smooth, o.early_stop) == ("darts", 1, "naive", "rs", 4)
    assert make_options(spec_of(TINY_SPACE), **kw, method="pcdarts").partial_channels == 4  # PC-DARTS' K by default


def test_bad_method_settings_point_at_the_spec_and_flags():
    kw = dict(data="digits", overrides={}, limit_batches=None, channels_last=False, low_memory=False, device=torch.device("cpu"))
    for setting, message, col in [
        ("method pcdarts(k = 0)", "'k' must be a whole number >= 1", 26),
        ("method milenas(order = 2)", "milenas() takes 'lam'; got 'order'", 22),
        ("smooth rs(steps = 3)", "rs() takes 'eps'; got 'steps'", 17),
        ("hessian 3", "'hessian' must be true or false", 7),
        ("early_stop 0", "'early_stop' must be a whole number >= 1", 7),
    ]:
        spec = spec_of(TINY_SPACE + f"search {{\n      {setting}\n}}")
        with pytest.raises(DiagnosticError) as info:
            make_options(spec, **kw)
        d = info.value.diagnostics[0]
        assert message in d.message and (d.span.line, d.span.col) == (TINY_SPACE.count("\n") + 1, col), (setting, d)
    spec = spec_of(TINY_SPACE + "search {\n  method pcdarts(k = 0)\n  smooth rs(steps = 3)\n  hessian 3\n}")
    with pytest.raises(DiagnosticError) as info:  # every bad setting of the file in one report
        make_options(spec, **kw)
    first = TINY_SPACE.count("\n") + 1
    assert [d.span.line for d in info.value.diagnostics] == [first, first + 1, first + 2]
    for flags, message in [
        (dict(method="milenas", order=2), "order 2 does not apply to method milenas"),
        (dict(partial_channels=2), "partial_channels 2 does not apply to method darts"),  # the setting, not the CLI's --pc-k
        (dict(select="bogus"), "select must be one of"),
        (dict(early_stop=0), "early_stop must be a whole number >= 1, got 0"),
    ]:
        with pytest.raises(DiagnosticError, match=message.replace("(", r"\(").replace(")", r"\)")):
            make_options(spec_of(TINY_SPACE), **kw, **flags)
    with pytest.raises(DiagnosticError, match="edge normalisation and topology variables"):
        make_options(spec_of(STRETCH), **kw, method="pcdarts")


# ---- OStr-DARTS -----------------------------------------------------------------------------------------
def test_strength_is_the_mean_abs_alpha_gradient_of_the_last_b_steps_and_selects(tmp_path):
    runner = _runner(SPEC, tmp_path, select="strength", strength_window=3, epochs=2)
    seen: list[dict[str, torch.Tensor]] = []
    runner.callback = lambda info: seen.append({k: g.abs().clone() for k, g in zip(runner.model.alphas, runner.architect.last_grads)})
    runner.run()
    assert len(seen) == 4  # 2 epochs x 2 steps
    strengths = _read(tmp_path, "strengths.json")
    for kind in ("normal", "reduce"):
        by_hand = torch.stack([s[kind] for s in seen[-3:]]).mean(0).double()
        assert torch.allclose(torch.tensor(strengths[kind], dtype=torch.float64), by_hand, rtol=1e-6, atol=1e-12)
        first_epoch = torch.stack([s[kind] for s in seen[:2]]).mean(0).double()  # the window held 2 steps then
        assert torch.allclose(torch.tensor(_read(tmp_path, "strengths/epoch_001.json")[kind], dtype=torch.float64), first_epoch, rtol=1e-6)
    assert _cells((tmp_path / "derived.cell").read_text()) == _derive(SPEC, strengths)
    # The selection differs from magnitude's on these numbers (else this test could not tell them apart).
    assert _derive(SPEC, strengths) != _derive(SPEC, {k: torch.tensor(v).softmax(-1).tolist() for k, v in _read(tmp_path, "alphas.json").items()})


def test_ostr_star_divides_strength_by_the_softmax_weight(tmp_path):
    result = search(SPEC, out=tmp_path, epochs=1, select="strength_star", **TINY)
    s, a = _read(tmp_path, "strengths.json"), _read(tmp_path, "alphas.json")
    star = {k: (torch.tensor(s[k], dtype=torch.float64) / torch.tensor(a[k], dtype=torch.float64).softmax(-1)).tolist() for k in s}
    assert _cells(result.derived_text) == _derive(SPEC, star)


@pytest.mark.slow
def test_naive_criterion_is_the_loss_increase_when_one_op_is_removed(tmp_path):
    runner = _runner(SPEC, tmp_path, select="naive", epochs=1)
    runner.run()
    scores = runner.removal_scores()
    model = runner.model
    x, y = runner._fixed_batch()
    stats = [b.clone() for b in model.buffers()]

    def loss(soft):  # the supernet through SDARTS' `soft` path, an independent route to the weights
        with torch.no_grad():
            out = float(F.cross_entropy(model(x, soft=soft), y))
        for b, v in zip(model.buffers(), stats):
            b.copy_(v)
        return out

    soft = {k: v.detach() for k, v in model.softmax_weights().items()}
    base = loss(soft)
    for kind, e, o in [("normal", 0, 4), ("normal", 13, 1), ("reduce", 5, 7)]:
        cut = {k: v.clone() for k, v in soft.items()}
        cut[kind][e, o] = 0.0
        assert float(scores[kind][e, o]) == pytest.approx(loss(cut) - base, rel=1e-4, abs=1e-6)
    assert float(scores["normal"][0, 0]) == pytest.approx(0.0, abs=1e-7)  # `none` computes nothing
    assert model.op_mask is None


def test_early_stop_ends_after_c_unchanged_epochs(tmp_path):
    # A space whose only architecture is fixed from the start (one op per edge, every edge kept):
    # the derivation repeats every epoch, so Algorithm 1 with C = 2 stops after epoch 3.
    path = tmp_path / "one.cell"
    path.write_text("""opset tiny = {skip_connect}
cell c {
  inputs x
  nodes n1..n3
  edges * -> n* : choice(tiny)
  output n3
}
network t(C = 4, classes = 10) {
  input (1, 8, 8)
  stem conv3x3(C), bn
  stack 2 cells(C): c
  head bn, relu, global_avg_pool, linear(classes)
}
""")
    kw = {**TINY, "overrides": None, "data": "synthetic:16"}
    result = search(path, out=tmp_path / "run", epochs=6, early_stop=2, **kw)
    assert [m["unchanged_epochs"] for m in result.metrics] == [0, 1, 2]
    assert result.metrics[-1]["early_stop"] is True and "early_stop" not in result.metrics[1]
    again = search(path, out=tmp_path / "run", epochs=6, early_stop=2, resume=True, **kw)
    assert len(again.metrics) == 3  # resuming a stopped search does not train on
    longer = search(path, out=tmp_path / "run2", epochs=3, early_stop=5, **kw)
    assert [m["unchanged_epochs"] for m in longer.metrics] == [0, 1, 2] and "early_stop" not in longer.metrics[-1]


# ---- SDARTS -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smoothing_perturbs_on_the_simplex_and_the_radius_grows_as_the_authors_schedule(tmp_path):
    runner = _runner(SPEC, tmp_path, smooth="adv", adv_steps=3, epochs=3)
    batch = runner._batch(runner.w_idx, 0, 0)
    soft = {k: v.detach() for k, v in runner.model.softmax_weights().items()}
    runner.model.eval()
    with torch.no_grad():  # the attack runs in eval mode: its losses are eval-mode losses
        clean = float(F.cross_entropy(runner.model(batch[0]), batch[1]))
    runner.model.train()
    adv = runner._smoothed(batch, 0.3)
    assert runner.model.training  # back in train mode for the weight step
    for k in soft:
        assert float(adv[k].min()) >= 0 and adv[k].sum(-1).tolist() == pytest.approx([1.0] * len(adv[k]), abs=1e-6)
        assert float((adv[k] - soft[k]).abs().max()) > 0.05
    runner.model.eval()
    with torch.no_grad():
        assert float(F.cross_entropy(runner.model(batch[0], soft=adv), batch[1])) >= clean  # kept only if it ascends
    runner.model.train()
    runner.run()
    # 0.03 + (0.3 - 0.03) * epoch / epochs (docs/methods.md, SDARTS), epoch 0, 1, 2 of 3.
    assert [m["eps"] for m in _metrics(tmp_path)] == pytest.approx([0.03, 0.12, 0.21])
    rs = _runner(SPEC, tmp_path / "rs", smooth="rs")
    noisy = rs._smoothed(batch, 0.1)
    for k in soft:
        assert float(noisy[k].min()) >= 0 and noisy[k].sum(-1).tolist() == pytest.approx([1.0] * len(noisy[k]), abs=1e-6)


def test_hessian_eigenvalue_matches_the_full_hessian(tmp_path):
    runner = _runner(EXAMPLES / "nb201.cell", tmp_path, overrides=(("C", 4), ("N", 1)))  # 6 x 5 alphas: a small Hessian
    model = runner.model
    x, y = runner._fixed_batch()
    (alpha,) = model.alpha_parameters()
    stats = [b.clone() for b in model.buffers()]
    grad = torch.autograd.grad(F.cross_entropy(model(x), y), alpha, create_graph=True)[0].flatten()
    rows = [torch.autograd.grad(grad[i], alpha, retain_graph=True)[0].flatten() for i in range(grad.numel())]
    for b, v in zip(model.buffers(), stats):
        b.copy_(v)
    H = torch.stack(rows).double()
    largest = float(torch.linalg.eigvalsh((H + H.T) / 2)[-1])  # the largest algebraic eigenvalue, as the authors report
    eig = runner.hessian_eigenvalue()
    assert (eig.method, eig.converged) == ("lanczos", True) and eig.products <= 20  # 30 alphas: Lanczos beats forming H
    assert eig.value == pytest.approx(largest, rel=1e-4)


@pytest.mark.slow
def test_hessian_is_recorded_per_epoch(tmp_path):
    result = search(SPEC, out=tmp_path, epochs=2, hessian=True, **TINY)
    assert all(isinstance(m["hessian_eig"], float) and m["hessian_eig"] != 0.0 for m in result.metrics)
    assert all(isinstance(m["hessian_converged"], bool) and m["hessian_method"] == "lanczos" for m in result.metrics)


# ---- stretchable cells, MiLeNAS, PC-DARTS -------------------------------------------------------------
def test_mixed_level_gradient_is_that_of_train_plus_lambda_val():
    spec = spec_of(STRETCH)
    model = build_supernet(spec, seed=0)
    arch = Architect(model, rule=milenas_rule(None), mixed_level=0.5)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(3)]
    grads, _, _ = arch.gradient(batches[0], batches[1], xi=0.0, valid_beta=batches[2])
    params = model.arch_parameters()
    n_alpha = len(model.alpha_parameters())
    lt = F.cross_entropy(model(batches[0][0]), batches[0][1])
    lv = F.cross_entropy(model(batches[1][0]), batches[1][1])
    lb = F.cross_entropy(model(batches[2][0]), batches[2][1])
    want = torch.autograd.grad(lt + 0.5 * lv, params[:n_alpha], retain_graph=True)
    want += torch.autograd.grad(lt + 0.5 * lb, params[n_alpha:])
    assert len(grads) == len(want) == n_alpha + 10  # 2 kinds x 5 beta rows (x_1, x_2, n0, n1, n2)
    for a, b in zip(grads, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)


def test_stretchable_search_keeps_the_edges_of_the_most_likely_codes(tmp_path):
    path = tmp_path / "s.cell"
    path.write_text(STRETCH + "search {\n  method milenas\n  select magnitude\n}\n")
    runner = _runner(path, tmp_path / "run", epochs=2)
    assert [len(s) for s in runner.splits] == [10, 10, 12] and runner.steps == 1  # three ways, 32 images
    result = runner.run()
    betas = _read(tmp_path / "run", "betas.json")
    cell = runner.spec.cell("normal")
    keep: set[tuple[str, str]] = set()
    for row, b in zip(cell.beta_rows, betas["normal"]):
        code = row.codes[max(range(len(b)), key=b.__getitem__)]
        keep |= {(row.node, j) for j in code}
    derived = result.derived.cell("normal")
    kept = {(e.src, e.dst) for e in derived.edges}
    alive = {n for n in derived.node_names}
    assert kept == {(i, j) for i, j in keep if j in alive and (i in alive or i not in cell.node_names)}
    assert "topology" not in result.derived_text and "none" not in result.derived_text
    assert result.metrics[-1]["arch_loss"] > 0


def test_passive_aggressive_regulariser_enters_the_beta_gradient():
    spec = spec_of(STRETCH)
    model = build_supernet(spec, seed=0)
    from nasir.search.topology import passive_aggressive

    with torch.no_grad():  # make the most likely codes leave n1 without input, so r > 0
        for rows in model.betas.values():
            for row, b in zip(model.cells["normal"].beta_rows, rows):
                b.copy_(torch.tensor([0.0 if "n1" in c else 1.0 for c in row.codes]))
    reg = lambda: 10 * sum(passive_aggressive(model.cells[k], list(r)) for k, r in model.betas.items())  # noqa: E731
    assert float(reg().detach()) > 0
    batch = (torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    plain, _, _ = Architect(model).gradient(batch, batch, xi=0.0)
    with_reg, _, _ = Architect(model, regularizer=reg).gradient(batch, batch, xi=0.0)
    want = torch.autograd.grad(reg(), model.arch_parameters(), allow_unused=True)
    for p, a, b, r in zip(model.arch_parameters(), plain, with_reg, want):
        assert torch.allclose(b, a + (0 if r is None else r), atol=1e-9), p.shape


def test_pcdarts_derives_from_edge_normalised_scores(tmp_path):
    from nasir.search.supernet import prepare

    result = search(SPEC, out=tmp_path, epochs=1, method="pcdarts", partial_channels=2, warmup=0, **TINY)
    a, g = _read(tmp_path, "alphas.json"), _read(tmp_path, "gammas.json")
    spec, _ = resolve(SPEC, ["C=4", "layers=3"])
    scores = {}
    for kind in a:
        soft = torch.tensor(a[kind], dtype=torch.float64).softmax(-1)
        edges = [e for e in prepare(spec).cell(kind).edges if e.alpha is not None]
        weight = torch.empty(len(edges), dtype=torch.float64)
        for e in edges:  # PC-DARTS: a softmax of gamma over the edges into the same node
            into = [x.alpha for x in edges if x.dst == e.dst]
            weight[e.alpha] = torch.tensor([g[kind][r] for r in into], dtype=torch.float64).softmax(0)[into.index(e.alpha)]
        scores[kind] = (soft * weight[:, None]).tolist()
    assert _cells(result.derived_text) == _derive(SPEC, scores)
    full = sum(p.numel() for p in build_supernet(spec).weight_parameters())
    assert sum(p.numel() for p in build_supernet(spec, partial_channels=2).weight_parameters()) < full


# ---- combined, from the CLI -------------------------------------------------------------------------------
@pytest.mark.slow
def test_methods_combine_from_cli_flags(tmp_path, capsys):
    path = tmp_path / "s.cell"
    path.write_text(STRETCH)
    parser = argparse.ArgumentParser(prog="nasir")
    add_search_parser(parser.add_subparsers(dest="command"))
    argv = ["search", str(path), "--data", "synthetic:32", "--epochs", "2", "--batch-size", "8", "--seed", "0",
            "--device", "cpu", "--method", "milenas", "--smooth", "rs", "--select", "strength-star", "--hessian",
            "--early-stop", "5", "--out", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert run_search(parser.parse_args(argv)) == 0
    metrics = _metrics(tmp_path / "run")
    assert [m["eps"] for m in metrics] == pytest.approx([0.03, 0.165]) and all("hessian_eig" in m for m in metrics)
    for name in ("alphas.json", "strengths.json", "betas.json", "betas/epoch_002.json", "derived.cell"):
        assert (tmp_path / "run" / name).is_file(), name
    opts = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["options"]
    assert (opts["method"], opts["smooth"], opts["select"], opts["early_stop"], opts["hessian"]) == ("milenas", "rs", "strength_star", 5, True)
    # The derived stretchable cell concatenates fewer nodes than the space: the ONNX export and the
    # budget's cost function elaborate its own channels (they used to reuse the supernet's plan).
    import nasir
    from nasir.search.artefacts import cost_fn
    from nasir.targets.blocks import count_params

    derived = nasir.load(tmp_path / "run" / "derived.cell")
    assert "concat(" in (tmp_path / "run" / "derived.cell").read_text() and (tmp_path / "run" / "derived.onnx").is_file()
    _, space_plan = resolve(path, [])
    want = count_params(nasir.build(tmp_path / "run" / "derived.cell"))
    assert cost_fn(space_plan)(derived)["params"] == want
