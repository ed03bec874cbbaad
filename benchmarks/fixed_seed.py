"""Fixed-seed search outputs, recorded once and compared after a change that must not change a number.

A restructuring of the runtime, a fused supernet or a fix confined to other methods must leave a plain
DARTS search where it was: same `derived.cell`, same `alphas.json`, bit for bit at a fixed thread count
on the same machine. This script runs a few short searches on the embedded digits data, each in a fresh
process with one thread, and prints the SHA-256 of both files per configuration.

    python benchmarks/fixed_seed.py --record     # before the change: writes benchmarks/results/fixed_seed.json
    python benchmarks/fixed_seed.py              # after it: compares, exit 1 on any difference

Float rounding differs between processors (oneDNN picks kernels by instruction set), so a record is only
comparable on the machine kind it was made on; the record names the processor it came from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "benchmarks" / "results" / "fixed_seed.json"
SPEC = ROOT / "examples" / "digits.cell"

# name -> nasir search flags (besides the spec, data, output and the short-run settings below). The darts-*
# runs are op by op (--no-fuse): their record predates fusion and must stay bit for bit. The fused-* runs are
# `nasir search`'s default since fusion became it (the same values up to float rounding, docs/performance.md),
# recorded then.
CONFIGS: dict[str, list[str]] = {
    "darts-order1-magnitude": ["--order", "1", "--select", "magnitude", "--no-fuse"],
    "darts-order1-strength": ["--order", "1", "--select", "strength", "--no-fuse"],
    "darts-order2-magnitude": ["--order", "2", "--select", "magnitude", "--no-fuse"],
    "fused-order1-magnitude": ["--order", "1", "--select", "magnitude"],
    "fused-order2-magnitude": ["--order", "2", "--select", "magnitude"],
}
# --arch-lr pins the record's architecture learning rate: examples/digits.cell sets 1e-2 for the main job
# since the record was made (at the DARTS default 3e-4); a flag wins over the spec's search block.
SHORT = ["--arch-lr", "3e-4", "--epochs", "2", "--limit-batches", "4", "--seed", "0", "--no-progress"]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_one(flags: list[str]) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "nasir", "search", str(SPEC), "--data", "digits", "--out", str(out), *SHORT, *flags]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"fixed_seed: `{' '.join(cmd)}` failed:\n{proc.stderr[-2000:]}")
        return {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in ("derived.cell", "alphas.json")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true", help="write the record instead of comparing with it")
    ap.add_argument("--only", action="append", choices=sorted(CONFIGS), help="run only these configurations")
    args = ap.parse_args(argv)
    names = args.only or list(CONFIGS)
    got = {}
    for name in names:
        got[name] = run_one(CONFIGS[name])
        print(f"{name}: derived.cell {got[name]['derived.cell'][:16]}  alphas.json {got[name]['alphas.json'][:16]}",
              flush=True)  # fmt: skip
    if args.record:  # the runs named (--only) replace theirs; the others' record stays
        old = json.loads(RECORD.read_text()) if RECORD.exists() else {}
        if old and (old.get("cpu") != _cpu() or old.get("short") != SHORT):
            old = {}  # another machine or other settings: nothing of it compares any more
        runs = {**old.get("runs", {}), **got}
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps({"cpu": _cpu(), "threads": 1, "short": SHORT, "runs": runs}, indent=1) + "\n")
        print(f"recorded in {RECORD.relative_to(ROOT)}")
        return 0
    if not RECORD.exists():
        print(f"no record at {RECORD}; run with --record first", file=sys.stderr)
        return 2
    record = json.loads(RECORD.read_text())
    if record.get("cpu") != _cpu():
        print(f"note: the record was made on '{record.get('cpu')}', this is '{_cpu()}': rounding may differ")
    missing = [n for n in names if n not in record["runs"]]
    for n in missing:
        print(f"NOT RECORDED: {n} (record it with --record --only {n})")
    bad = [(n, f) for n in names for f in got[n] if n not in missing and record["runs"][n].get(f) != got[n][f]]
    for n, f in bad:
        print(f"DIFFERENT: {n} {f}")
    print("same as recorded" if not bad and not missing else f"{len(bad)} file(s) differ from the record, {len(missing)} run(s) not recorded")
    return 1 if bad or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
