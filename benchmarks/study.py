"""A small study: do the methods of four NAS papers do what the papers claim, on the embedded digits?

    python benchmarks/study.py [--seeds 0 1] [--epochs N] [--out benchmarks/results]
    python benchmarks/study.py --quick        # 1 epoch, 2 batches per run: checks that the script works

Runs (each seed), all on scikit-learn's 8 x 8 digits (`data="digits"`), CPU, one thread, with the
dominant Hessian eigenvalue of L_val w.r.t. alpha recorded after every epoch (`hessian=True`):

  DARTS        examples/digits.cell, first-order DARTS, magnitude selection (softmax(alpha), top-2 per node)
  OStr-DARTS   the same search, operation-strength selection (OStr-DARTS Eq. 11) and Algorithm 1's early stop
  SDARTS-RS    examples/digits.cell, random smoothing of alpha in the weight step
  SDARTS-ADV   examples/digits.cell, adversarial (PGD) smoothing, `--adv-steps` PGD steps (the paper uses 7;
               reduced here, default 3, to fit the time budget)
  Stretchable  examples/digits_stretchable.cell: `topology outputs any`, `choice(darts - none)`, MiLeNAS

DARTS and OStr-DARTS share ONE search. OStr-DARTS changes only the selection rule; the supernet
optimisation is the same (nasir/search/strength.py; the operation strength is recorded in every search
whatever `select` says, without extra cost). The runtime writes, after every epoch, softmax's input
`alphas/epoch_NNN.json` and the strengths averaged over that epoch's architecture steps
`strengths/epoch_NNN.json` (the window B = steps per epoch, the runtime's default); the script derives
from them with `passes/derive.py`'s `Derive(scores)` on the prepared space, as `Search.derive()` does:
scores softmax(alpha) for magnitude, the strengths as they are for OStr. The OStr-DARTS row replays
Algorithm 1 (early stop after the derived architecture repeats C = `--patience` times in a row, the
runtime's `EarlyStop` class) on the per-epoch strength derivations: the search before the stop is
exactly what `select="strength", early_stop=C` would have run, so the row reports the architecture,
Hessian eigenvalue and supernet accuracy of the epoch it stops at (the last epoch if it never stops).
As a check the script re-derives every run's final magnitude architecture the same way and warns when
it differs from the runtime's `SearchResult.derived`.

Budget (defaults; one busy core, roughly 15-25 minutes for one seed): the supernet has `--layers 3`
cells (normal, reduce, reduce; examples/digits.cell has 5), C = 8, batch 32, `--epochs 8` epochs of
`--batches 8` steps each (64 architecture steps; the papers run about 20,000 on CIFAR-10), so these are
early-search observations. Hessian power iterations cost about as much as an epoch's steps here.
Each derived architecture is retrained in the digits network at its defaults (C = 8, 5 layers, as DARTS
retrains a deeper network than it searched) with the `digits` preset for `--retrain-epochs` epochs
(default 4, the preset has 8); "held-out acc" is the accuracy on the preset's held-out 20 % after the
last epoch. Identical derived architectures are retrained once.

Reported per derived architecture: the proportion of parameter-free ops among its edges (nasir/ops.py
REGISTRY `parameter_free`: none, skip_connect, max/avg pool; note skip_connect at stride 2 in a
reduction cell is a FactorizedReduce with weights, counted parameter-free by the registry's name-level
flag as the papers count it), skip connections per cell kind, the final Hessian eigenvalue, cell depth
and width (nasir/analysis.py, SDARTS appendix 7.4) of the normal and reduction cells, the supernet's
valid accuracy (on the architecture half, `--batches` batches) and the held-out accuracy after retraining.

Outputs in `--out`: study.md (the table and comparison sentences computed from the numbers), study.json
(the raw rows, per-epoch series and settings), study.png (Hessian eigenvalue per epoch; parameter-free
proportion per epoch under each run's selection rule; final parameter-free proportion per run). Search
directories go to `--runs` (default: a temporary directory, deleted at the end).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits.cell"
STRETCHABLE = ROOT / "examples" / "digits_stretchable.cell"

# (row name, search key, selection) — a search key names one supernet optimisation.
SEARCHES = {
    "darts": dict(spec=DIGITS, method="darts"),
    "rs": dict(spec=DIGITS, method="darts", smooth="rs"),
    "adv": dict(spec=DIGITS, method="darts", smooth="adv"),
    "stretch": dict(spec=STRETCHABLE, method="milenas"),
}
ROWS = (
    ("DARTS", "darts", "magnitude"),
    ("OStr-DARTS", "darts", "strength"),
    ("SDARTS-RS", "rs", "magnitude"),
    ("SDARTS-ADV", "adv", "magnitude"),
    ("Stretchable", "stretch", "magnitude"),
)


# ---- derivation from the per-epoch score files ---------------------------------------------------------
def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def derive(prepared, scores: dict[str, list[list[float]]], betas: dict[str, list[list[float]]] | None):
    """What `Search.derive()` computes, from score tables on disk (no budgets or limits in these spaces)."""
    from nasir.passes.derive import Derive
    from nasir.search.topology import most_likely_edges

    keep = {}
    for kind, rows in (betas or {}).items():
        keep[kind] = most_likely_edges(prepared.cell(kind), [torch.tensor(r, dtype=torch.float64) for r in rows])
    return Derive(scores, keep_edges=keep).run(prepared).spec


def magnitude(alphas: dict[str, list[list[float]]]) -> dict[str, list[list[float]]]:
    return {k: torch.tensor(v, dtype=torch.float64).softmax(-1).tolist() for k, v in alphas.items()}


def epoch_scores(run_dir: Path, epoch: int, select: str) -> tuple[dict, dict | None]:
    name = f"epoch_{epoch:03d}.json"
    betas = _read(run_dir / "betas" / name) if (run_dir / "betas" / name).exists() else None
    if select == "strength":
        return _read(run_dir / "strengths" / name), betas
    return magnitude(_read(run_dir / "alphas" / name)), betas


# ---- what is measured on a derived spec ------------------------------------------------------------------
def shape(spec) -> dict[str, Any]:
    """Parameter-free proportion, skip connections, depth and width per cell kind of a derived spec."""
    from nasir import ops
    from nasir.analysis import cell_depth, cell_width

    out: dict[str, Any] = {"edges": 0, "param_free": 0}
    for c in spec.cells:
        kind = "reduce" if c.reduction else "normal"
        used = [e.op for e in c.edges if e.op is not None]
        pf = sum(ops.REGISTRY[o].parameter_free for o in used)
        out["edges"] += len(used)
        out["param_free"] += pf
        out[kind] = {
            "cell": c.name, "edges": len(used), "param_free": pf, "skip": used.count("skip_connect"),
            "ops": used, "depth": cell_depth(c), "width": float(cell_width(c)),
        }  # fmt: skip
    out["param_free_frac"] = out["param_free"] / max(out["edges"], 1)
    return out


def replay_early_stop(archs: list[str], patience: int) -> int:
    """The epoch (1-based) Algorithm 1 stops at, with the runtime's EarlyStop; the last one if it never does."""
    from nasir.search.strength import EarlyStop

    stop = EarlyStop(patience)
    for i, a in enumerate(archs):
        if stop.update(a):
            return i + 1
    return len(archs)


# ---- the runs -----------------------------------------------------------------------------------------
def run_search(key: str, seed: int, args, runs: Path) -> dict[str, Any]:
    from nasir.compile import resolve
    from nasir.search.runner import derived_text, search
    from nasir.search.supernet import prepare

    cfg = SEARCHES[key]
    out = runs / f"{key}_s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"layers={args.layers}"]
    extra = {"smooth": cfg["smooth"]} if "smooth" in cfg else {}
    if cfg.get("smooth") == "adv":
        extra["adv_steps"] = args.adv_steps
    t0 = time.perf_counter()
    res = search(cfg["spec"], data="digits", out=out, epochs=args.epochs, seed=seed, method=cfg["method"], order=1,
                 select="magnitude", hessian=True, batch_size=args.batch_size, limit_batches=args.batches,
                 device="cpu", progress=False, artifacts=False, overrides=overrides, **extra)  # fmt: skip
    wall = time.perf_counter() - t0
    spec, _ = resolve(cfg["spec"], overrides)
    prepared = prepare(spec)
    epochs = len(res.metrics)
    per_select: dict[str, list] = {}
    for select in ("magnitude", "strength") if key == "darts" else ("magnitude",):
        per_select[select] = [derive(prepared, *epoch_scores(out, e, select)) for e in range(1, epochs + 1)]
    final = derived_text(per_select["magnitude"][-1], str(cfg["spec"]), {"layers": args.layers})
    if final != res.derived_text:
        print(f"  WARNING: {key} seed {seed}: re-derived magnitude architecture differs from SearchResult.derived",
              file=sys.stderr)  # fmt: skip
    print(f"  search {key:<8} seed {seed}: {wall:7.1f} s  ({epochs} epochs x {res.metrics[0]['steps']} steps; "
          f"lambda_max {res.metrics[-1].get('hessian_eig', float('nan')):.4g}, supernet valid acc {res.metrics[-1]['valid_acc']:.3f})",
          flush=True)  # fmt: skip
    return {"key": key, "seed": seed, "dir": out, "result": res, "wall": wall, "derived": per_select}


def retrain(spec, text: str, seed: int, args, out: Path, cache: dict[str, dict]) -> dict[str, Any]:
    from nasir.train import TrainConfig, train

    if text in cache:
        return {**cache[text], "reused": True}
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig.from_preset("digits", epochs=args.retrain_epochs, seed=seed, limit_batches=args.retrain_batches)
    t0 = time.perf_counter()
    last = train(spec, "digits", out, cfg, device="cpu", progress=False)
    r = {"held_out_acc": last["valid_acc"], "best_held_out_acc": last["best_valid_acc"], "retrain_s": time.perf_counter() - t0,
         "retrain_epochs": args.retrain_epochs, "reused": False}  # fmt: skip
    cache[text] = r
    return r


def study(args, runs: Path) -> list[dict[str, Any]]:
    from nasir.search.runner import derived_text

    rows = []
    for seed in args.seeds:
        searches = {key: run_search(key, seed, args, runs) for key in SEARCHES}
        cache: dict[str, dict] = {}
        for name, key, select in ROWS:
            s = searches[key]
            res = s["result"]
            archs = s["derived"][select]
            texts = [derived_text(a, res.derived.file) for a in archs]
            epoch = replay_early_stop(texts, args.patience) if select == "strength" else len(archs)
            spec, text = archs[epoch - 1], texts[epoch - 1]
            m = res.metrics[epoch - 1]
            t0 = time.perf_counter()
            rt = retrain(spec, text, seed, args, s["dir"] / f"retrain_{select}", cache)
            print(f"  retrain {name:<12} seed {seed}: {time.perf_counter() - t0:7.1f} s  held-out acc {rt['held_out_acc']:.3f}"
                  + ("  (same architecture as an earlier row: reused)" if rt["reused"] else ""), flush=True)  # fmt: skip
            curve = [shape(a)["param_free_frac"] for a in archs]
            rows.append({
                "run": name, "seed": seed, "search": key, "select": select, "method": SEARCHES[key]["method"],
                "smooth": SEARCHES[key].get("smooth", "none"), "epoch": epoch, "epochs": len(archs),
                "stopped_early": select == "strength" and epoch < len(archs), "search_s": s["wall"],
                "patience": args.patience if select == "strength" else None,
                "hessian_eig": m.get("hessian_eig"), "supernet_valid_acc": m["valid_acc"],
                "shape": shape(spec), **rt, "derived": text,
                "per_epoch": {
                    "hessian_eig": [r.get("hessian_eig") for r in res.metrics],
                    "valid_acc": [r["valid_acc"] for r in res.metrics],
                    "param_free_frac": curve,
                    "skip_normal": [shape(a).get("normal", {}).get("skip", 0) for a in archs],
                },
            })  # fmt: skip
    return rows


# ---- reporting ----------------------------------------------------------------------------------------
def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.fmean(xs) if xs else float("nan")


def by_run(rows) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["run"], []).append(r)
    return out


def table(rows) -> str:
    head = ("| run | seed | epoch | search s | param-free | skip N/R | λ_max (final) | depth N/R | width N/R "
            "| supernet valid acc | held-out acc (retrained) |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        sh = r["shape"]
        n, red = sh.get("normal", {}), sh.get("reduce", {})
        ep = f"{r['epoch']}/{r['epochs']}" + (" (early stop)" if r["stopped_early"] else "")
        shared = " (= DARTS search)" if r["select"] == "strength" else ""
        lines.append(
            f"| {r['run']} | {r['seed']} | {ep} | {r['search_s']:.0f}{shared} | {sh['param_free']}/{sh['edges']} = {sh['param_free_frac']:.2f} "
            f"| {n.get('skip', 0)}/{red.get('skip', 0)} | {r['hessian_eig']:.4g} | {n.get('depth', '-')}/{red.get('depth', '-')} "
            f"| {n.get('width', 0):.3g}c/{red.get('width', 0):.3g}c | {r['supernet_valid_acc']:.3f} | {r['held_out_acc']:.3f} |"
        )  # fmt: skip
    return "\n".join(lines)


def _cmp(a: float, b: float, tol: float = 1e-9) -> str:
    return "higher than" if a > b + tol else "lower than" if a < b - tol else "equal to"


def claims(rows) -> list[str]:
    """Comparison sentences computed from the numbers (means over seeds)."""
    g = by_run(rows)
    n = len({r["seed"] for r in rows})
    of = f" (mean over {n} seeds)" if n > 1 else ""
    out = []

    def series(run, field):
        return [r["per_epoch"][field] for r in g[run]]

    def mean_at(run, field, i):
        return _mean([s[i] for s in series(run, field) if len(s) > i])

    # 1. OStr-DARTS: magnitude favours parameter-free ops (skip connections) as the search runs long.
    d, o = g["DARTS"], g["OStr-DARTS"]
    first, last = mean_at("DARTS", "param_free_frac", 0), mean_at("DARTS", "param_free_frac", -1)
    skip0, skip1 = mean_at("DARTS", "skip_normal", 0), mean_at("DARTS", "skip_normal", -1)
    o_first, o_last = mean_at("OStr-DARTS", "param_free_frac", 0), mean_at("OStr-DARTS", "param_free_frac", -1)
    d_pf, o_pf = _mean(r["shape"]["param_free_frac"] for r in d), _mean(r["shape"]["param_free_frac"] for r in o)
    rising = last > first + 1e-9
    more = d_pf > o_pf + 1e-9
    stops = [r["epoch"] for r in o if r["stopped_early"]]
    stop_text = (f"stopped early at epoch {', '.join(map(str, stops))} ({len(stops)} of {len(o)} seeds)" if stops
                 else f"did not stop early (ran all {o[0]['epochs']} epochs)")  # fmt: skip
    out.append(
        f"**Magnitude vs operation strength (OStr-DARTS).** On the DARTS supernet{of}, magnitude selection's proportion of "
        f"parameter-free ops went from {first:.2f} after epoch 1 to {last:.2f} after epoch {d[0]['epochs']} "
        f"(skip connections in the normal cell {skip0:.2g} -> {skip1:.2g}); strength selection on the same supernet went "
        f"{o_first:.2f} -> {o_last:.2f}. Algorithm 1 (C = {o[0].get('patience', '?')}) {stop_text}; there OStr selects "
        f"{o_pf:.2f} parameter-free, magnitude at its last epoch {d_pf:.2f} ({_cmp(d_pf, o_pf)} OStr). "
        + ("The claim that magnitude drifts towards parameter-free ops as the search runs, and OStr does not, is visible here."
           if rising and more else
           "The claim is only partly visible here: " + ("magnitude's proportion rose" if rising else "magnitude's proportion did not rise over the epochs")
           + (", and magnitude ends with more parameter-free ops than OStr." if more else ", and magnitude does not end with more parameter-free ops than OStr.")
           if rising or more else
           "The claim is not visible at this search length: magnitude's proportion did not rise and it does not end above OStr's.")
    )  # fmt: skip
    # 2. SDARTS: smoothing keeps the dominant Hessian eigenvalue lower.
    lam = {run: _mean(r["hessian_eig"] for r in g[run]) for run in ("DARTS", "SDARTS-RS", "SDARTS-ADV")}
    lam0 = mean_at("DARTS", "hessian_eig", 0)
    lower = [run for run in ("SDARTS-RS", "SDARTS-ADV") if lam[run] < lam["DARTS"]]
    grew = lam["DARTS"] > lam0
    out.append(
        f"**Smoothing and the Hessian (SDARTS).** Final dominant eigenvalue of the Hessian of L_val w.r.t. alpha{of}: "
        f"DARTS {lam['DARTS']:.4g} (epoch 1: {lam0:.4g}, so it {'grew' if grew else 'did not grow'}), SDARTS-RS {lam['SDARTS-RS']:.4g} "
        f"({_cmp(lam['SDARTS-RS'], lam['DARTS'])} DARTS), SDARTS-ADV {lam['SDARTS-ADV']:.4g} ({_cmp(lam['SDARTS-ADV'], lam['DARTS'])} DARTS). "
        + ("The claim that smoothing keeps the eigenvalue lower is visible for both RS and ADV." if len(lower) == 2 else
           f"The claim is visible for {lower[0]} only." if lower else
           "The claim is not visible here: neither smoothed run ends below DARTS.")
    )  # fmt: skip

    # 3. Stretchable cells come out deeper.
    def depth(run, kind):
        return _mean(r["shape"].get(kind, {}).get("depth") for r in g[run])

    sd, dd = (
        (depth("Stretchable", "normal"), depth("Stretchable", "reduce")),
        (depth("DARTS", "normal"), depth("DARTS", "reduce")),
    )
    sw, dw = (_mean(r["shape"].get("normal", {}).get("width") for r in g["Stretchable"]),
              _mean(r["shape"].get("normal", {}).get("width") for r in g["DARTS"]))  # fmt: skip
    deeper = sum(s > t for s, t in zip(sd, dd))
    out.append(
        f"**Stretchable cells.** Depth normal/reduce{of}: stretchable {sd[0]:.3g}/{sd[1]:.3g}, DARTS {dd[0]:.3g}/{dd[1]:.3g}; "
        f"normal-cell width {sw:.3g}c vs {dw:.3g}c. "
        + ("The stretchable cells come out deeper in both cell kinds, as claimed." if deeper == 2 else
           "The stretchable cells come out deeper in one cell kind only." if deeper == 1 else
           "The claim that stretchable cells come out deeper is not visible here.")
    )  # fmt: skip
    # Accuracy, for the record (the papers' accuracy claims need many seeds and full budgets).
    acc = {run: _mean(r["held_out_acc"] for r in g[run]) for run in g}
    best = max(acc, key=acc.get)
    out.append(
        "**Retrained accuracy** (held-out digits, short retraining; differences of one seed are within noise): "
        + ", ".join(f"{run} {a:.3f}" for run, a in acc.items()) + f"; highest: {best}."
    )  # fmt: skip
    return out


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    g = by_run(rows)
    colors = {"DARTS": "C0", "OStr-DARTS": "C1", "SDARTS-RS": "C2", "SDARTS-ADV": "C3", "Stretchable": "C4"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for run in ("DARTS", "SDARTS-RS", "SDARTS-ADV", "Stretchable"):
        for i, r in enumerate(g.get(run, [])):
            ys = r["per_epoch"]["hessian_eig"]
            ax.plot(range(1, len(ys) + 1), ys, "o-", color=colors[run], alpha=1.0 if i == 0 else 0.5,
                    label=(run + (" (= OStr supernet)" if run == "DARTS" else "")) if i == 0 else None)  # fmt: skip
    ax.set_title("λ_max of ∇²_α L_val per epoch", fontsize=10)
    ax.set(xlabel="epoch", ylabel="λ_max")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax = axes[1]
    for run, rs in g.items():
        for i, r in enumerate(rs):
            ys = r["per_epoch"]["param_free_frac"]
            ax.plot(range(1, len(ys) + 1), ys, "o-" if run != "OStr-DARTS" else "s--", color=colors[run],
                    alpha=1.0 if i == 0 else 0.5, label=run if i == 0 else None)  # fmt: skip
            if r["stopped_early"]:
                ax.plot([r["epoch"]], [ys[r["epoch"] - 1]], "k*", markersize=12)
    ax.set_title("param-free proportion, derived each epoch (★ early stop)", fontsize=10)
    ax.set(xlabel="epoch", ylabel="proportion", ylim=(-0.05, 1.05))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax = axes[2]
    names = list(g)
    vals = [_mean(r["shape"]["param_free_frac"] for r in g[n]) for n in names]
    bars = ax.bar(range(len(names)), vals, color=[colors[n] for n in names])
    for b, n in zip(bars, names):
        dn = _mean(r["shape"].get("normal", {}).get("depth") for r in g[n])
        dr = _mean(r["shape"].get("reduce", {}).get("depth") for r in g[n])
        ax.text(
            b.get_x() + b.get_width() / 2, b.get_height() + 0.01, f"depth {dn:.2g}/{dr:.2g}", ha="center", fontsize=8
        )
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_title("param-free proportion of the reported architecture", fontsize=10)
    ax.set(ylim=(0, 1.05))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=8, help="search epochs (default 8)")
    p.add_argument("--batches", type=int, default=8, help="steps per search epoch (limit_batches; default 8)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--layers", type=int, default=3, help="cells in the supernet (default 3: normal, reduce, reduce)")
    p.add_argument("--adv-steps", type=int, default=3, help="PGD steps of SDARTS-ADV (the paper: 7)")
    p.add_argument("--patience", type=int, default=3, help="C of OStr-DARTS' Algorithm 1 (default 3)")
    p.add_argument("--retrain-epochs", type=int, default=4)
    p.add_argument("--retrain-batches", type=int, default=None, help="limit steps per retraining epoch")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results (--quick: a temporary directory)")
    p.add_argument("--runs", type=Path, default=None, help="keep the search directories here (default: temporary)")
    p.add_argument("--quick", action="store_true", help="1 epoch, 2 batches per run, 1 retraining epoch of 2 batches")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.batches, args.retrain_epochs, args.retrain_batches = 1, 2, 1, 2
    if args.out is None:
        args.out = (
            Path(tempfile.mkdtemp(prefix="nasir-study-quick-")) if args.quick else ROOT / "benchmarks" / "results"
        )
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.runs or Path(tempfile.mkdtemp(prefix="nasir-study-runs-"))
    t0 = time.perf_counter()
    try:
        rows = study(args, runs)
    finally:
        if args.runs is None:
            shutil.rmtree(runs, ignore_errors=True)
    total = time.perf_counter() - t0
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(data="digits", device="cpu", torch=torch.__version__, total_s=round(total, 1))
    md = [
        "# nasir study: DARTS, OStr-DARTS, SDARTS-RS/ADV, stretchable cells on the embedded digits",
        "",
        "Command: `" + " ".join(["python benchmarks/study.py", *(sys.argv[1:] if argv is None else argv)]) + "`",
        f"Settings: seeds {args.seeds}, {args.epochs} search epochs x {args.batches} steps (batch {args.batch_size}), "
        f"{args.layers}-cell supernet, SDARTS-ADV {args.adv_steps} PGD steps, OStr early stop C = {args.patience}, "
        f"retraining {args.retrain_epochs} epochs of the digits preset (5-cell network); total wall time {total:.0f} s.",
        "",
        table(rows),
        "",
        "param-free: edges of the derived cells (normal + reduce) carrying none, skip_connect, max or avg pool. "
        "λ_max: dominant eigenvalue of the Hessian of L_val w.r.t. alpha at the reported epoch. "
        "OStr-DARTS shares the DARTS search and reports the epoch Algorithm 1 stops at. "
        "Depth/width: SDARTS appendix 7.4 (nasir/analysis.py).",
        "",
        *(s + "\n" for s in claims(rows)),
    ]  # fmt: skip
    text = "\n".join(md)
    (args.out / "study.md").write_text(text)
    (args.out / "study.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    plot(rows, args.out / "study.png")
    print()
    print(text)
    print(f"wrote {args.out / 'study.md'}, study.json, study.png; total {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
