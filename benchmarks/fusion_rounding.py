"""Is the fused supernet the same search as the op-by-op one, up to float rounding? The README's main job, both ways.

    python benchmarks/fusion_rounding.py                      # float32 and float64, fused and op by op
    python benchmarks/fusion_rounding.py --dtypes float64 --limit-batches 4

The fused supernet (docs/performance.md, "Fusion") computes the same function as the op-by-op one in another
order, so their values differ by float rounding per step; tests/search/test_fusion.py checks one step in float64.
A whole search amplifies that rounding: Adam moves an alpha by about +-lr in its first steps whatever its
gradient's size, so a gradient component near zero whose sign rounding flips sends the alpha the other way, and
derive picks another op where alphas are near-equal. This script runs the README's main job (examples/digits.cell
on the embedded digits, its own seed and settings) four times, in one process each: fused and op by op, in float32
(what `nasir search` runs) and in float64 (the same code with every tensor in double precision: the rounding of
each step about 1e-16 instead of 1e-7). It prints the largest alpha difference and whether the derived cells
are the same, per dtype. The claim it tests: in float64, fused and op by op derive the same cell and their alphas
agree to far below their spread; in float32 they may not, and then by rounding alone (compare a run in the
contiguous layout, `--layout`, which is the same computation as channels_last in another rounding).
One thread (a fixed thread count: the same result on every run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "digits.cell"


def child(out: str, fuse: bool, dtype: str, layout: str, limit_batches: int | None) -> None:
    import torch

    import nasir
    from nasir.data import classification

    torch.set_num_threads(1)
    if dtype == "float64":
        torch.set_default_dtype(torch.float64)  # weights and alphas are made in the default dtype
        digits = classification.digits

        def digits64(shape, classes):  # the embedded images, in double precision
            d = digits(shape, classes)
            d.x = d.x.double()
            return d

        classification.digits = digits64
    nasir.search(SPEC, "digits", out, fuse=fuse, progress=False, artifacts=False, limit_batches=limit_batches,
                 channels_last={"channels-last": True, "contiguous": False}[layout])  # fmt: skip


def run(fuse: bool, dtype: str, layout: str, limit_batches: int | None, tmp: Path) -> dict:
    out = tmp / f"{'fused' if fuse else 'opbyop'}-{dtype}-{layout}"
    cmd = [sys.executable, __file__, "--child", str(out), "--fuse", str(int(fuse)), "--dtype", dtype, "--layout", layout]
    if limit_batches:
        cmd += ["--limit-batches", str(limit_batches)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"fusion_rounding: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    alphas = json.loads((out / "alphas.json").read_text())
    return {"derived": (out / "derived.cell").read_text(), "alphas": alphas}


def _values(alphas: dict) -> list[float]:
    """Every alpha of alphas.json, in a fixed order (cell kind, row, candidate)."""
    table = alphas.get("alphas", alphas)
    return [v for kind in sorted(table) for row in table[kind] for v in row]


def _picks(derived: str) -> set[tuple[str, str, str]]:
    """The (cell, node, op(input)) picks of a derived.cell: its `n0 = op(a) + op(b)` lines."""
    picks, cell = set(), ""
    for line in derived.splitlines():
        words = line.split()
        if words[:1] == ["cell"]:
            cell = words[1]
        elif len(words) > 2 and words[1] == "=":
            picks.update((cell, words[0], term.strip()) for term in line.split("=", 1)[1].split("+"))
    return picks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    ap.add_argument("--layouts", nargs="+", default=["channels-last"], choices=["channels-last", "contiguous"],
                    help="also run op by op in these layouts (a rounding change of another kind, for comparison)")
    ap.add_argument("--limit-batches", type=int, help="at most N steps per epoch (a quick run)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--fuse", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--layout", default="channels-last", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, bool(a.fuse), a.dtype, a.layout, a.limit_batches)
        return 0
    print(f"{SPEC.relative_to(ROOT)} on digits (the README's main job), 1 thread"
          + (f", {a.limit_batches} batches per epoch" if a.limit_batches else ""))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in a.dtypes:
            ref = run(False, dtype, "channels-last", a.limit_batches, Path(tmp))
            rv = _values(ref["alphas"])
            spread = max(rv) - min(rv)
            others = [("fused", run(True, dtype, "channels-last", a.limit_batches, Path(tmp)))]
            others += [(f"op by op, {lay}", run(False, dtype, lay, a.limit_batches, Path(tmp)))
                       for lay in a.layouts if lay != "channels-last"]  # fmt: skip
            for name, r in others:
                diff = max(abs(x - y) for x, y in zip(_values(r["alphas"]), rv))
                mine, theirs = _picks(r["derived"]), _picks(ref["derived"])
                same = ("the same derived cells" if mine == theirs
                        else f"other derived cells ({len(mine - theirs)} of {len(theirs)} (edge, op) picks differ)")  # fmt: skip
                print(f"{dtype}: {name} against op by op (channels-last): alphas differ by up to {diff:.3g} "
                      f"(their spread {spread:.3g}); {same}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
