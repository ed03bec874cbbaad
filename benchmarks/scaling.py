"""Time and peak memory of the front end at 1x, 4x and 16x input: parsing, genotype import, diagnostics.

Issue 14.13: every stage must be linear in its input. For each stage the script prints the wall time
and the peak Python memory (tracemalloc, in a separate run so that tracing does not inflate the time)
at three sizes, and the ratios 4x/1x and 16x/4x; linear scaling shows ratios near 4.

- parse: N cell declarations (8,192 at 16x) through `nasir.frontend.parse_text` (parse + resolution);
- check: the same text through `nasir.api.load` (also the verifier);
- fmt: the same text through `nasir fmt` (lossless layout, checked token for token);
- import: a genotypes.py of N (op, index) entries (20,000 at 16x: 1,250 genotypes) through `nasir import
  --name` (its last genotype) to `.cell` text;
- diagnostics: N cells each with an unknown op, every error rendered with its caret;
- long line: one source line of N characters with an error at its middle, rendered.

Usage: .venv/bin/python benchmarks/scaling.py [--quick]   (--quick: sizes / 4)
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path


def cells_text(n: int, bad: bool = False) -> str:
    op = "sep_conv_3x4" if bad else "sep_conv_3x3"
    return "\n".join(
        f"cell c{i} {{\n  inputs a, b\n  nodes n0..n1\n  edges * -> * : {op}  # cell {i}\n  output concat(n0, n1)\n}}"
        for i in range(n)
    )


def genotype_text(n: int) -> str:
    """A genotypes.py of n (op, index) entries: n / 16 DARTS genotypes of 8 + 8 pairs, as DARTS writes them."""
    cell = "[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('dil_conv_3x3', 2), ('skip_connect', 2), ('max_pool_3x3', 1)]"
    one = f"Genotype(normal={cell}, normal_concat=[2, 3, 4, 5], reduce={cell}, reduce_concat=[2, 3, 4, 5])"
    return "from collections import namedtuple\n\n" + "".join(f"G{k} = {one}\n" for k in range(n // 16))


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    gc.collect()
    t = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t
    gc.collect()
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**20


def stages(tmp: Path) -> dict[str, tuple[int, Callable[[int], Callable[[], object]]]]:
    from nasir.api import load
    from nasir.diagnostics import Diagnostic, DiagnosticError
    from nasir.fmt import format_text
    from nasir.frontend import parse_text
    from nasir.lower import import_genotype
    from nasir.source import SourceFile

    def parse(n: int):
        text = cells_text(n)
        return lambda: parse_text(text, "bench.cell")

    def check(n: int):
        text = cells_text(n)
        return lambda: load(text, name="bench.cell")

    def fmt(n: int):
        text = cells_text(n)
        return lambda: format_text(text, "bench.cell")

    def imp(n: int):
        path = tmp / f"g{n}.txt"
        path.write_text(genotype_text(n))
        return lambda: import_genotype(path, name=f"G{n // 16 - 1}")

    def diagnostics(n: int):
        text = cells_text(n, bad=True)

        def run() -> int:
            try:
                parse_text(text, "bench.cell")
            except DiagnosticError as e:
                return len(e.render())
            raise AssertionError("expected errors")

        return run

    def long_line(n: int):
        src = SourceFile("bench.cell", "x" * n + "\n")
        return lambda: Diagnostic("bad", src.span(n // 2, n // 2 + 1)).render()

    return {
        "parse (cells)": (512, parse),
        "check (cells)": (512, check),
        "fmt (cells)": (512, fmt),
        "import (entries)": (1250, imp),
        "diagnostics (errors)": (512, diagnostics),
        "long line (chars)": (1 << 20, long_line),
    }


def main() -> None:
    import tempfile

    quick = "--quick" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as d:
        table = stages(Path(d))
        # warm-up: grammars built, modules imported
        for _, make in table.values():
            make(16)()
        print(f"{'stage':<22} {'size':>9} {'time s':>9} {'peak MiB':>9} {'t ratio':>8} {'m ratio':>8}")
        for name, (base, make) in table.items():
            base = max(16, base // 4) if quick else base
            prev = None
            for mult in (1, 4, 16):
                n = base * mult
                t, m = measure(make(n))
                ratios = f"{t / prev[0]:8.2f} {m / prev[1]:8.2f}" if prev else f"{'':>8} {'':>8}"
                print(f"{name:<22} {n:>9,} {t:9.3f} {m:9.2f} {ratios}", flush=True)
                prev = (t, m)


if __name__ == "__main__":
    main()
