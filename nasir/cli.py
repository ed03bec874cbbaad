"""The `nasir` command line: argument parsing and rendering only; the work is in the library.

Exit codes: 0 success, 2 bad input (rendered as `file:line:col: error: ...`), 1 internal failure.
No Python traceback unless --debug.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import attrs

from nasir import limits
from nasir.diagnostics import Diagnostic, DiagnosticError
from nasir.source import SourceFile


def _command_line() -> tuple[list[str], SourceFile]:
    argv = sys.argv[1:]
    return argv, SourceFile("<command line>", "nasir " + shlex.join(argv))


def _flag_of(setting: str) -> str:
    """The flag of a search or train setting (nasir/runtime/settings.py): the search's own table
    (nasir/search/cli.py SETTING_FLAGS: partial_channels -> --pc-k), else `--` and the name with dashes."""
    from nasir.search.cli import SETTING_FLAGS

    return SETTING_FLAGS.get(setting, "--" + setting.replace("_", "-"))


def _locate_flags(e: DiagnosticError) -> DiagnosticError:
    """Point an error about a setting at its flag on the command line.

    The checks that find such errors (search and train settings) run below the CLI and know no command
    line; they name the setting (`SettingDiagnostic.setting`, the message starting with its name), and
    this edge says the flag instead and gives it `<command line>:1:col` and a caret. Messages still worded
    as a flag (`--out ...`, `--resume: ...`, `--device ...`) are pointed at it as they are.
    """
    argv, src = _command_line()
    out = []
    for d in e.diagnostics:
        setting = getattr(d, "setting", None)
        if setting and d.span is None:
            flag = _flag_of(setting)
            message = flag + d.message[len(setting) :] if d.message.startswith(setting) else d.message
            d = Diagnostic(message, None, d.hint, d.severity)
        else:
            flag = d.message.split()[0].rstrip(":,") if d.span is None and d.message.startswith("--") else None
        if flag is not None and flag in argv:
            k = argv.index(flag)
            tok = argv[k + 1] if k + 1 < len(argv) and not argv[k + 1].startswith("--") else flag
            col = src.text.find(shlex.quote(tok), src.text.find(shlex.quote(flag), 6))
            d = attrs.evolve(d, span=src.span(col, col + len(shlex.quote(tok))))
        out.append(d)
    return DiagnosticError(out)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are diagnostics pointing into the command line."""

    def error(self, message: str):  # type: ignore[override]
        argv, src = _command_line()
        line = src.text
        col = 0
        for tok in argv:
            if tok and (f"'{tok}'" in message or f" {tok}" in message.split(":")[-1] or tok in message.split()):
                col = line.find(tok, 6)
                break
        span = src.span(col, col + (len(tok) if col else 5))
        raise DiagnosticError([Diagnostic(message, span, f"see 'nasir {self.prog.split()[-1]} --help'" if " " in self.prog else "see 'nasir --help'")])


TRAIN_EPILOG = """\
detection data, coco:PATH (COCO format on disk; nasir never downloads):
  PATH/annotations/instances_train.json   images, annotations (bbox [x, y, w, h]), categories
  PATH/train/                             the images, by the "file_name" of each entry
  PATH/annotations/instances_val.json     optional, with PATH/val/: the held-out set
                                          (otherwise a fifth of the training images)
  Labels are the category ids (0 is the background). best.pt holds the weights with the lowest
  held-out loss and the detector's settings; `nasir compile SPEC --target retinanet --weights
  OUT/best.pt -o det.pt` exports it.
"""


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated level positions such as 1,2, got '{text}'") from None


def _tolerance(text: str) -> float:
    """A finite number >= 0 (NaN would pass every comparison: `diff > nan` is false)."""
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"the tolerance must be a finite number >= 0, got '{text}'")
    return v


def _check_weights(spec_path: Path, weights: Path | None, overrides: list[str], fields=None) -> None:
    """Refuse --weights made from another spec or network (their provenance, nasir/provenance.py).
    `spec_path` may be the loaded spec (nasir.lower.resolve takes either): then it is not read again."""
    from nasir import provenance as prov

    if weights is None:
        return
    then = prov.read(weights)
    if then is None:  # a bare state_dict: nothing recorded to compare
        return
    from nasir.lower import resolve

    spec, plan = resolve(spec_path, overrides)
    now = prov.record(spec, kind=then.get("kind", ""), overrides=overrides, plan=plan)
    prov.require_same(then, now, fields or prov.ARCHITECTURE, f"--weights '{weights}'",
                      hint="pass the spec and --set values the weights were trained with")  # fmt: skip


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", metavar="NAME=VALUE", default=[], help="override a network parameter")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nasir", description="A declarative graph-IR compiler for neural architecture search.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("check", help="parse and verify .cell files")
    c.add_argument("files", nargs="+", type=Path, help="'-' reads standard input (includes resolve from the current directory)")
    _add_set(c)

    f = sub.add_parser("fmt", help="lay out .cell text (lossless: comments, like, patterns, includes stay)")
    f.add_argument("file", type=Path, help="a .cell file; '-' reads stdin")
    f.add_argument("-i", "--in-place", action="store_true", help="rewrite the file (only if the layout changes)")
    f.add_argument("--canonical", action="store_true", help="print the canonical text of the elaborated IR instead "
                   "(includes' contents left out, like and patterns expanded, comments dropped; never written in place)")  # fmt: skip

    i = sub.add_parser("info", help="parameters, MACs, cell depth/width; for a search space its size")
    i.add_argument("file", type=Path)
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.add_argument("--input", type=_input_shape, metavar="C,H,W",
                   help="count MACs (and the backbone's) at this input size, e.g. 3,224,224 (default: the network's input)")  # fmt: skip
    _add_set(i)

    co = sub.add_parser("compile", help="lower a derived architecture to a target")
    co.add_argument("file", type=Path)
    co.add_argument("--target", "-t", required=True, choices=("torch", "torchscript", "export", "onnx", "retinanet"))
    co.add_argument("-o", "--output", type=Path, help="the file to write (required unless --dump-after stops at a search space)")
    co.add_argument("--dump-after", metavar="PASS", help="print the IR after this pass (mixed_ops, zero_ops, topology, fuse_ops, dead_nodes)")
    co.add_argument("--weights", type=Path, metavar="CKPT", help="trained weights (a state_dict checkpoint)")
    co.add_argument("--seed", type=limits.seed, default=0, help="seed of the initialisation without --weights (default 0)")
    _add_set(co)

    d = sub.add_parser("draw", help="draw the cells as DAGs (.png or .svg)")
    d.add_argument("file", type=Path)
    d.add_argument("-o", "--output", required=True, type=Path, help="OUT.svg or OUT.png")
    d.add_argument("--alphas", type=Path, metavar="JSON", help="shade a search space's edges by softmax(alpha)")
    _add_set(d)

    im = sub.add_parser("import", help="a DARTS genotype or NAS-Bench-201 string to a .cell file")
    im.add_argument("genotype", metavar="GENOTYPE_FILE", help="a file with a Genotype(...) or an NB201 string; '-' reads stdin")
    im.add_argument("--macro", choices=("cifar", "imagenet", "nb201"), help="the network to place the cells in "
                    "(default: cifar for a DARTS genotype, nb201 for an NB201 string)")  # fmt: skip
    im.add_argument("--name", help="the genotype to take from a file that defines several (e.g. DARTS_V2; "
                    "a key of a dict of genotypes, e.g. AutoDL's DARTS or Networks.DARTS)")
    im.add_argument("--macro-from", type=Path, metavar="FILE.cell", help="place the cells in the network(s) of "
                    "your own .cell file instead: its network is kept, its cells replaced")  # fmt: skip
    im.add_argument("-o", "--output", type=Path, help="the .cell file to write (default: stdout)")
    _add_set(im)

    eg = sub.add_parser("export-genotype", help="print the genotype string of a derived spec")
    eg.add_argument("file", type=Path)

    tr = sub.add_parser("train", help="retrain a derived network (a classifier, or with --task detection a RetinaNet on it)",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TRAIN_EPILOG)  # fmt: skip
    tr.add_argument("file", type=Path)
    tr.add_argument("--data", help="classification: digits (default) | synthetic[:N] | cifar10:PATH | folder:PATH; "
                    "detection: coco:PATH (the layout is below)")  # fmt: skip
    tr.add_argument("--out", required=True, type=Path, help="the run directory (checkpoints, metrics.jsonl)")
    tr.add_argument("--preset", help="darts-cifar | darts-imagenet | digits | detection (the default of --task detection)")
    tr.add_argument("--task", choices=("classification", "detection"), default="classification",
                    help="classification (default), or detection: the network as a RetinaNet backbone")  # fmt: skip
    for flag, kind in (("--epochs", int), ("--batch-size", int), ("--lr", float), ("--weight-decay", float), ("--cutout", int),
                       ("--drop-path", float), ("--auxiliary-weight", float), ("--grad-clip", float),
                       ("--label-smoothing", float), ("--seed", limits.seed), ("--limit-batches", int)):  # fmt: skip
        tr.add_argument(flag, type=kind, help="0: no clipping" if flag == "--grad-clip" else None)
    det = tr.add_argument_group("detection (--task detection)")
    det.add_argument("--min-size", type=int, help="resize images so the short side is this long (detection preset 320)")
    det.add_argument("--max-size", type=int, help="... and the long side at most this (detection preset 512)")
    det.add_argument("--levels", type=_levels, metavar="I,J,..", help="feature levels by position: 0 the last cell before the first "
                     "reduction, ..., the last the final cell (default: the levels of stride >= 2)")  # fmt: skip
    det.add_argument("--fpn-channels", type=int, help="FPN and head width (detection preset 64; torchvision 256)")
    det.add_argument("--hflip", type=float, help="probability of a horizontal flip of a training image (0.5)")
    det.add_argument("--eval-ap", action="store_true", default=None,
                     help="also report COCO AP, AP50, AP75, APS, APM, APL on the held-out images every epoch (pycocotools)")
    det.add_argument("--workers", type=int, help="DataLoader processes that read the images (default: 0 on the CPU, up to 4 per GPU)")
    det.add_argument("--backbone-weights", type=Path, metavar="CKPT", help="start the backbone from a classification checkpoint")
    tr.add_argument("--device", default="auto", help="auto | cpu | cuda (auto picks CUDA when present)")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (same spec, --set, --seed and --data)")
    tr.add_argument("--overwrite", action="store_true", help="replace the run in --out (its checkpoints and metrics)")
    tr.add_argument("--deterministic", action="store_true",
                    help="deterministic algorithms (cuDNN, cuBLAS workspace): on a GPU, the same weights on every run and resume; slower")  # fmt: skip
    _add_set(tr)

    ev = sub.add_parser("eval", help="accuracy of a trained network")
    ev.add_argument("file", type=Path)
    ev.add_argument("--weights", required=True, type=Path, metavar="CKPT")
    ev.add_argument("--data", help="the data it was trained on (default: the checkpoint's, else digits)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--seed", type=limits.seed, help="the seed of the held-out split used in training (default: the checkpoint's, else 0)")
    ev.add_argument("--task", choices=("classification", "detection"), default="classification",
                    help="detection: COCO AP, AP50, AP75, APS, APM, APL of a detector (--data coco:PATH)")
    _add_set(ev)

    try:
        from nasir.search.cli import add_search_parser
    except ImportError:  # pragma: no cover - the search runtime is part of the package
        add_search_parser = None
    if add_search_parser is not None:
        add_search_parser(sub)

    ve = sub.add_parser("verify-export", help="compare an exported model with PyTorch (max abs diff at batch 1 and 8)")
    ve.add_argument("model", type=Path, metavar="MODEL", help="MODEL.onnx, a TorchScript file (.pt/.ts) or MODEL.pt2")
    ve.add_argument("--spec", required=True, type=Path, help="the .cell file the model was compiled from")
    ve.add_argument("--weights", type=Path, metavar="CKPT", help="the weights it was compiled with")
    ve.add_argument("--seed", type=limits.seed, help="the seed it was compiled with, without --weights "
                    "(default: the seed the file records, as the search's derived.onnx does; else 0)")  # fmt: skip
    ve.add_argument("--tolerance", type=_tolerance, default=1e-4, help="largest acceptable max abs diff (default 1e-4)")
    _add_set(ve)
    _add_include_flag(sub)
    _add_ops_command(sub)
    _add_network_flag(sub)
    return p


# Commands that elaborate a network of the spec (docs/cli.md, "Several networks in one file").
NETWORK_COMMANDS = ("check", "info", "compile", "draw", "export-genotype", "verify-export", "train", "eval", "search")


def _add_network_flag(sub) -> None:
    """--network NAME on every command that elaborates a network (added after all the commands exist,
    so the search command defined in nasir/search/cli.py gets it too)."""
    for name in NETWORK_COMMANDS:
        if name in sub.choices:
            sub.choices[name].add_argument("--network", metavar="NAME", help="which network of the file to use "
                                           "(default: the first it declares)")  # fmt: skip


def _input_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W with three positive integers such as 3,224,224, got '{text}'")
    return shape  # type: ignore[return-value]


def _add_ops_command(sub) -> None:
    """`nasir ops [SPEC]` and `--ops FILE` on every command (docs/ops.md, "Your own ops")."""
    o = sub.add_parser("ops", help="list every op: parameters, weights, where it comes from")
    o.add_argument("file", nargs="?", type=Path, help="a spec: include the op files it names")
    o.add_argument("--json", action="store_true", help="print JSON instead of text")
    o.add_argument("--allow-include-outside", action="store_true",
                   help="let 'include' and 'ops' read files outside the spec's directory tree")  # fmt: skip
    for parser in sub.choices.values():
        parser.add_argument("--ops", dest="op_files", action="append", type=Path, default=[], metavar="FILE.py",
                            help="load the user's ops from this Python file (runs it; docs/ops.md)")  # fmt: skip


def _load_op_flags(args) -> None:
    """Load every --ops FILE into the current scope's registry (nasir/ops.py)."""
    from nasir import ops

    for f in getattr(args, "op_files", []):
        try:
            ops.load_file(f)
        except ops.OpFileError as e:
            raise DiagnosticError([Diagnostic(f"--ops {f}: cannot load ops from '{f}': {e}")]) from None


def cmd_ops(args) -> int:
    import json

    from nasir.ops import op_table, render_ops

    used = None
    if args.file is not None:  # load the spec: its op files join the scope, and its ops are marked
        from nasir.api import load

        spec = load(args.file)
        used = {o for c in spec.cells for e in c.edges for o in e.candidates if o is not None}
        used |= {o for s in spec.opsets for o in s.ops}
    rows = op_table(used)
    print(json.dumps(rows, indent=2) if args.json else render_ops(rows))
    return 0


# Commands that read no .cell spec (import reads a genotype; its output is a spec text it writes).
_NO_SPEC = {"import"}


def _add_include_flag(sub) -> None:
    """--allow-include-outside on every command that reads specs (added here, after all the commands
    exist, so that each of them gets it, also the ones defined in other modules)."""
    for name, parser in sub.choices.items():
        if name in _NO_SPEC:
            continue
        parser.add_argument("--allow-include-outside", action="store_true",
                            help="let 'include' read files outside the spec's directory tree")  # fmt: skip


def cmd_check(args) -> int:
    errors: list[Diagnostic] = []
    from nasir.api import load

    if sum(str(f) == "-" for f in args.files) > 1:
        raise DiagnosticError([Diagnostic("'-' (standard input) can be checked once")])
    for f in args.files:
        try:
            spec = _load_stdin(args.overrides, args.network) if str(f) == "-" else load(f, overrides=args.overrides, network=args.network)
            for w in spec.warnings:
                print(w.render(), file=sys.stderr)
        except DiagnosticError as e:
            errors.extend(e.diagnostics)
    if errors:
        raise DiagnosticError(errors)
    n = len(args.files)
    print(f"ok: {n} file{'s' * (n != 1)} checked", file=sys.stderr)
    return 0


def _load_stdin(overrides, network=None):
    """`nasir check -`: the spec on standard input, named <stdin> (as `nasir import -` reads a genotype)."""
    from nasir.api import load
    from nasir.frontend import read_stdin

    text = read_stdin().text
    # load() reads a string without a newline or '{' as a path; a final newline changes no position
    return load(text if "\n" in text or "{" in text else text + "\n", overrides=overrides, name="<stdin>", network=network)


def cmd_fmt(args) -> int:
    from nasir.io import atomic_write

    stdin = str(args.file) == "-"  # `nasir fmt -` reads standard input, as `nasir check -` does
    if stdin and args.in_place:
        raise DiagnosticError([Diagnostic("standard input cannot be rewritten in place", hint="drop -i")])
    if args.canonical:
        if args.in_place:
            raise DiagnosticError([Diagnostic("--canonical cannot be written in place: it drops comments and expands "
                                              "'like' and edge patterns", hint="use 'nasir fmt -i' for a lossless layout")])  # fmt: skip
        from nasir.api import load
        from nasir.printer import print_spec

        sys.stdout.write(print_spec(_load_stdin(None) if stdin else load(args.file)))
        return 0
    from nasir.fmt import format_text
    from nasir.frontend import read_source, read_stdin

    source = read_stdin() if stdin else read_source(args.file)
    text = format_text(source.text, source.name)
    if args.in_place:
        if text != source.text:
            try:
                atomic_write(args.file, text)
            except OSError as e:
                raise DiagnosticError([Diagnostic(f"cannot write '{args.file}': {e.strerror or e}")]) from None
    else:
        sys.stdout.write(text)
    return 0


def cmd_info(args) -> int:
    import json

    from nasir.analysis import render
    from nasir.measure import info

    d = info(args.file, overrides=args.overrides, input_shape=args.input, network=args.network)
    print(json.dumps(_json_safe(d), indent=2) if args.json else render(d))
    return 0


def _json_safe(x):
    """Counts past 300 digits (a candidate count of a wide space) as text: Python refuses to print an int
    of more than 4,300 digits, and no JSON reader takes one of 300 as a number."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    if isinstance(x, int) and not isinstance(x, bool) and x.bit_length() > 996:  # 2**996 ~ 10**300
        from decimal import Decimal

        return f"{Decimal(x):.6e}"
    return x


def cmd_compile(args) -> int:
    import nasir
    from nasir.api import load
    from nasir.lower import weights_path

    if args.dump_after is None and args.output is None:
        raise DiagnosticError([Diagnostic("compile needs -o OUT", None, "for example: -o model.onnx")])
    # read once: the dump, the checks and the lowering share it; --network puts the chosen network first
    spec = load(args.file, overrides=args.overrides, network=args.network)
    if args.dump_after is not None:
        from nasir.passes import pipeline as pass_pipeline
        from nasir.passes.fuse import describe

        # The pipeline the spec goes through for real (nasir/pipeline.py): a search space's supernet
        # builder runs "search", `nasir compile` of a derived spec runs "compile".
        pipeline = "search" if spec.is_search_space else "compile"
        fused = args.dump_after == "fuse_ops"  # the IR unchanged, and the fusion plan `nasir search` runs (fused by default)
        out = pass_pipeline(pipeline, verify=True, dump_after=None if fused else args.dump_after,
                            dump=lambda text: sys.stdout.write(text)).apply(spec)  # fmt: skip
        if fused:
            from nasir.printer import print_spec

            sys.stdout.write(print_spec(out) + describe(out))
        if spec.is_search_space:
            return 0
    if args.output is None:
        raise DiagnosticError([Diagnostic("compile needs -o OUT", None, "for example: -o model.onnx")])

    if args.target == "retinanet":  # a detector's checkpoint carries its network parameters: compare the spec only
        _check_weights(spec, args.weights, args.overrides, ("spec",))
    # nasir.compile dispatches by what the spec holds: a language model lowers through nasir/rnn.
    out = nasir.compile(spec, args.target, args.output, weights=args.weights, seed=args.seed, overrides=args.overrides)
    extra = f" and weights {weights_path(out)}" if args.target == "torch" and args.weights else ""
    print(f"wrote {out}{extra} ({args.target})", file=sys.stderr)
    return 0


def cmd_draw(args) -> int:
    from nasir.api import load
    from nasir.targets.draw import draw

    out = draw(load(args.file, overrides=args.overrides, network=args.network), args.output, alphas=args.alphas)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_import(args) -> int:
    from nasir.genotype import collect_notes
    from nasir.io import atomic_write
    from nasir.lower import import_genotype

    macro_from = args.macro_from
    if macro_from is not None and args.macro is not None:
        raise DiagnosticError([Diagnostic("--macro-from and --macro both name the network; give one")])
    with collect_notes() as notes:  # what a genotypes.py held besides genotypes (AutoDL's functions, classes)
        text = import_genotype(args.genotype, args.macro, overrides=args.overrides, name=args.name, macro_from=macro_from,
                               directory=args.output.parent if args.output is not None else Path.cwd())  # fmt: skip
    for note in notes:
        print(note.render(), file=sys.stderr)
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            atomic_write(args.output, text)
        except OSError as e:
            raise DiagnosticError([Diagnostic(f"cannot write '{args.output}': {e.strerror or e}")]) from None
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_export_genotype(args) -> int:
    from nasir.api import load
    from nasir.genotype import spec_to_genotype, spec_to_nb201

    spec = load(args.file, network=args.network)  # a cell pair taken from the chosen network's stacks
    one_input = bool(spec.cells) and all(len(c.inputs) == 1 for c in spec.cells)
    print(spec_to_nb201(spec) if one_input else spec_to_genotype(spec))
    return 0


def cmd_verify_export(args) -> int:
    from nasir.api import load
    from nasir.lower import verify_export
    from nasir.rnn.hooks import verify_export as verify_lm_export
    from nasir.targets.export import read_metadata

    seed = args.seed
    if seed is None and args.weights is None:
        recorded = read_metadata(args.model).get("nasir.seed")  # an untrained export records its initialisation seed
        seed = int(recorded) if recorded is not None and recorded.isdigit() and int(recorded) <= limits.MAX_SEED else 0
        if recorded is not None:
            print(f"seed {seed} (recorded in {args.model})")
    spec = load(args.spec, overrides=args.overrides, network=args.network)  # read once, for either kind
    seed = seed if seed is not None else 0
    diffs = verify_lm_export(args.model, spec, weights=args.weights, seed=seed, overrides=args.overrides)  # a language model
    if diffs is None:
        diffs = verify_export(args.model, spec, weights=args.weights, seed=seed, overrides=args.overrides)
    provider = getattr(diffs, "provider", "")  # nasir.targets.export.Parity: what the exported model ran on
    if provider:
        print(f"ran on {provider}")
    for batch, diff in diffs.items():
        print(f"batch {batch}: max abs diff {diff:.3g}")
    worst = max(diffs.values())
    nonfinite = getattr(diffs, "nonfinite", ())
    if nonfinite or not math.isfinite(worst):  # NaN > tol is false: a NaN output would otherwise pass
        for problem in nonfinite:
            print(f"nasir: {problem}", file=sys.stderr)
        print(f"nasir: parity FAILED: not finite (max abs diff {worst:.3g})", file=sys.stderr)
        return 1
    if worst > args.tolerance:
        print(f"nasir: parity FAILED: {worst:.3g} > {args.tolerance:g}", file=sys.stderr)
        return 1
    print(f"ok: within {args.tolerance:g}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from nasir.api import load
    from nasir.train import TrainConfig, TrainInterrupted, train

    detection = args.task == "detection"
    spec = None
    if not detection:  # a derived recurrent cell trains as a language model (nasir/rnn); the spec is read once
        from nasir.rnn.hooks import train_cli

        spec = load(args.file, overrides=args.overrides, network=args.network)
        if (rc := train_cli(args, spec)) is not None:
            return rc
    data = args.data or "digits"
    if detection:
        from nasir.data.coco import coco_path

        if args.data is None:
            raise DiagnosticError([Diagnostic("--task detection needs COCO-format data: --data coco:PATH", hint="see 'nasir train --help'")])
        coco_path(data)  # a bad --data is reported before the spec is even read
    if spec is None:
        spec = load(args.file, overrides=args.overrides, network=args.network)
    preset = args.preset or ("detection" if detection else "digits" if data == "digits" else None)
    cfg = TrainConfig.from_preset(
        preset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        cutout=args.cutout, drop_path=args.drop_path, auxiliary_weight=args.auxiliary_weight, grad_clip=args.grad_clip,
        label_smoothing=args.label_smoothing, seed=args.seed, limit_batches=args.limit_batches, min_size=args.min_size,
        max_size=args.max_size, levels=args.levels, fpn_channels=args.fpn_channels, hflip=args.hflip, eval_ap=args.eval_ap,
    )  # fmt: skip
    if args.overrides:
        import attrs

        cfg = attrs.evolve(cfg, set=cfg.set + tuple(args.overrides))
    if not detection and args.backbone_weights is not None:
        raise DiagnosticError([Diagnostic("--backbone-weights is for --task detection")])
    options = {"task": "detection", "workers": args.workers, "backbone_weights": args.backbone_weights} if detection else {}
    try:
        last = train(spec, data, args.out, cfg, device=args.device, resume=args.resume, deterministic=args.deterministic,
                     overwrite=args.overwrite, **options)  # fmt: skip
    except TrainInterrupted as e:
        print(f"nasir: {e}", file=sys.stderr)
        return 130
    if detection:
        print(f"valid loss {last.get('valid_loss', float('nan')):.4f} (best {last.get('best_valid_loss', float('nan')):.4f}); "
              f"weights in {args.out / 'best.pt'} and {args.out / 'last.pt'}", file=sys.stderr)  # fmt: skip
        return 0
    print(f"valid accuracy {last.get('valid_acc', float('nan')):.4f} (best {last.get('best_valid_acc', float('nan')):.4f}); "
          f"weights in {args.out / 'best.pt'} and {args.out / 'last.pt'}", file=sys.stderr)  # fmt: skip
    return 0


def cmd_eval(args) -> int:
    if args.task == "detection":  # COCO box AP with pycocotools (nasir/coco_eval.py)
        if args.network is not None:  # eval_checkpoint reads the spec from its path (no network= yet)
            raise DiagnosticError([Diagnostic("--network is not available with --task detection yet", None,
                                              "put the detector's network first in the file")])  # fmt: skip
        from nasir.coco_eval import eval_checkpoint, format_ap

        metrics, n, split = eval_checkpoint(args.file, args.weights, args.data, overrides=args.overrides, device=args.device,
                                            seed=args.seed)  # fmt: skip
        print(f"{format_ap(metrics)}  on {n} images ({split})")
        return 0
    from nasir.train import evaluate_checkpoint

    spec = args.file
    if args.network is not None:  # evaluate_checkpoint takes a loaded spec: the chosen network first
        from nasir.api import load

        spec = load(args.file, overrides=args.overrides, network=args.network)
    loss, acc, n = evaluate_checkpoint(spec, args.weights, args.data, overrides=args.overrides, device=args.device, seed=args.seed)
    print(f"accuracy {acc:.4f}  loss {loss:.4f}  on {n} held-out images")
    return 0


def cmd_search(args) -> int:
    from nasir.api import load
    from nasir.search.cli import run_search

    # The spec is read once, here: the recurrent hook (nasir/rnn/hooks.py search_cli) and the runner both
    # take a loaded spec in place of the path. With --network, the chosen network comes first
    # (nasir.api.select_network), which is the one the runner elaborates.
    args.file = load(args.file, overrides=args.overrides, network=args.network)
    return run_search(args)


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "search": cmd_search,
    "check": cmd_check, "fmt": cmd_fmt, "info": cmd_info, "compile": cmd_compile, "draw": cmd_draw,
    "import": cmd_import, "export-genotype": cmd_export_genotype, "verify-export": cmd_verify_export,
    "ops": cmd_ops,
}  # fmt: skip


def quiet_openmp_waits() -> None:
    """Make OpenMP threads sleep, not spin, while they wait (unless the user chose a policy).

    torch's CPU kernels run in OpenMP teams; by default an idle thread spins at every barrier. With
    another busy process on the cores, the spinning thread takes the core the working one needs: the
    main job on digits went from 25 s to 285 s for 3 steps next to a 2-thread benchmark. With
    OMP_WAIT_POLICY=PASSIVE it stayed at 25 s. It must be set before torch is imported, which nasir's
    commands do lazily, after this.
    """
    import os

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    quiet_openmp_waits()
    if argv is not None:
        sys.argv = ["nasir", *argv]
    debug = "--debug" in sys.argv[1:]
    try:
        args = build_parser().parse_args(sys.argv[1:])
        token = limits.ALLOW_INCLUDE_OUTSIDE.set(bool(getattr(args, "allow_include_outside", False)))
        from nasir import ops

        try:
            with ops.scope():  # op files this command loads (--ops, a spec's `ops`) end with it
                _load_op_flags(args)
                return COMMANDS[args.command](args)
        finally:
            limits.ALLOW_INCLUDE_OUTSIDE.reset(token)
    except DiagnosticError as e:
        print(_locate_flags(e).render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasir: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # an internal failure: a bug in nasir, not bad input
        if debug:
            raise
        print(f"nasir: internal error: {type(e).__name__}: {e}\n  (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
