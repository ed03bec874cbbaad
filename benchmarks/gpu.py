"""One DARTS search epoch on a GPU: first and second order, AMP on and off, fused and unfused supernet.

    python benchmarks/gpu.py                    # on a machine with a CUDA GPU; about 5-8 minutes
    python benchmarks/gpu.py --steps 50 --json gpu.json

Synthetic CIFAR-sized data (3 x 32 x 32, 10 classes, random, no download): an epoch is `--steps`
search steps of `--batch` training and `--batch` validation images (DARTS' train_search.py loop: an
architecture step on the validation batch, then a weight step on the training batch), on the DARTS
space (examples/darts.cell, C = 16, 8 layers). For every configuration it prints the median step time
(architecture + weight step, after `--warmup` steps), the epoch's time and the peak GPU memory
(torch.cuda.max_memory_allocated). AMP autocasts the forward passes to bfloat16 where the GPU has it
(no loss scaling needed), else to float16 with a GradScaler on the weight step.

Without a CUDA device it exits with status 2 and says so (`--device cpu --tiny` runs the same code on
the CPU at toy sizes, to check the script itself).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_config(order: int, amp: bool, fuse: bool, a: argparse.Namespace, device) -> dict:
    import torch

    from nasir.api import load
    from nasir.search.architect import Architect
    from nasir.search.supernet import build_supernet

    torch.manual_seed(0)
    overrides = {"C": 4, "layers": 3} if a.tiny else None
    hw = 8 if a.tiny else 32
    model = build_supernet(load(ROOT / "examples" / "darts.cell"), seed=0, fuse=fuse, overrides=overrides,
                           channels_last=False).to(device)  # fmt: skip
    model.train()
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    arch = Architect(model, w_opt, order=order)
    n = a.steps + a.warmup
    g = torch.Generator(device="cpu").manual_seed(1)
    data = torch.randn(n, 2, a.batch, 3, hw, hw, generator=g)  # (step, train/valid, batch, C, H, W)
    labels = torch.randint(0, 10, (n, 2, a.batch), generator=g)
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp and dtype == torch.float16 else None

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=amp)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    t_epoch = time.perf_counter()
    for i in range(n):
        x, y = data[i].to(device, non_blocking=True), labels[i].to(device, non_blocking=True)
        train, valid = (x[0], y[0]), (x[1], y[1])
        sync()
        t = time.perf_counter()
        with autocast():
            arch.step(train, valid, xi=0.025)
        w_opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(train[0]), train[1])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(w_opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.weight_parameters(), 5.0)
        if scaler is not None:
            scaler.step(w_opt)
            scaler.update()
        else:
            w_opt.step()
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
        if i + 1 == a.warmup:
            t_epoch = time.perf_counter()
    sync()
    epoch = time.perf_counter() - t_epoch
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    if not torch.isfinite(loss.detach()).all():
        raise SystemExit(f"gpu.py: error: order {order}, amp {amp}, fuse {fuse}: the loss is not finite")
    return {"order": order, "amp": amp, "fused": fuse, "step_s": statistics.median(times), "epoch_s": epoch,
            "steps": a.steps, "batch": a.batch, "peak_gib": peak, "amp_dtype": str(dtype).split(".")[-1] if amp else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed search steps in the epoch (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning, allocator)")
    p.add_argument("--batch", type=int, default=64, help="images per training and per validation batch (DARTS: 64)")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # toy sizes, to check the script
    a = p.parse_args(argv)
    if a.steps < 1 or a.warmup < 0 or a.batch < 1:
        p.error("--steps and --batch must be at least 1, --warmup at least 0")
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu.py: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing to measure. "
              "Run it where a GPU is; CPU figures come from benchmarks/search_step.py.", file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"DARTS search epoch on {name}: {a.steps} steps of batch {a.batch} (+{a.warmup} warm-up), synthetic 3 x 32 x 32")
    print(f"{'order':>5} {'AMP':>5} {'supernet':>9} {'step':>9} {'epoch':>9} {'peak memory':>12}")
    rows = []
    for order in (1, 2):
        for amp in (False, True):
            for fuse in (False, True):
                r = run_config(order, amp, fuse, a, device)
                rows.append(r)
                print(f"{order:>5} {'on' if amp else 'off':>5} {'fused' if fuse else 'unfused':>9} {r['step_s'] * 1e3:>7.1f}ms"
                      f" {r['epoch_s']:>8.1f}s {r['peak_gib']:>8.2f} GiB", flush=True)  # fmt: skip
    print("\nfused / unfused (same order and AMP): step time, peak memory")
    for r in rows:
        if r["fused"]:
            u = next(x for x in rows if not x["fused"] and x["order"] == r["order"] and x["amp"] == r["amp"])
            print(f"  order {r['order']}, AMP {'on ' if r['amp'] else 'off'}: {r['step_s'] / u['step_s']:.2f}x, "
                  f"{r['peak_gib'] / u['peak_gib']:.2f}x")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
