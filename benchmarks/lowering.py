"""Lowering benchmark: DARTS_V2 (CIFAR, C = 36, 20 layers) compile time and inference latency, in one run.

Prints the time to compile examples/darts_v2.cell to an ONNX file (in process, after imports; and the
whole `python -m nasir compile` command), then eager PyTorch vs TorchScript vs ONNX Runtime latency at
batch 1 and 64 as medians after warm-up, with the ratios to eager. All engines use the same number of
intra-op threads (`--threads`, default 2, docs/performance.md's setting). Targets (docs/performance.md): TorchScript /
ONNX Runtime >= 4x eager at batch 1; .cell -> ONNX < 3 s.

    .venv/bin/python benchmarks/lowering.py [--threads 2] [--runs 7] [--batches 1 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "darts_v2.cell"


def median_time(fn: Callable[..., object], arg: object, runs: int, warmup: int = 2) -> float:
    """Median seconds of `fn(arg)` over `runs` calls after `warmup` calls."""
    for _ in range(warmup):
        fn(arg)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7, help="timed runs per measurement (median)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    import onnxruntime as ort

    from nasir.lower import build, compile

    tmp = Path(tempfile.mkdtemp(prefix="nasir-bench-"))
    onnx_path, ts_path = tmp / "darts_v2.onnx", tmp / "darts_v2.ts"

    t = time.perf_counter()
    compile(SPEC, "onnx", onnx_path)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    r = subprocess.run([sys.executable, "-m", "nasir", "compile", str(SPEC), "--target", "onnx", "-o", str(tmp / "cli.onnx")],
                       capture_output=True, text=True, cwd=ROOT, env=env)  # fmt: skip
    cli_s = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    t = time.perf_counter()
    compile(SPEC, "torchscript", ts_path)
    ts_compile_s = time.perf_counter() - t

    model = build(SPEC).eval()
    scripted = torch.jit.load(str(ts_path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    print(f"nasir lowering benchmark: {SPEC.name} (C = 36, 20 layers, 32x32), torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, {args.threads} threads, median of {args.runs} runs after warm-up")  # fmt: skip
    print(f"compile .cell -> ONNX, in process:        {compile_s:6.2f} s   (target < 3 s)")
    print(f"compile .cell -> ONNX, `nasir compile`:   {cli_s:6.2f} s   (includes starting Python and importing torch)")
    print(f"compile .cell -> TorchScript, in process: {ts_compile_s:6.2f} s")
    print()
    rows = {}
    for b in args.batches:
        x = torch.randn(b, 3, 32, 32)
        xn = x.numpy()
        with torch.inference_mode():
            ref = model(x)
            eager = median_time(model, x, args.runs)
            ts = median_time(scripted, x, args.runs)
            assert (scripted(x) - ref).abs().max() <= 1e-4
        ort_s = median_time(lambda feed: sess.run(None, feed), {"image": xn}, args.runs)
        assert np.abs(sess.run(None, {"image": xn})[0] - ref.numpy()).max() <= 1e-4
        rows[b] = [x, eager, ts, ort_s]
    # The same TorchScript file with PyTorch's oneDNN Graph fuser switched on (a runtime setting of the loader,
    # not something the file can carry); measured last because the switch is global.
    torch.jit.enable_onednn_fusion(True)
    fused = torch.jit.load(str(ts_path))
    for b, (x, *_) in rows.items():
        with torch.no_grad():
            rows[b].append(median_time(fused, x, args.runs, warmup=4))
    torch.jit.enable_onednn_fusion(False)

    print(f"{'batch':>5}  {'eager':>10}  {'TorchScript':>11}  {'TS+oneDNN':>10}  {'ORT':>10}    "
          f"{'eager/TS':>8}  {'eager/TS+oneDNN':>15}  {'eager/ORT':>9}")  # fmt: skip
    for b, (_, eager, ts, ort_s, fused_s) in rows.items():
        print(f"{b:>5}  {eager * 1e3:7.1f} ms  {ts * 1e3:8.1f} ms  {fused_s * 1e3:7.1f} ms  {ort_s * 1e3:7.1f} ms    "
              f"{eager / ts:7.2f}x  {eager / fused_s:14.2f}x  {eager / ort_s:8.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
