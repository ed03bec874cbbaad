"""Transitional alias of nasir/lower.py, for importers that still write `from nasir.compile import ...`
(tests and benchmarks; the library itself should import nasir.lower). Delete once none is left.
Importing it binds `nasir.compile` to this module, which nasir/__init__.py makes callable as the
function `nasir.compile`.
"""

from __future__ import annotations

from nasir.lower import (  # noqa: F401 - re-exported for the importers named above
    TARGETS,
    Overrides,
    build,
    build_from_plan,
    compile,
    example_input,
    import_genotype,
    load_checkpoint,
    load_weights,
    require_derived,
    require_same_architecture,
    resolve,
    set_defaults,
    verify_export,
    weights_path,
)
