"""Process set-up for a long run (docs/runtime.md)."""

from __future__ import annotations

import sys


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process instead of returning it to the OS after every step.

    A search step frees and reallocates its activations (GiBs); by default glibc unmaps large blocks
    and trims the heap, and the next step faults the pages back in, zero-filled. On the shared VMs we
    measure on, that first touch costs more than the arithmetic (see benchmarks/search_step.py). The
    peak resident set is unchanged; memory is not given back until the process ends.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_trim_threshold, 2**30) == 1
    return libc.mallopt(m_mmap_threshold, 32 * 2**20) == 1 and ok  # 32 MiB: glibc's largest mmap threshold
