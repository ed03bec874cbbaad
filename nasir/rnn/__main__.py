"""`python -m nasir.rnn search|train|compile|info|import FILE ...`: the recurrent commands on their own.

The same functions serve `nasir search / train / compile / info / import` for a spec whose network is a
`language_model`; this entry point works whether or not the main CLI dispatches to them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nasir.diagnostics import DiagnosticError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nasir.rnn", description="Recurrent cells: search, train, compile, info, import.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(q):
        q.add_argument("file", type=Path)
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")

    s = sub.add_parser("search", help="search a recurrent space")
    common(s)
    s.add_argument("--data", default="embedded", help="embedded (default) | ptb:PATH")
    s.add_argument("--out", type=Path)
    s.add_argument("--resume", action="store_true")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto picks CUDA when present)")
    for flag, kind in (("--epochs", int), ("--batch-size", int), ("--order", int), ("--seed", int), ("--bptt", int),
                       ("--lr", float), ("--limit-batches", int), ("--select", str), ("--warmup", int)):  # fmt: skip
        s.add_argument(flag, type=kind)

    t = sub.add_parser("train", help="train a derived recurrent cell as a language model")
    common(t)
    t.add_argument("--data", default="embedded")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out (its checkpoint, weights and metrics)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (under torchrun: LOCAL_RANK's GPU)")
    for flag, kind in (("--epochs", int), ("--batch-size", int), ("--seed", int), ("--bptt", int), ("--lr", float),
                       ("--limit-batches", int), ("--nonmono", int)):  # fmt: skip
        t.add_argument(flag, type=kind)

    c = sub.add_parser("compile", help="generated PyTorch source, TorchScript or ONNX of the language model")
    common(c)
    c.add_argument("--target", "-t", required=True, choices=("torch", "torchscript", "onnx"))
    c.add_argument("-o", "--output", type=Path, required=True)
    c.add_argument("--weights", type=Path)
    c.add_argument("--seed", type=int, default=0)

    i = sub.add_parser("info", help="parameters, MACs per token, cell depth")
    common(i)
    i.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nasir.rnn import api

    try:
        if args.command == "search":
            r = api.search(args.file, args.data, args.out, overrides=args.overrides, resume=args.resume, epochs=args.epochs,
                           batch_size=args.batch_size, order=args.order, seed=args.seed, bptt=args.bptt, lr=args.lr,
                           limit_batches=args.limit_batches, select=args.select, warmup=args.warmup, device=args.device)  # fmt: skip
            print(f"{r.genotype}\nwrote {r.out / 'derived.cell'}", file=sys.stderr)
        elif args.command == "train":
            r = api.train(args.file, args.data, args.out, overrides=args.overrides, resume=args.resume, epochs=args.epochs,
                          batch_size=args.batch_size, seed=args.seed, bptt=args.bptt, lr=args.lr,
                          limit_batches=args.limit_batches, nonmono=args.nonmono, device=args.device, overwrite=args.overwrite)  # fmt: skip
            print(f"valid perplexity {r.valid_ppl:.2f}, test perplexity {r.test_ppl:.2f}; weights in {r.out / 'model.pt'}", file=sys.stderr)
        elif args.command == "compile":
            out = api.compile(args.file, args.target, args.output, weights=args.weights, seed=args.seed, overrides=args.overrides)
            print(f"wrote {out} ({args.target})", file=sys.stderr)
        elif args.command == "info":
            from nasir.rnn.info import format_info

            d = api.info(args.file, overrides=args.overrides)
            print(json.dumps(d, indent=2) if args.json else format_info(d), end="" if not args.json else "\n")
    except DiagnosticError as e:
        print(e.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"nasir: {e}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
