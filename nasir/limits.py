"""Input limits: sizes past which nasir refuses with a diagnostic instead of running for minutes,
allocating gigabytes or overflowing (issue 14, items 11 and 12).

Each limit is far above what a real search space needs: DARTS has 4 nodes per cell, 14 edges,
8 cells; the largest example here has 8 nodes. A limit that is hit says so and names the number.
"""

from __future__ import annotations

import argparse
from contextvars import ContextVar

# ---- reading --------------------------------------------------------------------------------------
MAX_SOURCE_BYTES = 16 * 1024 * 1024  # a .cell or genotype file (examples are < 4 kB)
MAX_INCLUDES = 256  # files one spec includes, directly or not (each is read once)

# May an `include` leave the directory tree of the spec nasir was given? The library's functions
# take `allow_include_outside=`; when they are not told, this ambient setting decides. The CLI sets it
# from --allow-include-outside for the command it runs, so that every command that reads specs obeys.
ALLOW_INCLUDE_OUTSIDE: ContextVar[bool] = ContextVar("nasir_allow_include_outside", default=False)

# ---- sizes of a spec --------------------------------------------------------------------------------
MAX_RANGE = 256  # nodes a range `n0..nK` may expand to
MAX_NODES_PER_CELL = 256  # intermediate nodes of one cell
MAX_EDGES_PER_CELL = 10_000  # edges of one cell after pattern expansion (a full DAG of ~140 nodes)
MAX_TOPOLOGY_CODES = 4_096  # topology variables of one cell (stretchable DARTS: 20)
MAX_EXPR_DEPTH = 100  # nesting of an expression: parentheses, unary minus, chained operators

# ---- sizes of a network (nasir info computes them analytically, but a network must also be buildable)
MAX_CELLS = 1_000  # cells of a stack (DARTS: 20)
MAX_CHANNELS = 1 << 20
MAX_INPUT_SIDE = 1 << 16  # height or width of the input image

# ---- command-line numbers ---------------------------------------------------------------------------
# torch.manual_seed takes a 64-bit seed; numpy's legacy RNG and Python's `random` 32 bits. nasir's seeds
# go to all of them, so the common range is 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def seed(text: str) -> int:
    """argparse `type=` of every --seed flag: a whole number in 0 .. 2**32 - 1.

    An out-of-range seed ("--seed 99999999999999999999") is refused as a command-line diagnostic
    instead of overflowing inside torch or numpy.
    """
    try:
        value = int(text.strip().replace("_", ""), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed {text} is out of range 0..{MAX_SEED} (2**32 - 1)")
    return value


def check_seed(value: int, what: str = "seed") -> int:
    """The same range check for a seed given through the library API; ValueError if out of range."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{what} must be a whole number in 0..{MAX_SEED}, got {value!r}")
    return value
