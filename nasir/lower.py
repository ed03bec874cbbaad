"""Lowering a derived spec: the library behind `nasir compile`, `nasir verify-export`, `nasir.build`, `nasir.compile`.

(This module is not named `compile`: a submodule named like the public function `nasir.compile`
replaced that function on the package when it was first imported.)

`build` gives the in-process nn.Module (targets/network.py), `compile` writes one target file:
`torch` (a standalone Python module, targets/torch_source.py), `torchscript`, `export` (.pt2) or
`onnx` (targets/export.py). Bad input (a search space, a checkpoint that is unreadable or does not
fit, an unwritable output path) raises `DiagnosticError`; nothing is half-written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasir import ir, limits
from nasir.api import load, select_network
from nasir.diagnostics import Diagnostic, DiagnosticError, did_you_mean, error_at
from nasir.io import atomic_write, atomic_write_with
from nasir.macro import Plan, elaborate, parse_overrides
from nasir.passes import pipeline

# torch is imported where it is used: `nasir import` and the argument checks of `nasir compile` stay fast.
if TYPE_CHECKING:
    import torch
    from torch import nn

    from nasir.targets.network import Network

TARGETS: tuple[str, ...] = ("torch", "torchscript", "export", "onnx", "retinanet")

Overrides = Sequence[str] | Mapping[str, Any] | None


def resolve(spec_or_path: ir.Spec | str | Path, overrides: Overrides = None, network: str | None = None) -> tuple[ir.Spec, Plan]:
    """Load (if needed) and elaborate a network of the spec with `--set`-style overrides: `network`
    (`--network NAME`), by default the first one (nasir.api.select_network). The returned spec has
    that network first."""
    if isinstance(overrides, str):
        overrides = [overrides]
    listed = overrides is not None and not isinstance(overrides, Mapping)
    if isinstance(spec_or_path, ir.Spec):
        spec = select_network(spec_or_path, network)
    else:
        spec = load(spec_or_path, overrides=list(overrides) if listed else dict(overrides or {}), network=network)  # type: ignore[arg-type]
    values, spans = parse_overrides(list(overrides)) if listed else (dict(overrides or {}), None)  # type: ignore[arg-type]
    net = spec.network()
    if net is None:
        raise error_at(spec.cells[0].span if spec.cells else None, f"{spec.file} declares no network",
                       "add a 'network' block that stacks the cells, or use 'nasir import --macro ...'")  # fmt: skip
    if not spec.is_search_space:  # a search space is refused by require_derived, after elaboration
        spec = pipeline("compile").apply(spec)  # nasir/pipeline.py; a no-op on a verified derived spec
    plan = elaborate(spec, net, values, spans)
    assert plan is not None
    return spec, plan


def require_derived(spec: ir.Spec, plan: Plan) -> None:
    """Every cell the network stacks must be a derived architecture (no choice edges, no topology variables)."""
    problems = []
    for name in dict.fromkeys(b.cell for b in plan.cells):
        cell = spec.cell(name)
        if cell is None or not cell.is_search_space:
            continue
        choice = next((e for e in cell.edges if e.is_choice), None)
        span = (choice.span if choice is not None else None) or (cell.topology.span if cell.topology else None) or cell.span
        what = f"edge {choice.src} -> {choice.dst} chooses among {len(choice.candidates)} ops" if choice else "it has topology variables"
        problems.append(Diagnostic(f"cell '{name}' is a search space ({what}); only a derived architecture can be compiled", span,
                                   "derive one with 'nasir search', or import a genotype with 'nasir import'"))  # fmt: skip
    if problems:
        raise DiagnosticError(problems)


# ---- checkpoints -----------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _checkpoint_problem(e: BaseException, path: Path) -> str:
    """torch.load's errors in a few words; its own text advises weights_only=False, which nasir never does."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0].split(". ")[0].strip()
        if detail.startswith("Unsupported global"):
            return f"it holds Python objects, not only tensors ({detail}); checkpoints load as data only"
        return f"not a PyTorch checkpoint ({detail})"
    if isinstance(e, EOFError):
        return "the file is empty or truncated"
    if "zip archive" in text:
        return "the file is corrupt or truncated (" + text.split(". ")[0] + ")"
    import zipfile

    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; the legacy format fails in odd ways
        return f"not a PyTorch checkpoint ({_first_line(e)})"
    return _first_line(e)


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a checkpoint file: a bare state_dict or a dict holding one under "model"/"state_dict"
    or "net_state_dict" (AutoDL's NAS-Bench-201 training record, docs/autodl.md).

    Loaded with `weights_only=True`: a checkpoint is data, never code. DataParallel's `module.` prefix is removed.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise DiagnosticError([Diagnostic(f"cannot read checkpoint '{p}': no such file")])
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or pickling code: bad input, reported without a traceback
        raise DiagnosticError([Diagnostic(f"cannot load checkpoint '{p}': {_checkpoint_problem(e, p)}", None,
                                          "save weights with torch.save(model.state_dict(), path); they are loaded with weights_only=True")]) from None  # fmt: skip
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in ("model", "state_dict", "net_state_dict") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            keys = ", ".join(map(str, list(obj)[:5]))
            raise DiagnosticError([Diagnostic(f"checkpoint '{p}' holds no state_dict (keys: {keys})", None,
                                              "expected a state_dict, or a dict with one under 'model', 'state_dict' or 'net_state_dict'")])  # fmt: skip
        obj = inner
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise DiagnosticError([Diagnostic(f"checkpoint '{p}' is not a state_dict (a mapping of names to tensors)")])
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _few(keys: Sequence[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into `model`; keys and shapes must match (an auxiliary head the model lacks is ignored)."""
    sd = load_checkpoint(path)
    from nasir.autodl import from_tiny_network, is_tiny_network

    if is_tiny_network(sd):  # AutoDL's NAS-Bench-201 TinyNetwork: renamed edge by edge (nasir/autodl.py)
        sd = from_tiny_network(model, sd, path)
    own = model.state_dict()
    if not any(k.startswith("auxiliary_head.") for k in own):
        # The auxiliary head only trains; a network built without it infers the same without its weights.
        sd = {k: v for k, v in sd.items() if not k.startswith("auxiliary_head.")}
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape]
    parts = []
    if missing:
        parts.append(f"missing {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected {_few(unexpected)}")
    if mismatched:
        parts.append(f"shapes differ for {_few(mismatched, 3)}")
    if parts:
        raise DiagnosticError([Diagnostic(f"checkpoint '{path}' does not fit the network: " + "; ".join(parts), None,
                                          "was it trained with other network parameters? pass the same --set values")])  # fmt: skip
    model.load_state_dict(sd, strict=False)  # num_batches_tracked may be absent in old (DARTS 2018) checkpoints


# ---- the API -----------------------------------------------------------------------------------------
def build(spec_or_path: ir.Spec | str | Path, *, weights: str | Path | None = None, seed: int = 0,
          overrides: Overrides = None, network: str | None = None) -> Network:  # fmt: skip
    """The derived network as an nn.Module: trained `weights` (a checkpoint) or a seeded initialisation.
    `network`: which of the spec's networks (default: the first)."""
    spec, plan = resolve(spec_or_path, overrides, network)
    return build_from_plan(spec, plan, weights, seed)


def build_from_plan(spec: ir.Spec, plan: Plan, weights: str | Path | None = None, seed: int = 0) -> Network:
    """`build` for an already elaborated spec: refuses search spaces, seeds, loads weights."""
    from nasir.targets import network

    require_derived(spec, plan)
    try:
        limits.check_seed(seed)  # the CLI's --seed is checked by limits.seed; this is the library's door
    except ValueError as e:
        raise DiagnosticError([Diagnostic(str(e))]) from None
    model = network.build(spec, plan, seed=seed)
    if weights is not None:
        require_same_architecture(spec, plan, weights)
        load_weights(model, weights)
    return model


def require_same_architecture(spec: ir.Spec, plan: Plan, weights: str | Path) -> None:
    """Refuse weights whose provenance (nasir/provenance.py) names another spec or network; a bare
    state_dict has none and is only checked by its keys and shapes (load_weights)."""
    from nasir import provenance as prov

    then = prov.read(weights)
    if then is None:
        return
    now = prov.record(spec, kind=then.get("kind", ""), plan=plan)
    prov.require_same(then, now, prov.ARCHITECTURE, f"--weights '{weights}'",
                      hint="pass the spec and --set values the weights were trained with")  # fmt: skip


def example_input(plan: Plan, batch: int = 1, seed: int = 0) -> torch.Tensor:
    import torch

    return torch.randn(batch, *plan.input, generator=torch.Generator().manual_seed(seed))


def _os_problem(e: OSError, out: Path) -> str:
    what = e.strerror or _first_line(e)
    blocker = next((q for q in out.parents if q.exists() and not q.is_dir()), None)
    if blocker is not None:
        return f"'{blocker}' is a file, not a directory"
    return what


def weights_path(out: Path) -> Path:
    """Where the torch target puts the weights beside the module: model.py -> model.pt."""
    return out.with_suffix(".pt") if out.suffix == ".py" else out.with_name(out.name + ".pt")


def compile(spec_or_path: ir.Spec | str | Path, target: str, out: str | Path, *, weights: str | Path | None = None,  # noqa: A001
            seed: int = 0, overrides: Overrides = None, network: str | None = None) -> Path:  # fmt: skip
    """Lower a derived spec to `target` and write it to `out` (atomically); returns the path written.

    `torch` writes a standalone Python module; with `weights` it also writes the state_dict beside it
    (`weights_path(out)`), loadable into the module's `Network` and into `nasir.build`. `network`:
    which of the spec's networks (default: the first).
    """
    if target not in TARGETS:
        raise DiagnosticError([Diagnostic(f"unknown target '{target}'", None, did_you_mean(target, TARGETS) or "available targets: " + ", ".join(TARGETS))])
    spec, plan = resolve(spec_or_path, overrides, network)
    out = Path(out)
    if target == "retinanet":
        # A detector on the derived backbone: scripted eval-mode model at OUT, weights and settings at
        # OUT.state_dict.pt, and ONNX beside it (targets/detection.py says what each export can do).
        from nasir.targets import detection

        require_derived(spec, plan)
        detection.require_rgb(spec, plan)
        values = dict(parse_overrides(list(overrides))[0]) if overrides and not isinstance(overrides, Mapping) else dict(overrides or {})
        if weights is not None:  # a detector trained by `nasir train --task detection` (its best.pt or last.pt)
            model, settings = detection.load_detector(spec, weights, values)
            detection.write_module(spec, out, **settings, model=model, onnx_path=out.with_suffix(".onnx"))
            return out
        detection.write_module(spec, out, num_classes=plan.classes, overrides=values, seed=seed,
                               min_size=max(64, plan.input[1]), max_size=max(64, plan.input[1], plan.input[2]),
                               onnx_path=out.with_suffix(".onnx"))  # fmt: skip
        return out
    model = build_from_plan(spec, plan, weights, seed)
    import torch

    from nasir.targets import export, torch_source

    try:
        if target == "torch":
            atomic_write(out, torch_source.generate(spec, plan, spec.file))
            if weights is not None:
                atomic_write_with(weights_path(out), lambda tmp: torch.save(model.state_dict(), tmp))
        elif target == "torchscript":
            export.to_torchscript(model, example_input(plan), out)
        elif target == "export":
            export.to_export(model, example_input(plan, 2), out)
        else:
            # verify-export reads the initialisation seed of an untrained export from here (issue 14, item 6)
            meta = {"nasir.weights": "trained" if weights is not None else "untrained"}
            if weights is None:
                meta["nasir.seed"] = str(seed)
            export.to_onnx(model, example_input(plan), out, metadata=meta)
    except OSError as e:
        raise DiagnosticError([Diagnostic(f"cannot write '{out}': {_os_problem(e, out)}")]) from None
    return out


def verify_export(model_path: str | Path, spec_or_path: ir.Spec | str | Path, *, weights: str | Path | None = None,
                  seed: int = 0, overrides: Overrides = None, batches: Sequence[int] = (1, 8),
                  network: str | None = None) -> dict[int, float]:  # fmt: skip
    """Max-abs difference, per batch size, between an exported model (ONNX, TorchScript, .pt2) and PyTorch
    eval of the spec's `network` (default: the first). A language model's export takes words and a hidden
    state, not an image: `nasir verify-export` hands a recurrent spec to nasir/rnn/export.py's `parity`
    (nasir/rnn/hooks.py `verify_export`; this module may not import nasir.rnn.api, which imports it back)."""
    from nasir.rnn.check import is_recurrent
    from nasir.targets import export

    spec, plan = resolve(spec_or_path, overrides, network)
    if is_recurrent(spec):
        net = spec.network()
        raise error_at(net.span if net is not None else None, "this is a language model: its export takes words and a hidden state, not an image",
                       "check it with nasir.rnn.export.parity (nasir verify-export does)")  # fmt: skip
    model = build_from_plan(spec, plan, weights, seed)
    return export.parity(model, model_path, batches, input_shape=plan.input)


# ---- genotypes ---------------------------------------------------------------------------------------
def import_genotype(path: str | Path, macro: str | None = None, *, overrides: Sequence[str] | None = None,
                    name: str | None = None, macro_from: str | Path | None = None,
                    directory: str | Path | None = None) -> str:  # fmt: skip
    """The library side of `nasir import`: a genotype file (`-`: stdin) -> `.cell` text in a macro network.

    `macro_from`: a `.cell` file whose network(s) take the genotype's cells instead of a canonical
    macro (nasir/user_macro.py); `macro` and `macro_from` exclude each other. `directory`: where the
    text will be written, for the paths of the `ops` files `macro_from` names (default: its directory).
    `overrides` ("name=value") become the defaults of the macro's parameters in the text, so the
    file states the network it was imported for; they are checked like `--set` (unknown names, bad values).
    """
    from nasir.genotype import genotype_to_spec_text, read_genotype

    if macro is not None and macro_from is not None:
        raise DiagnosticError([Diagnostic(f"macro '{macro}' and macro_from '{macro_from}' both name the network; give one")])
    if macro_from is not None:
        from nasir.user_macro import import_into_network

        text = import_into_network(path, macro_from, name=name, directory=directory)
        where = Path(directory) if directory is not None else Path(macro_from).parent
        return set_defaults(text, list(overrides or []), str(where / "imported.cell"))
    g = read_genotype(path, name)
    text = genotype_to_spec_text(g, macro=macro, source_name=None if str(path) == "-" else str(path))
    return set_defaults(text, list(overrides or []))


def set_defaults(text: str, overrides: Sequence[str], name: str = "<imported>") -> str:
    """Rewrite the parameter defaults of the first network in `.cell` text; comments and layout stay.

    `name`: the path the text will have, against which its `ops` lines resolve (they point to files
    the text's origin already loaded, so they may lie outside its directory tree)."""
    if not overrides:
        return text
    spec = load(text, name=name, overrides=list(overrides), allow_include_outside=True)
    values, _ = parse_overrides(list(overrides))
    net = spec.network()
    assert net is not None  # load() reported '--set given but the spec declares no network'
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def offset(line: int, col: int) -> int:
        return starts[line - 1] + col - 1

    edits = []
    for p in net.params:
        if p.name not in values:
            continue
        v = values[p.name]
        literal = ("true" if v else "false") if isinstance(v, bool) else repr(v)
        d = p.default
        if d is not None and d.span is not None:
            edits.append((offset(d.span.line, d.span.col), offset(d.span.end_line, d.span.end_col), literal))
        elif p.span is not None:
            at = offset(p.span.line, p.span.col) + len(p.name)
            edits.append((at, at, f" = {literal}"))
    for a, b, new in sorted(edits, reverse=True):
        text = text[:a] + new + text[b:]
    return text
