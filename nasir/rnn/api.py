"""The library surface of recurrent specs: search, train, compile, info from a `.cell` file (docs/recurrent.md).

These are the entry points the CLI dispatches to when a spec's network is a `language_model`
(`nasir search / train / compile / info`), and they work on their own (`python -m nasir.rnn ...`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from nasir import ir
from nasir import provenance as prov
from nasir.diagnostics import Diagnostic, DiagnosticError, error_at
from nasir.rnn import corpus as corpus_mod
from nasir.rnn.lower import Lowered, lower

Overrides = Sequence[str] | Mapping[str, Any] | None
TARGETS = ("torch", "torchscript", "onnx")

# search-block setting -> (RecurrentOptions field, kind) ; methods: darts(order = 1 | 2)
_NUMBERS = {"epochs": ("epochs", int, 1), "batch_size": ("batch_size", int, 1), "seed": ("seed", int, 0),
            "warmup": ("warmup", int, 0), "bptt": ("bptt", int, 1), "lr": ("lr", float, 0),
            "weight_decay": ("weight_decay", float, 0), "arch_lr": ("a_lr", float, 0),
            "arch_weight_decay": ("a_weight_decay", float, 0)}  # fmt: skip


def _load(spec_or_path: ir.Spec | str | Path, overrides: Overrides) -> tuple[ir.Spec, Lowered, dict[str, Any]]:
    from nasir.api import load
    from nasir.macro import parse_overrides

    values: dict[str, Any] = {}
    if isinstance(overrides, Mapping):
        values = dict(overrides)
    elif overrides:
        values = parse_overrides(list(overrides))[0]
    spec = spec_or_path if isinstance(spec_or_path, ir.Spec) else load(spec_or_path, overrides=list(overrides) if overrides and not isinstance(overrides, Mapping) else values or None)
    return spec, lower(spec, values), values


def search_options(spec: ir.Spec) -> dict[str, Any]:
    """The `search { ... }` block of a recurrent spec as RecurrentOptions fields; bad settings are errors."""
    out: dict[str, Any] = {}
    if spec.search is None:
        return out
    errors: list[Diagnostic] = []
    for st in spec.search.settings:
        try:
            _setting(st, out)
        except DiagnosticError as e:
            errors.extend(e.diagnostics)
    for x in (*spec.search.limits, *spec.search.budgets):
        errors.append(Diagnostic("limits and budgets are not supported in a recurrent search", x.span))
    if errors:
        raise DiagnosticError(errors)
    return out


def _setting(st: ir.Setting, out: dict[str, Any]) -> None:
    v = st.value
    name = v.name if isinstance(v, ir.Call | ir.Var) else None
    if st.name == "method":
        if name != "darts":
            raise error_at(st.span, f"a recurrent search runs DARTS, not '{name}'", "use 'method darts(order = 1)' or order = 2")
        for a in v.args if isinstance(v, ir.Call) else ():
            value = a.value.value if isinstance(a.value, ir.Num) else None
            if a.name != "order" or value not in (1, 2):
                raise error_at(a.span, "darts() takes order = 1 or 2")
            out["order"] = int(value)
    elif st.name == "select":
        if name not in ("magnitude", "strength"):
            raise error_at(st.span, f"a recurrent search selects by magnitude or strength, not '{name}'")
        out["select"] = name
        for a in v.args if isinstance(v, ir.Call) else ():
            value = a.value.value if isinstance(a.value, ir.Num) else None
            if a.name != "window" or name != "strength" or not isinstance(value, int) or value < 1:
                raise error_at(a.span, "strength(window = B) takes a whole number B >= 1")
            out["strength_window"] = value
    elif st.name in _NUMBERS:
        field, kind, minimum = _NUMBERS[st.name]
        value = v.value if isinstance(v, ir.Num) else None
        if value is None or isinstance(value, bool) or (kind is int and not isinstance(value, int)) or value < minimum or (kind is float and minimum == 0 and st.name in ("lr", "arch_lr") and value <= 0):
            raise error_at(st.span, f"'{st.name}' must be a {'whole number' if kind is int else 'number'} >= {minimum}")
        out[field] = kind(value)
    else:
        raise error_at(st.span, f"'{st.name}' is not a setting of a recurrent search",
                       "recurrent searches take method, select, epochs, batch_size, seed, warmup, bptt, lr, weight_decay, arch_lr, arch_weight_decay")  # fmt: skip


def _corpus(data: str) -> corpus_mod.Corpus:
    try:
        return corpus_mod.load(data)
    except corpus_mod.CorpusError as e:
        raise DiagnosticError([Diagnostic(str(e), None, "--data embedded | ptb:PATH")]) from None


def search(spec_or_path: ir.Spec | str | Path, data: str = "embedded", out: str | Path | None = None, *,
           overrides: Overrides = None, resume: bool = False, progress: bool = True,
           stop_after_steps: int | None = None, artifacts: bool = True, device: str = "auto", **flags: Any):  # fmt: skip
    """Search the recurrent space of a spec; flags (epochs=..., order=..., ...) win over its search block.
    `device`: auto (CUDA when present) | cpu | cuda | cuda:N. One process: under torchrun it is refused."""
    from nasir.device import under_torchrun

    if under_torchrun():
        raise DiagnosticError([Diagnostic("a recurrent search runs in one process, not under torchrun",
                                          hint="run 'nasir search' without torchrun; 'nasir train' of the derived cell runs under torchrun")])  # fmt: skip
    from nasir.rnn.lower import derived_spec, derived_text
    from nasir.rnn.search import CheckpointMismatchError, RecurrentOptions, RecurrentSearch

    spec, low, values = _load(spec_or_path, overrides)
    if low.space is None:
        raise error_at(low.cell.span, f"cell '{low.cell.name}' has no choice to search", "a recurrent search space has 'edges * -> s* : choice(...)'")
    opts = {**search_options(spec), **{k: v for k, v in flags.items() if v is not None}, "data": data}
    try:
        options = RecurrentOptions(**opts)
    except (TypeError, ValueError) as e:
        raise DiagnosticError([Diagnostic(str(e))]) from None
    out_dir = Path(out) if out is not None else Path("runs") / Path(spec.file).stem
    from nasir.search.runner import claim_out

    claim_out(out_dir, resume)  # as a CNN search: before any work (issue 14, items 7, 10, 16)
    corpus = _corpus(data)
    record = prov.record(spec, kind="recurrent-search", overrides=values, seed=options.seed, data=data)
    runner = RecurrentSearch(low.space, low.lm, options, out_dir, corpus=corpus, cell_name=low.cell.name,
                             network_name=low.network.name, source=spec.file, progress=progress,
                             stop_after_steps=stop_after_steps, artifacts=artifacts, cell=low.cell, device=device,
                             provenance=record,
                             render=lambda g, lm, header: derived_text(derived_spec(spec, with_lm(low, lm), g, values), header))  # fmt: skip
    try:
        return runner.run(resume=resume)
    except CheckpointMismatchError as e:
        raise DiagnosticError([Diagnostic(str(e), None, "resume with the settings of that run, or use another --out")]) from None


def _derived(spec_or_path, overrides) -> Lowered:
    return _derived_spec(spec_or_path, overrides)[1]


def _derived_spec(spec_or_path, overrides) -> tuple[ir.Spec, Lowered, dict[str, Any]]:
    spec, low, values = _load(spec_or_path, overrides)
    if low.genotype is None:
        raise error_at(low.cell.span, f"cell '{low.cell.name}' is a search space; derive it first (nasir search)")
    return spec, low, values


TRAIN_FILES = ("checkpoint.pt", "model.pt", "metrics.jsonl", "result.json", prov.FILE)


def claim_train_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """The training run directory, checked before any work as `nasir train` of a CNN does
    (nasir/train.py `claim_out`, issue 14, items 7, 10, 16), with the language model's run files."""
    from nasir.train import claim_out

    claim_out(out, resume=resume, overwrite=overwrite, files=TRAIN_FILES, resume_from="checkpoint.pt")


def train(spec_or_path: ir.Spec | str | Path, data: str = "embedded", out: str | Path = "runs/lm", *,
          overrides: Overrides = None, resume: bool = False, progress: bool = True,
          stop_after_steps: int | None = None, device: str = "auto", overwrite: bool = False, **flags: Any):  # fmt: skip
    """Train a derived recurrent cell as a language model (the authors' protocol, train.py); `device` auto
    (CUDA when present) | cpu | cuda | cuda:N; under torchrun with DDP (nasir/rnn/train.py)."""
    from nasir.rnn.search import CheckpointMismatchError
    from nasir.rnn.train import LMTrainer, TrainOptions

    spec, low, values = _derived_spec(spec_or_path, overrides)
    try:
        options = TrainOptions(**{k: v for k, v in flags.items() if v is not None}, data=data)
    except (TypeError, ValueError) as e:
        raise DiagnosticError([Diagnostic(str(e))]) from None
    claim_train_out(Path(out), resume=resume, overwrite=overwrite)
    record = prov.record(spec, kind="recurrent-train", overrides=values, seed=options.seed, data=data)
    try:
        trainer = LMTrainer(low.genotype, low.lm, options, Path(out), corpus=_corpus(data), progress=progress,
                            stop_after_steps=stop_after_steps, device=device, provenance=record)  # fmt: skip
    except ValueError as e:
        raise DiagnosticError([Diagnostic(str(e))]) from None
    try:
        return trainer.run(resume=resume)
    except CheckpointMismatchError as e:
        raise DiagnosticError([Diagnostic(str(e), None, "resume with the settings of that run, or use another --out")]) from None


def build(spec_or_path: ir.Spec | str | Path, *, weights: str | Path | None = None, seed: int = 0, overrides: Overrides = None):
    """The language model of a derived recurrent spec (seeded initialisation, or trained weights)."""
    import torch

    from nasir.rnn.cell import build as build_lm

    low = _derived(spec_or_path, overrides)
    torch.manual_seed(seed)
    model = build_lm(low.lm, low.genotype)  # type: ignore[arg-type]
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise DiagnosticError([Diagnostic(f"weights '{weights}' do not fit this model: {str(e).splitlines()[0]}",
                                              hint="check the vocabulary size (--set tokens=...) and the sizes")]) from None  # fmt: skip
    return model.eval()


def compile(spec_or_path: ir.Spec | str | Path, target: str, out: str | Path, *, weights: str | Path | None = None,  # noqa: A001
            seed: int = 0, overrides: Overrides = None) -> Path:  # fmt: skip
    """torch (generated source; weights beside it as OUT.pt when given), torchscript or onnx."""
    import torch

    from nasir.io import atomic_write_with
    from nasir.rnn import export

    if target not in TARGETS:
        raise DiagnosticError([Diagnostic(f"target '{target}' is not available for a language model", hint=f"use {', '.join(TARGETS)}")])
    model = build(spec_or_path, weights=weights, seed=seed, overrides=overrides)
    out = Path(out)
    if target == "torch":
        path = export.write_torch_source(model, out)
        if weights is not None:
            state = model.state_dict()
            atomic_write_with(out.with_suffix(".pt"), lambda tmp: torch.save(state, tmp))
        return path
    if target == "torchscript":
        return export.to_torchscript(model, out)
    # as a CNN's ONNX (nasir/lower.py compile): verify-export reads the seed of an untrained export back
    meta = {"nasir.weights": "trained" if weights is not None else "untrained"}
    if weights is None:
        meta["nasir.seed"] = str(seed)
    return export.to_onnx(model, out, metadata=meta)


def info(spec_or_path: ir.Spec | str | Path, overrides: Overrides = None) -> dict[str, Any]:
    from nasir.rnn.info import lm_info

    spec, low, _ = _load(spec_or_path, overrides)
    d = lm_info(low.lm, low.genotype if low.genotype is not None else low.space)  # type: ignore[arg-type]
    d["file"] = spec.file
    d["network"] = low.network.name
    d["cell_name"] = low.cell.name
    return d


def with_lm(low: Lowered, lm) -> Lowered:
    return attrs.evolve(low, lm=lm)
