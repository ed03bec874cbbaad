"""Throughput benchmark: DARTS_V2 (CIFAR, C = 36, 20 layers, 32x32) training and inference images per
second, eager PyTorch vs `torch.compile` vs ONNX Runtime (inference only), in one run.

Each row is the median step time over `--steps` steps after `--warmup` warm-up steps, as images/s and
as a ratio to eager at the same batch. A training step is what `nasir train` does per batch, without
the data: forward, cross-entropy, backward, SGD with momentum (train mode: batch statistics; no
auxiliary head, no drop-path). Inference runs in eval mode under `torch.inference_mode` (ORT: the ONNX
file `nasir compile --target onnx` writes, BatchNorm folded). Every engine gets `--threads` intra-op
threads (default 2, docs/performance.md's setting) and the same input.

`torch.compile` (inductor, default mode, static shapes: one compilation per batch size and mode) runs
in a child process per variant, so a compilation that does not finish is killed after
`--compile-timeout` seconds and reported as such, rather than hanging the benchmark. Each child gets a
fresh inductor cache, so the compile time is that of a first run (`--warm-cache` reuses the cache in
/tmp, which cuts a repeated compilation from minutes to seconds). Its first call
(compilation plus one step) is printed apart from the steady state, and its ratio is against eager
timed in the same child just before, under the same machine load (the `load` column shows how busy
the machine was after each row: on a shared 2-core machine, figures under load are not comparable).
Inference outputs are checked against eager (max difference relative to the largest logit). ORT's
"compile" column is the ONNX export plus session creation.
On CUDA (`--device cuda`, or `auto` when present) the torch engines run fp32 in channels_last and are
timed with synchronisation; ORT there needs onnxruntime-gpu's CUDA provider and is skipped otherwise.

    .venv/bin/python benchmarks/throughput.py [--device auto|cpu|cuda] [--threads 2] [--steps 10]
        [--infer-batches 1 64] [--train-batches 32] [--compile-timeout 900] [--warm-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "darts_v2.cell"


# ---- measuring ------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def median_step(fn: Callable[[], object], steps: int, warmup: int, device: str) -> float:
    """Median seconds of `fn()` over `steps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _setup(device: str, threads: int, mode: str, batch: int):
    """The network (seed 0), an input batch and labels on `device`, in the mode's state."""
    import torch

    from nasir.lower import build

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(SPEC).to(device)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2)).to(device)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train(mode == "train")
    return model, x, y


def _step_fn(net, model, x, y, mode: str) -> Callable[[], object]:
    import torch
    import torch.nn.functional as F

    if mode == "infer":

        def infer():
            with torch.inference_mode():
                return net(x)

        return infer
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss

    return train_step


def child(args: argparse.Namespace) -> None:
    """One torch.compile variant: prints `COMPILED <s>` after the first call, then `RESULT <json>`.

    Eager is timed here too, just before, so the ratio compares the two under the same machine load."""
    import torch
    from torch._dynamo.utils import counters

    warnings.simplefilter("ignore")
    model, x, y = _setup(args.device, args.threads, args.mode, args.batch)
    ref = None
    if args.mode == "infer":
        with torch.inference_mode():
            ref = model(x).float()
    eager = median_step(_step_fn(model, model, x, y, args.mode), args.steps, args.warmup, args.device)
    print(f"EAGER {eager:.6f}", flush=True)
    if args.mode == "train":
        model, x, y = _setup(args.device, args.threads, args.mode, args.batch)  # fresh weights, as eager started with
    compiled = torch.compile(model)
    fn = _step_fn(compiled, model, x, y, args.mode)
    t = time.perf_counter()
    out = fn()
    _sync(args.device)
    print(f"COMPILED {time.perf_counter() - t:.3f}", flush=True)
    diff = float((out.float() - ref).abs().max() / ref.abs().max()) if ref is not None else None
    step = median_step(fn, args.steps, args.warmup, args.device)
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    print("RESULT " + json.dumps({"step": step, "eager": eager, "diff": diff, "graphs": graphs, "breaks": breaks}), flush=True)


def run_child(args: argparse.Namespace, device: str, mode: str, batch: int, run_timeout: float) -> dict:
    """torch.compile in a child process: {"eager", "compile", "step" (seconds), "diff", "graphs", "breaks"},
    or what it got to and {"error": why}. The compile timeout counts from the end of the child's eager timing."""
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--batch", str(batch), "--device", device,
           "--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cache = None
    if not args.warm_cache:  # a cold compilation, as the first run on a machine: inductor's cache in a fresh folder
        cache = tempfile.mkdtemp(prefix="nasir-inductor-")
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    try:
        return _run_child(cmd, env, args.compile_timeout, run_timeout)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)


def _run_child(cmd: list[str], env: dict[str, str], compile_timeout: float, run_timeout: float) -> dict:
    # A session of its own: on a timeout the whole group goes, inductor's compile workers included.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            start_new_session=True)  # fmt: skip

    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    lines: queue.Queue[str | None] = queue.Queue()
    err: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    result: dict = {}
    start = time.perf_counter()
    phases = (("eager timing", "EAGER", run_timeout), ("compilation", "COMPILED", compile_timeout), ("steady state", "RESULT", run_timeout))
    for phase, key, limit in phases:
        deadline = time.perf_counter() + limit
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                kill()
                return {**result, "error": f"{phase} timed out after {limit:.0f} s"}
            if line is None:  # the child ended without its line: a failure
                proc.wait()
                last = next((s.strip() for s in reversed(err) if s.strip()), f"exit code {proc.returncode}")
                return {**result, "error": f"failed after {time.perf_counter() - start:.0f} s: {last[:160]}"}
            if line.startswith(key + " "):
                value = line[len(key) + 1 :]
                if key == "RESULT":
                    result.update(json.loads(value))
                else:
                    result[{"EAGER": "eager", "COMPILED": "compile"}[key]] = float(value)
                break
    proc.wait()
    return result


# ---- the run --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (the CPU, and CUDA when present) | cpu | cuda")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine (default 2)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median; default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (default 2)")
    ap.add_argument("--infer-batches", type=int, nargs="*", default=[1, 64], metavar="B", help="default 1 64 (none: skip)")
    ap.add_argument("--train-batches", type=int, nargs="*", default=[32], metavar="B", help="default 32 (none: skip)")
    ap.add_argument("--compile-timeout", type=float, default=900.0, metavar="S",
                    help="seconds a torch.compile variant may take to compile (default 900)")  # fmt: skip
    ap.add_argument("--warm-cache", action="store_true",
                    help="let torch.compile reuse inductor's on-disk cache (default: a fresh cache, a cold compilation)")  # fmt: skip
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    # internal: one torch.compile variant in a child process
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("infer", "train"), help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    elif args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    else:
        devices = [args.device]

    ort = sess_for = None
    tmp = Path(tempfile.mkdtemp(prefix="nasir-throughput-"))
    if not args.no_ort:
        import onnxruntime as ort

        from nasir.lower import compile

        onnx_path = tmp / "darts_v2.onnx"
        t = time.perf_counter()
        compile(SPEC, "onnx", onnx_path)
        export_s = time.perf_counter() - t

        def sess_for(device: str):
            providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
            if providers[0] not in ort.get_available_providers():
                return None, 0.0
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            t = time.perf_counter()
            s = ort.InferenceSession(str(onnx_path), opts, providers=providers)
            return s, export_s + time.perf_counter() - t

    load = os.getloadavg()
    print(f"nasir throughput benchmark: {SPEC.name} (C = 36, 20 layers, 32x32), torch {torch.__version__}"
          + (f", onnxruntime {ort.__version__}" if ort else "")
          + f", {args.threads} threads, median of {args.steps} steps after {args.warmup} warm-up steps")  # fmt: skip
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start")
    print()
    header = (f"{'device':<6} {'mode':<5} {'batch':>5}  {'engine':<14} {'compile':>9}  {'step':>10}  {'images/s':>9}  "
              f"{'vs eager':>8}  {'load':>5}  note")  # fmt: skip
    print(header)
    print("-" * len(header))

    def row(device, mode, batch, engine, compile_s, step, eager_step, note=""):
        comp = "-" if compile_s is None else f"{compile_s:7.1f} s"
        load = f"{os.getloadavg()[0]:5.2f}"
        if step is None:
            print(f"{device:<6} {mode:<5} {batch:>5}  {engine:<14} {comp:>9}  {'-':>10}  {'-':>9}  {'-':>8}  {load}  {note}", flush=True)
            return
        print(f"{device:<6} {mode:<5} {batch:>5}  {engine:<14} {comp:>9}  {step * 1e3:7.1f} ms  {batch / step:9.1f}  "
              f"{eager_step / step:7.2f}x  {load}  {note}", flush=True)  # fmt: skip

    for device in devices:
        sess, sess_s = sess_for(device) if sess_for else (None, 0.0)
        for mode, batches in (("infer", args.infer_batches), ("train", args.train_batches)):
            for batch in batches:
                model, x, y = _setup(device, args.threads, mode, batch)
                eager = median_step(_step_fn(model, model, x, y, mode), args.steps, args.warmup, device)
                row(device, mode, batch, "eager", None, eager, eager)
                if mode == "infer" and not args.no_ort:  # right after eager: the same machine load
                    if sess is None:
                        row(device, mode, batch, "onnxruntime", None, None, eager, "no CUDA execution provider in this onnxruntime")
                    else:
                        feed = {"image": x.float().contiguous().cpu().numpy()}
                        with torch.inference_mode():
                            ref = model(x).float().cpu().numpy()
                        diff = float(abs(sess.run(None, feed)[0] - ref).max() / abs(ref).max())
                        step = median_step(lambda feed=feed, sess=sess: sess.run(None, feed), args.steps, args.warmup, "cpu")
                        row(device, mode, batch, "onnxruntime", sess_s, step, eager, f"max rel diff {diff:.1e}")
                if not args.no_compile:
                    del model
                    run_timeout = max(120.0, 20 * (2 * (args.steps + args.warmup) + 1) * eager)
                    r = run_child(args, device, mode, batch, run_timeout)
                    if "error" in r:
                        note = r["error"]
                    else:
                        note = f"eager here {r['eager'] * 1e3:.1f} ms; {r['graphs']} graph(s), {r['breaks']} break(s)"
                        if r.get("diff") is not None:
                            note += f"; max rel diff {r['diff']:.1e}"
                    row(device, mode, batch, "torch.compile", r.get("compile"), r.get("step"), r.get("eager", eager), note)
    shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    print()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end; `load`: the 1-minute load average after each row.")
    print(f"compile: torch.compile's first call (compilation + one step; {'reusing' if args.warm_cache else 'a fresh'} inductor "
          f"cache); onnxruntime's: ONNX export + session creation.")  # fmt: skip
    print("vs eager: eager step / engine step; torch.compile against eager timed in its own process just before it")
    print("(`eager here`), so both see the same machine load. max rel diff: max |engine - eager| / max |eager| of the logits.")


if __name__ == "__main__":
    main()
