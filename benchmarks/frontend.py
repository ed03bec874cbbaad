"""How fast the front end answers: `nasir check` wall time (target < 0.5 s, docs/performance.md).

Runs `nasir check` on every example in fresh processes (the way a user or an editor runs it), after
one warm-up run that fills lark's grammar cache, and prints the median; also the in-process time of
parse + verify per file. Usage: .venv/bin/python benchmarks/frontend.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.cell"))


def wall(cmd: list[str], runs: int = 5) -> float:
    subprocess.run(cmd, capture_output=True, check=True)  # warm-up: lark grammar cache, page cache
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    one = wall([sys.executable, "-m", "nasir", "check", str(ROOT / "examples" / "darts.cell")])
    every = wall([sys.executable, "-m", "nasir", "check", *map(str, EXAMPLES)])
    bare = wall([sys.executable, "-c", "pass"])
    from nasir.api import load

    load(EXAMPLES[0])
    per_file = {}
    for p in EXAMPLES:
        t = time.perf_counter()
        for _ in range(20):
            load(p)
        per_file[p.name] = (time.perf_counter() - t) / 20
    print(f"python startup alone        {bare * 1e3:7.1f} ms")
    print(f"nasir check darts.cell      {one * 1e3:7.1f} ms   (target < 500 ms: {'ok' if one < 0.5 else 'MISSED'})")
    print(f"nasir check {len(EXAMPLES)} examples      {every * 1e3:7.1f} ms")
    for name, t in per_file.items():
        print(f"  parse + verify {name:<24} {t * 1e3:6.2f} ms in process")


if __name__ == "__main__":
    main()
