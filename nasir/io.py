"""Run directories and atomic file output: write to a temporary file beside the target, then rename over it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes) -> None:
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data))


def atomic_write_with(path: str | Path, writer: Callable[[str], object]) -> None:
    """Call `writer(tmp_path)` to produce the file, then move it into place; on failure nothing is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def writable_dir(out: Path, what: str) -> None:
    """Create `out` (a run directory given as --out) or refuse it: not a file, not under a file, writable.
    Messages start with --out so that the CLI points them at the flag (issue 14, item 16)."""
    from nasir.diagnostics import Diagnostic, DiagnosticError

    blocker = next((q for q in (out, *out.parents) if q.exists() and not q.is_dir()), None)
    if blocker is not None:
        raise DiagnosticError([Diagnostic(f"--out '{out}': '{blocker}' is a file, not a directory", None, f"choose a directory for the {what}")])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiagnosticError([Diagnostic(f"--out '{out}': cannot create the directory: {e.strerror or e}")]) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DiagnosticError([Diagnostic(f"--out '{out}': the directory is not writable", None, "choose a directory you can write")])


def remove_stale_temporaries(out: Path, names: tuple[str, ...] | None = None) -> None:
    """Remove what a kill left of an interrupted `atomic_write_with` (`.NAME.RANDOM.tmp`), for the given
    file names or all of them; only on rank 0 of a distributed run (issue 14, item 10)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    patterns = [f".{n}.*.tmp" for n in names] if names is not None else [".*.tmp"]
    for pattern in patterns:
        for tmp in out.glob(pattern):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
