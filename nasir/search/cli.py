"""`nasir search`: the flags and their rendering only; the work is `nasir.search.runner.search`.

The lead wires `add_search_parser` and `run_search` into nasir/cli.py. Exit codes: 0 done, 2 bad input
(a DiagnosticError, rendered by the caller), 130 stopped by a signal (a checkpoint was saved first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nasir import limits, methods

# The search settings (library keywords, nasir/search/settings.py FLAGS) whose flag is not `--` + the name
# with dashes: nasir/cli.py points a setting's error at its flag through this table.
SETTING_FLAGS = {"partial_channels": "--pc-k", "w_lr": "--lr", "w_lr_min": "--lr-min", "w_weight_decay": "--weight-decay",
                 "a_lr": "--arch-lr", "a_weight_decay": "--arch-weight-decay", "channels_last": "--layout"}  # fmt: skip


def add_search_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("search", help="search a space on data and derive an architecture",
                              description="Run DARTS on a .cell search space; settings in the spec's search block are "
                                          "defaults that these flags override.")  # fmt: skip
    p.add_argument("file", type=Path, metavar="SPEC", help="a .cell file with choice(...) edges")
    p.add_argument("--data", default="digits", metavar="SPEC",
                   help="digits (embedded, default) | synthetic[:N] | cifar10:PATH | folder:PATH")  # fmt: skip
    p.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: runs/<spec name>)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs (default: the spec's, else 50)")
    p.add_argument("--batch-size", type=int, metavar="B", help="batch size (default: the spec's, else 64)")
    p.add_argument("--method", choices=methods.spellings("method"),
                   help="architecture update: DARTS, MiLeNAS mixed level, PC-DARTS partial channels (default: the spec's, else darts)")  # fmt: skip
    p.add_argument("--order", type=int, choices=(1, 2), help="DARTS first or second order (default: the spec's, else 1)")
    p.add_argument("--pc-k", type=int, metavar="K", help="PC-DARTS: 1/K of the channels through the mixed ops (default 4)")
    p.add_argument("--select", choices=methods.spellings("select"),
                   help="how the architecture is derived: alpha magnitude (DARTS), operation strength or OStr* "
                        "(OStr-DARTS), loss increase on removal (naive); default: the spec's, else magnitude")  # fmt: skip
    p.add_argument("--strength-window", type=int, metavar="B", help="operation strength over the last B steps (default: one epoch)")
    p.add_argument("--smooth", choices=methods.spellings("smooth"), help="SDARTS smoothing of the weight step (default: the spec's, else none)")
    p.add_argument("--adv-steps", type=int, metavar="N", help="SDARTS-ADV: PGD steps (default 7)")
    p.add_argument("--early-stop", type=int, metavar="C", help="stop once the derived architecture is unchanged for C epochs")
    p.add_argument("--hessian", action="store_true", default=None,
                   help="record the largest eigenvalue of the Hessian of L_val w.r.t. alpha each epoch (at most 20 Hessian-vector products)")  # fmt: skip
    p.add_argument("--warmup", type=int, metavar="E",
                   help="epochs of weight steps before the first architecture step (default: the spec's, else 15 "
                        "under pcdarts as its authors run it, else 0)")  # fmt: skip
    p.add_argument("--lr", type=float, metavar="LR", help="weight learning rate, cosine-annealed (default: the spec's, else 0.025)")
    p.add_argument("--lr-min", type=float, metavar="LR", help="the cosine schedule's floor (default: the spec's, else 0.001)")
    p.add_argument("--momentum", type=float, metavar="M", help="weight SGD momentum (default: the spec's, else 0.9)")
    p.add_argument("--weight-decay", type=float, metavar="WD", help="weight decay of the weights (default: the spec's, else 3e-4)")
    p.add_argument("--arch-lr", type=float, metavar="LR", help="architecture Adam learning rate (default: the spec's, else 3e-4)")
    p.add_argument("--arch-weight-decay", type=float, metavar="WD",
                   help="architecture Adam weight decay (default: the spec's, else 1e-3)")  # fmt: skip
    p.add_argument("--seed", type=limits.seed, metavar="S", help="random seed, 0..2**32-1 (default: the spec's, else 2)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto | cpu | cuda | cuda:N; auto picks CUDA when available (under torchrun: LOCAL_RANK's GPU)")  # fmt: skip
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic CUDA algorithms: the same alphas on every run and after --resume (slower; docs/gpu.md)")  # fmt: skip
    p.add_argument("--no-fp32-arch-grads", dest="fp32_arch_grads", action="store_false",
                   help="allow TF32 in the architecture gradients (default: full fp32; docs/gpu.md)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue the search saved in --out")
    p.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=True,
                   help="the fused supernet (one ReLU and pooling per state, weights folded into BN; faster, the same "
                        "values up to float rounding; the default); --no-fuse runs op by op as the DARTS code does")  # fmt: skip
    p.add_argument("--low-memory", action="store_true", help="recompute mixed ops in the backward pass (less memory)")
    p.add_argument("--layout", choices=("auto", "channels-last", "contiguous"), default="auto",
                   help="tensor layout (auto: channels-last on CPU)")  # fmt: skip
    p.add_argument("--limit-batches", type=int, metavar="N", help="at most N steps per epoch (quick runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", dest="overrides", action="append", metavar="NAME=VALUE", default=[],
                   help="override a network parameter")  # fmt: skip
    return p


def run_search(args: argparse.Namespace) -> int:
    from nasir.rnn.hooks import search_cli
    from nasir.search.runner import SearchInterrupted, keep_freed_memory, search

    if (rc := search_cli(args)) is not None:  # a recurrent space: the language-model search (nasir/rnn)
        return rc

    if not args.device.startswith("cuda"):
        keep_freed_memory()  # a whole process for one search: keep its activations' pages between steps

    select = methods.canonical("select", args.select)  # strength-star and strength_star alike
    layout = {"auto": None, "channels-last": True, "contiguous": False}[args.layout]
    t0 = time.perf_counter()
    try:
        result = search(args.file, data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
                        order=args.order, seed=args.seed, select=select, method=args.method,
                        partial_channels=args.pc_k, smooth=args.smooth, adv_steps=args.adv_steps,
                        early_stop=args.early_stop, hessian=args.hessian, strength_window=args.strength_window,
                        warmup=args.warmup, w_lr=args.lr, w_lr_min=args.lr_min, momentum=args.momentum,
                        w_weight_decay=args.weight_decay, a_lr=args.arch_lr, a_weight_decay=args.arch_weight_decay,
                        device=args.device, resume=args.resume,
                        overrides=args.overrides, low_memory=args.low_memory, fuse=args.fuse, channels_last=layout,
                        limit_batches=args.limit_batches, progress=not args.no_progress,
                        deterministic=args.deterministic, fp32_arch_grads=args.fp32_arch_grads,
                        network=getattr(args, "network", None))  # fmt: skip
    except SearchInterrupted as e:
        print(f"nasir: {e}", file=sys.stderr)
        return 130
    sys.stdout.write(result.derived_text)
    last = result.metrics[-1] if result.metrics else {}
    print()
    if result.genotype:
        print(f"genotype: {result.genotype}")
    if last.get("early_stop"):
        print(f"early stop: the architecture did not change for {last['unchanged_epochs']} epochs")
    if last:
        print(f"epoch {last['epoch']}: train acc {last['train_acc']:.3f}, valid acc {last['valid_acc']:.3f} "
              f"(supernet, eval mode, on the architecture half)")  # fmt: skip
    for note in result.notes:
        print(f"note: {note}")
    if last.get("hessian_eig") is not None:
        flag = "" if last.get("hessian_converged", True) else " (power iteration did not converge)"
        print(f"largest Hessian eigenvalue of L_val w.r.t. alpha: {last['hessian_eig']:.4g}{flag}")
    print(f"search took {time.perf_counter() - t0:.0f} s; files in {result.out}/:")
    for name in result.files:
        print(f"  {name}")
    return 0
