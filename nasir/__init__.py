"""nasir: a declarative graph-IR compiler for neural architecture search.

The library surface is small: `load` a `.cell` file into verified IR, `check` it, `build` a derived
network as an nn.Module, `compile` it to a target file, `search` a space, `train` a derived network.
The CLI is a thin skin over these. Importing nasir imports no torch: each function imports what it
needs when it is called. A language model (a recurrent spec, docs/recurrent.md) is handed to
nasir/rnn by what the spec holds, so `build` and `compile` take either kind.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasir.diagnostics import Diagnostic, DiagnosticError

if TYPE_CHECKING:
    from torch import nn

    from nasir.ir import Spec
    from nasir.search.runner import SearchResult
    from nasir.train import TrainConfig

__all__ = ["Diagnostic", "DiagnosticError", "build", "check", "compile", "load", "search", "train"]
__version__ = "0.1.0"

Overrides = Sequence[str] | Mapping[str, Any] | None


def load(path_or_text: str | Path, *, overrides: Overrides = None, name: str | None = None,
         allow_include_outside: bool | None = None, network: str | None = None) -> Spec:  # fmt: skip
    """Parse and verify a `.cell` file (a path, or text holding a newline or '{') into a `nasir.ir.Spec`.

    `overrides`: network parameters, a dict or `--set`-style "name=value" strings. `name`: the file
    name diagnostics show for text. `allow_include_outside`: may `include` read outside the spec's
    directory tree (None: no, unless `nasir.limits.ALLOW_INCLUDE_OUTSIDE`). `network`: which of the
    file's networks is used (it comes first in the spec, the overrides are checked against it; default:
    the first declared; an unknown name is an error listing the networks). Raises `DiagnosticError`
    with every problem found; warnings are on `spec.warnings`.
    """
    from nasir.api import load as _load

    return _load(path_or_text, overrides=_values(overrides), name=name, allow_include_outside=allow_include_outside,
                 network=network)


def _values(overrides: Overrides | str) -> list[str] | dict[str, Any] | None:
    """Overrides as `nasir.api.load` takes them: "name=value" strings (one string is one of them) or a dict."""
    if overrides is None:
        return None
    if isinstance(overrides, str):
        return [overrides]
    return dict(overrides) if isinstance(overrides, Mapping) else list(overrides)


def check(path_or_text: str | Path, *, overrides: Overrides = None, name: str | None = None,
          network: str | None = None) -> list[Diagnostic]:  # fmt: skip
    """Parse and verify; returns the warnings, raises `DiagnosticError` on errors."""
    return list(load(path_or_text, overrides=overrides, name=name, network=network).warnings)


def _spec(spec_or_path: Spec | str | Path, overrides: Overrides, network: str | None = None) -> Spec:
    """The loaded spec with `network` first (nasir.api.select_network): what every function below runs on."""
    from nasir.api import select_network
    from nasir.ir import Spec

    if isinstance(spec_or_path, Spec):
        return select_network(spec_or_path, network)
    return load(spec_or_path, overrides=overrides, network=network)


def _recurrent(spec: Spec) -> bool:
    from nasir.rnn.check import is_recurrent

    return is_recurrent(spec)


def build(spec_or_path: Spec | str | Path, *, weights: str | Path | None = None, seed: int = 0,
          overrides: Overrides = None, network: str | None = None) -> nn.Module:  # fmt: skip
    """The derived network of a spec as an nn.Module: trained `weights` (a checkpoint, loaded with
    weights_only=True) or a seeded initialisation. `network`: which of the spec's networks (default:
    the first). A language model builds through nasir/rnn."""
    spec = _spec(spec_or_path, overrides, network)
    if _recurrent(spec):
        from nasir.rnn.api import build as _build_lm

        return _build_lm(spec, weights=weights, seed=seed, overrides=overrides)
    from nasir.lower import build as _build

    return _build(spec, weights=weights, seed=seed, overrides=overrides)


def compile(spec_or_path: Spec | str | Path, target: str, out: str | Path, *, weights: str | Path | None = None,  # noqa: A001
            seed: int = 0, overrides: Overrides = None, network: str | None = None) -> Path:  # fmt: skip
    """Lower a derived spec to `target` and write it to `out` atomically; returns the path written.

    Targets: torch (a standalone Python module; with `weights`, the state_dict beside it), torchscript,
    export (.pt2), onnx, retinanet (a detector on the derived backbone). The spec is read once; a
    language model lowers through nasir/rnn (torch, torchscript, onnx). `network`: which of the spec's
    networks (default: the first).
    """
    spec = _spec(spec_or_path, overrides, network)
    if _recurrent(spec):
        from nasir.rnn.api import compile as _compile_lm

        return _compile_lm(spec, target, out, weights=weights, seed=seed, overrides=overrides)
    from nasir.lower import compile as _compile_cnn

    return _compile_cnn(spec, target, out, weights=weights, seed=seed, overrides=overrides)


def search(spec_or_path: Spec | str | Path, data: str = "digits", out: str | Path | None = None, *,
           epochs: int | None = None, batch_size: int | None = None, order: int | None = None,
           seed: int | None = None, select: str | None = None, method: str | None = None,
           partial_channels: int | None = None, smooth: str | None = None, adv_steps: int | None = None,
           early_stop: int | None = None, hessian: bool | None = None, strength_window: int | None = None,
           warmup: int | None = None, w_lr: float | None = None, w_lr_min: float | None = None,
           momentum: float | None = None, w_weight_decay: float | None = None, a_lr: float | None = None,
           a_weight_decay: float | None = None, mixed_level: float | None = None, eps_end: float | None = None,
           device: str = "auto", resume: bool = False, overrides: Overrides = None, low_memory: bool = False,
           channels_last: bool | None = None, limit_batches: int | None = None, progress: bool = True,
           callback: Callable[[dict[str, Any]], None] | None = None,
           stop_after_steps: int | None = None, artifacts: bool = True, fp32_arch_grads: bool = True,
           deterministic: bool = False, fuse: bool = True, network: str | None = None) -> SearchResult:  # fmt: skip
    """Search a `.cell` space on `data` and derive an architecture; every file lands in `out`.

    `data`: `digits` (embedded), `synthetic[:N]`, `cifar10:PATH`, `folder:PATH`. A setting left None
    comes from the spec's `search` block, then from the DARTS defaults: method darts|milenas|pcdarts,
    order 1|2, select magnitude|strength|strength_star|naive, smooth none|rs|adv (adv_steps),
    partial_channels (PC-DARTS' K), early_stop, hessian, strength_window, warmup, the optimisers'
    w_lr, w_lr_min, momentum, w_weight_decay, a_lr, a_weight_decay, MiLeNAS' mixed_level (lambda'),
    SDARTS' final radius eps_end. `limit_batches` caps the steps per
    epoch; `callback(info)` runs after every step; `stop_after_steps` stops with a checkpoint.
    `device`: auto | cpu | cuda | cuda:N. Raises `DiagnosticError` for bad input and
    `SearchInterrupted` when stopped early. `network`: which of the spec's networks the supernet
    stacks (default: the first); derived.cell names it first. See nasir.search.runner.search.
    """
    from nasir.search.runner import search as _search

    return _search(spec_or_path, data, out, epochs=epochs, batch_size=batch_size, order=order, seed=seed,
                   select=select, method=method, partial_channels=partial_channels, smooth=smooth,
                   adv_steps=adv_steps, early_stop=early_stop, hessian=hessian, strength_window=strength_window,
                   warmup=warmup, w_lr=w_lr, w_lr_min=w_lr_min, momentum=momentum, w_weight_decay=w_weight_decay,
                   a_lr=a_lr, a_weight_decay=a_weight_decay, mixed_level=mixed_level, eps_end=eps_end,
                   device=device, resume=resume, overrides=overrides,
                   low_memory=low_memory, channels_last=channels_last, limit_batches=limit_batches,
                   progress=progress, callback=callback, stop_after_steps=stop_after_steps, artifacts=artifacts,
                   fp32_arch_grads=fp32_arch_grads, deterministic=deterministic, fuse=fuse, network=network)  # fmt: skip


def train(spec_or_path: Spec | str | Path, data: str, out: str | Path, cfg: TrainConfig | None = None, *, task: str = "classification", device: str = "auto",
          resume: bool = False, overwrite: bool = False, progress: bool = True,
          stop_after_steps: int | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
          amp: bool | None = None, deterministic: bool = False, overrides: Overrides = None,
          workers: int | None = None, backbone_weights: str | Path | None = None,
          network: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Train a derived spec's network on `data`; returns the final metrics (last.pt, best.pt and
    metrics.jsonl are written in `out`).

    `data`: as `nasir train --data` (`digits`, `cifar10:PATH`, `coco:PATH`, ...). `cfg`: a
    `nasir.train.TrainConfig` (None: its defaults). `task`: classification | detection (a
    RetinaNet on the derived backbone; `workers` and `backbone_weights` are for it). An `out` that
    holds a run is refused unless `resume` or `overwrite`. `overrides`: network parameters, as
    `--set`. `amp`: autocast (None: on CUDA). `network`: which of the spec's networks (default: the
    first). Stopped early it raises `TrainInterrupted`. See nasir.train.train.
    """
    import attrs

    from nasir.train import TrainConfig
    from nasir.train import train as _train

    spec = _spec(spec_or_path, overrides, network)
    cfg = cfg if cfg is not None else TrainConfig()
    if overrides:
        listed = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, Mapping) else list(overrides)
        cfg = attrs.evolve(cfg, set=tuple(cfg.set) + tuple(listed))
    options: dict[str, Any] = {}
    if task == "detection":
        options = {"workers": workers, "backbone_weights": backbone_weights}
    elif workers is not None or backbone_weights is not None:
        raise DiagnosticError([Diagnostic("workers and backbone_weights are for task='detection'")])
    return _train(spec, data, out, cfg, task=task, device=device, resume=resume, progress=progress,
                  stop_after_steps=stop_after_steps, callback=callback, amp=amp, deterministic=deterministic,
                  overwrite=overwrite, **options)  # fmt: skip


# ---- public functions named like submodules ----------------------------------------------------------
# Python binds every imported submodule on its package: `import nasir.search.runner` (which
# `nasir.search` itself does) sets `nasir.search` to the package nasir/search/, and `import
# nasir.train` does the same (the lowering module is nasir/lower.py for this reason), so the public function was replaced by a module
# and the next call raised "'module' object is not callable". The package keeps its functions: a
# submodule bound under a public function's name becomes a callable module that calls the function
# (its attributes stay reachable, so `import nasir.train as tr; tr.TrainConfig` still works), and
# `inspect.signature` of it is the function's (through `__wrapped__`).
_PUBLIC = {"compile": compile, "search": search, "train": train}


def _callable_module(module: types.ModuleType, fn: Callable[..., Any]) -> types.ModuleType:
    if not callable(module):
        cls = type(f"CallableModule_{fn.__name__}", (type(module),), {
            "__call__": lambda self, *args, **kwargs: fn(*args, **kwargs),
            "__doc__": f"The module nasir.{fn.__name__}, callable as the function nasir.{fn.__name__}."})  # fmt: skip
        module.__class__ = cls
        module.__wrapped__ = fn  # inspect.signature(nasir.search) -> the function's signature
    return module


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            value = _callable_module(value, _PUBLIC[name])
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
