"""The first run on a GPU: does the CUDA path of search, training and export work, resume and reproduce?

    python benchmarks/gpu_smoke.py                 # every check, about 5 minutes on one recent GPU
    python benchmarks/gpu_smoke.py --only tf32,memory

Each check prints one line, PASS or FAIL, with its figure, as soon as it ends; a check that raises is a
FAIL with the exception, and the others still run. The exit status is 1 if any check failed. On a
machine without CUDA it prints one line saying so and exits 0. Not part of the test suite (issue 17;
docs/gpu.md says what each promise is).

  methods      every search method (DARTS order 1 and 2, MiLeNAS, PC-DARTS K = 4) one short epoch on
               CUDA: finite losses and alphas; seconds per step and peak GPU memory
  search-resume  a search stopped mid-epoch and resumed ends with the alphas of one that never stopped
               (deterministic mode): max |difference| must be 0
  train-resume   the same for `nasir train` with AMP (fp16 autocast, GradScaler state in last.pt)
  cross-device   a search saved on the GPU resumes on the CPU, and one saved on the CPU on the GPU
  determinism  two searches with one seed in the deterministic mode: identical alphas (and, as a
               figure, how far apart two runs are without it)
  tf32         the second-order architecture gradient at full DARTS size (C = 16, 8 cells, batch 64,
               32 x 32) with TF32 against full fp32: relative difference and sign flips; fp32 twice
               must agree far better than TF32 with fp32
  fusion       the fused supernet (the default) against op by op on the GPU in float64: loss and
               gradients equal to 1e-6 relative
  compile      the compiled supernet (build_supernet(compile=True): torch.compile of each searched cell)
               against eager on the GPU: loss and gradients equal to 1e-6 relative (float64); in
               float32 the compile time and the forward + backward times (3 cells, a few minutes)
  memory       peak GPU memory of one search step (architecture + weight step) at full DARTS size:
               DARTS, PC-DARTS (K = 4), DARTS low-memory; both alternatives must use less
  train-amp    a darts-cifar-sized training run (C = 36, 20 cells, auxiliary head, batch 96) with AMP:
               a few steps, finite loss; seconds per step and peak memory
  detection    `nasir train --task detection` on CUDA on a tiny COCO-format set, then the trained
               detector (on the GPU) to ONNX and through ONNX Runtime
  ort-cuda     DARTS_V2 (C = 36, 20 cells) exported from the GPU, run on ONNX Runtime's CUDA provider
               (needs the onnxruntime-gpu wheel: pip install -e '.[gpu,tools]'): parity, images/s
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SPACE = EXAMPLES / "darts.cell"  # the DARTS CNN search space (C = 16, 8 cells, 3 x 32 x 32)
DERIVED = EXAMPLES / "darts_v2.cell"
SMALL = ["C=8", "layers=5"]  # a quicker supernet for the checks that run whole searches
DEVICE = "cuda"  # --cpu: the checks' code on the CPU, for work on this script (GPU-only checks fail there)

CHECKS: dict[str, Callable[[Path], tuple[bool, str]]] = {}


def check(name: str):
    def register(fn):
        CHECKS[name] = fn
        return fn

    return register


# ---- helpers -----------------------------------------------------------------------------------
def _search(out: Path, **kw):
    """A short search of the small DARTS space on synthetic 3 x 32 x 32 data; SearchInterrupted passes through."""
    from nasir.search.runner import search

    args = dict(data="synthetic:512", epochs=2, batch_size=32, limit_batches=3, seed=2, overrides=SMALL, device=DEVICE,
                progress=False, artifacts=False)  # fmt: skip
    args.update(kw)
    return search(SPACE, out=out, **args)


def _interrupted(out: Path, steps: int, **kw) -> None:
    from nasir.search.runner import SearchInterrupted

    try:
        _search(out, stop_after_steps=steps, **kw)
    except SearchInterrupted:
        return
    raise AssertionError(f"the search did not stop after {steps} steps")


def _max_diff(a: dict, b: dict) -> float:
    """max |a - b| over every alpha of two {cell kind: [[alpha per op] per edge]} tables."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    worst = 0.0
    for k in a:
        for ra, rb in zip(a[k], b[k], strict=True):
            for x, y in zip(ra, rb, strict=True):
                worst = max(worst, abs(x - y))
    return worst


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def _alphas_finite(alphas: dict) -> bool:
    return _finite(x for rows in alphas.values() for row in rows for x in row)


# ---- the checks ----------------------------------------------------------------------------------
@check("methods")
def methods(tmp: Path) -> tuple[bool, str]:
    figures, ok = [], True
    for name, kw in (("darts-1", dict(method="darts", order=1)), ("darts-2", dict(method="darts", order=2)),
                     ("milenas", dict(method="milenas")), ("pcdarts-4", dict(method="pcdarts", partial_channels=4, warmup=0))):  # fmt: skip
        r = _search(tmp / name, epochs=1, limit_batches=4, **kw)
        m = r.metrics[-1]
        good = m["arch_loss"] is not None and _finite([m["train_loss"], m["valid_loss"], m["arch_loss"]]) and _alphas_finite(r.alphas)
        ok = ok and good
        peak = m.get("gpu_peak_mb")
        figures.append(f"{name} {m['train_s'] / m['steps']:.3f} s/step" + (f" {peak:.0f} MiB" if peak is not None else "")
                       + ("" if good else " NOT FINITE"))  # fmt: skip
    return ok, "; ".join(figures)


@check("search-resume")
def search_resume(tmp: Path) -> tuple[bool, str]:
    whole = _search(tmp / "whole", deterministic=True)
    _interrupted(tmp / "cut", 4, deterministic=True)  # mid epoch 2 of 2 (3 steps each)
    resumed = _search(tmp / "cut", resume=True, deterministic=True)
    d = _max_diff(whole.alphas, resumed.alphas)
    return d == 0.0 and resumed.derived_text == whole.derived_text, f"max |alpha difference| {d:.3g} after resuming at step 4 of 6"


@check("train-resume")
def train_resume(tmp: Path) -> tuple[bool, str]:
    import torch

    from nasir.api import load
    from nasir.train import TrainConfig, TrainInterrupted, load_checkpoint, train

    spec = load(DERIVED, overrides=SMALL)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, limit_batches=3, seed=3, cutout=8, drop_path=0.2, set=tuple(SMALL))
    train(spec, "synthetic:256", tmp / "whole", cfg, device=DEVICE, progress=False, deterministic=True)
    try:
        train(spec, "synthetic:256", tmp / "cut", cfg, device=DEVICE, progress=False, deterministic=True, stop_after_steps=4)
        raise AssertionError("training did not stop after 4 steps")
    except TrainInterrupted:
        pass
    train(spec, "synthetic:256", tmp / "cut", cfg, device=DEVICE, progress=False, deterministic=True, resume=True)
    a, b = load_checkpoint(tmp / "whole" / "last.pt"), load_checkpoint(tmp / "cut" / "last.pt")
    d = max(float((a["model"][k].double() - b["model"][k].double()).abs().max()) for k in a["model"])
    same_scaler = a["scaler"] == b["scaler"] and bool(a["scaler"])
    scale = a["scaler"].get("scale") if a["scaler"] else None
    return d == 0.0 and same_scaler, f"max |weight difference| {d:.3g}; GradScaler state equal: {same_scaler} (scale {scale}); torch {torch.__version__}"


@check("cross-device")
def cross_device(tmp: Path) -> tuple[bool, str]:
    ref = _search(tmp / "ref")
    _interrupted(tmp / "g2c", 2)
    g2c = _search(tmp / "g2c", resume=True, device="cpu")
    _interrupted(tmp / "c2g", 2, device="cpu")
    c2g = _search(tmp / "c2g", resume=True, device=DEVICE)
    d1, d2 = _max_diff(ref.alphas, g2c.alphas), _max_diff(ref.alphas, c2g.alphas)
    notes = [n for n in (*g2c.notes, *c2g.notes) if "RNG" in n]
    ok = _alphas_finite(g2c.alphas) and _alphas_finite(c2g.alphas) and max(d1, d2) < 1e-2
    return ok, f"GPU->CPU max |alpha - uninterrupted GPU run| {d1:.2g}, CPU->GPU {d2:.2g}; notes: {notes or 'none'}"


@check("determinism")
def determinism(tmp: Path) -> tuple[bool, str]:
    a = _search(tmp / "a", deterministic=True)
    b = _search(tmp / "b", deterministic=True)
    c = _search(tmp / "c")
    e = _search(tmp / "e")
    d, loose = _max_diff(a.alphas, b.alphas), _max_diff(c.alphas, e.alphas)
    return d == 0.0, f"deterministic mode: max |alpha difference| {d:.3g}; default mode: {loose:.3g}"


def _darts_batches(plan, n: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *plan.input, generator=g).to(DEVICE)
    y = torch.randint(0, plan.classes, (n,), generator=g).to(DEVICE)
    return x, y


@check("tf32")
def tf32(tmp: Path) -> tuple[bool, str]:
    import torch

    from nasir.device import fp32_arch_grads
    from nasir.lower import resolve
    from nasir.search.architect import Architect
    from nasir.search.supernet import build_supernet, prepare

    spec, plan = resolve(SPACE)
    model = build_supernet(prepare(spec), plan, seed=0).to(DEVICE).train()
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    arch = Architect(model, w_opt, order=2)
    train_b, valid_b = _darts_batches(plan, 64, 0), _darts_batches(plan, 64, 1)

    def gradient() -> torch.Tensor:
        g, _, _ = arch.second_order_grad(train_b, valid_b, xi=0.025)
        return torch.cat([t.flatten() for t in g]).double()

    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic)
    try:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        g_tf32 = gradient()
        with fp32_arch_grads():
            g32 = gradient()
            g32b = gradient()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic = old

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    r, noise = rel(g_tf32, g32), rel(g32b, g32)
    flips = float((torch.sign(g_tf32) != torch.sign(g32)).double().mean())
    name = torch.cuda.get_device_name()
    return noise <= 0.1 * r or r < 1e-6, (f"{name}: TF32 vs fp32 relative difference {r:.3g}, sign flips {100 * flips:.1f} %; "
                                          f"fp32 vs fp32 {noise:.3g}")  # fmt: skip


@check("memory")
def memory(tmp: Path) -> tuple[bool, str]:
    import torch

    from nasir.lower import resolve
    from nasir.search.architect import Architect, weight_step
    from nasir.search.supernet import build_supernet, prepare

    spec, plan = resolve(SPACE)
    train_b, valid_b = _darts_batches(plan, 64, 0), _darts_batches(plan, 64, 1)
    peaks = {}
    for name, kw in (("DARTS", {}), ("PC-DARTS K=4", {"partial_channels": 4}), ("DARTS low-memory", {"low_memory": True})):
        model = build_supernet(prepare(spec), plan, seed=0, **kw).to(DEVICE).train()
        w_opt = torch.optim.SGD(model.weight_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
        arch = Architect(model, w_opt, order=1)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):  # the second step has the optimiser state too
            arch.step(train_b, valid_b, xi=0.025)
            weight_step(model, w_opt, train_b, clip=5.0)
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() / 2**20
        del model, w_opt, arch
        torch.cuda.empty_cache()
    base = peaks["DARTS"]
    ok = peaks["PC-DARTS K=4"] < base and peaks["DARTS low-memory"] < base
    return ok, ", ".join(f"{k} {v:.0f} MiB ({v / base:.2f} x)" for k, v in peaks.items())


@check("fusion")
def fusion(tmp: Path) -> tuple[bool, str]:
    """The fused supernet (the default) against op by op on the GPU, in float64: loss, weight and alpha
    gradients equal to 1e-6 relative (tests/search/test_fusion.py checks the same on the CPU)."""
    import torch
    import torch.nn.functional as F

    from nasir.lower import resolve
    from nasir.search.supernet import build_supernet, prepare

    spec, plan = resolve(SPACE, SMALL)
    x, y = _darts_batches(plan, 16, 0)
    out = []
    for fuse in (True, False):
        model = build_supernet(prepare(spec), plan, seed=0, fuse=fuse).to(DEVICE, torch.float64).train()
        loss = F.cross_entropy(model(x.to(DEVICE, torch.float64)), y.to(DEVICE))
        grads = torch.autograd.grad(loss, model.weight_parameters() + model.arch_parameters())
        out.append(torch.cat([loss.reshape(1)] + [g.flatten() for g in grads]).detach())
    rel = float((out[0] - out[1]).norm() / out[1].norm())
    return rel < 1e-6 and bool(torch.isfinite(out[0]).all()), f"fused against op by op, float64: relative difference {rel:.2e}"


@check("compile")
def compile_cells(tmp: Path) -> tuple[bool, str]:
    """Regional compilation on the GPU (tests/search/test_compile.py checks it on the CPU): the compiled
    supernet's loss and gradients against eager ones in float64, and in float32 what compiling costs and
    buys per forward + backward pass."""
    import torch
    import torch.nn.functional as F

    from nasir.lower import resolve
    from nasir.search.supernet import build_supernet, prepare

    spec, plan = resolve(SPACE, ["C=8", "layers=3"])  # three cells: three compilations per dtype (minutes)
    x, y = _darts_batches(plan, 32, 0)
    x, y = x.to(DEVICE), y.to(DEVICE)
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    out, times = [], []
    for compile in (False, True):
        model = build_supernet(prepare(spec), plan, seed=0, compile=compile).to(DEVICE, torch.float64).train()
        loss = F.cross_entropy(model(x.double()), y)
        grads = torch.autograd.grad(loss, model.weight_parameters() + model.arch_parameters())
        out.append(torch.cat([loss.reshape(1)] + [g.flatten() for g in grads]).detach())
        model = build_supernet(prepare(spec), plan, seed=0, compile=compile).to(DEVICE).train()
        steps = []
        for _ in range(4):
            sync()
            t = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            torch.autograd.grad(loss, model.weight_parameters() + model.arch_parameters())
            sync()
            steps.append(time.perf_counter() - t)
        times.append(steps)
    rel = float((out[1] - out[0]).norm() / out[0].norm())
    eager, compiled = sorted(times[0][1:])[1], sorted(times[1][1:])[1]
    return rel < 1e-6 and bool(torch.isfinite(out[1]).all()), (
        f"compiled against eager, float64: relative difference {rel:.2e}; float32: first call {times[1][0]:.0f} s "
        f"(compiling), forward + backward {compiled * 1e3:.1f} ms against {eager * 1e3:.1f} ms ({compiled / eager:.2f}x)")


@check("train-amp")
def train_amp(tmp: Path) -> tuple[bool, str]:
    from nasir.api import load
    from nasir.train import TrainConfig, train

    cfg = TrainConfig.from_preset("darts-cifar", epochs=1, limit_batches=4)
    last = train(load(DERIVED), "synthetic:480", tmp / "run", cfg, device=DEVICE, progress=False)  # 384 train images: 4 x 96
    rec = json.loads((tmp / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    ok = _finite([last["train_loss"], last["valid_loss"]]) and "amp_scale" in rec
    return ok, (f"4 steps of 96 in {rec['seconds']:.2f} s (with cuDNN autotuning and evaluation), peak {rec.get('gpu_peak_mb')} MiB, "
                f"loss scale {rec.get('amp_scale')}, train loss {last['train_loss']:.3f}")  # fmt: skip


def _make_coco(root: Path, n: int = 8) -> Path:
    """`n` 64 x 64 PNGs, one or two boxes each (a red square, category 1; a green bar, category 2)."""
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for i in range(n):
        img = torch.full((64, 64, 3), 96, dtype=torch.uint8)
        for k in range(1 + i % 2):
            cat = 1 + (i + k) % 2
            w, h = (16, 16) if cat == 1 else (24, 10)
            x, y = (int(v) for v in torch.randint(0, 40, (2,), generator=g))
            img[y : y + h, x : x + w] = torch.tensor([220, 30, 30] if cat == 1 else [30, 200, 40], dtype=torch.uint8)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(img.numpy()).save(root / "train" / f"{i:03d}.png")
        images.append({"id": i + 1, "file_name": f"{i:03d}.png", "width": 64, "height": 64})
    cats = [{"id": 1, "name": "square"}, {"id": 2, "name": "bar"}]
    (root / "annotations" / "instances_train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


@check("detection")
def detection_onnx(tmp: Path) -> tuple[bool, str]:
    import numpy as np
    import torch

    from nasir.api import load
    from nasir.targets import detection, export
    from nasir.train import TrainConfig, train

    spec = load(DERIVED, overrides=SMALL)
    data = _make_coco(tmp / "coco")
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.01, weight_decay=1e-4, grad_clip=10.0, seed=5, set=tuple(SMALL),
                      min_size=64, max_size=64, fpn_channels=16)  # fmt: skip
    last = train(spec, f"coco:{data}", tmp / "run", cfg, task="detection", device=DEVICE, progress=False)
    model, _ = detection.load_detector(spec, tmp / "run" / "best.pt")
    model = model.to(DEVICE).eval()
    model.score_thresh, model.detections_per_img = 0.0, 20  # 20 detections to compare, whatever the training reached
    path = detection.write_onnx(model, tmp / "det.onnx")  # traced from the model on the GPU
    ort = export.onnxruntime()
    sess = ort.InferenceSession(str(path), providers=export.onnx_providers("auto"))
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model([x.to(DEVICE)])[0]
    boxes, scores, labels = sess.run(None, {"image": x.numpy()})
    n_ref, n_ort = len(ref["scores"]), len(scores)
    same = n_ref == n_ort
    diff = float(np.abs(np.sort(scores) - np.sort(ref["scores"].cpu().numpy())).max()) if same and n_ref else 0.0
    ok = _finite([last["valid_loss"]]) and same and diff < 1e-2
    return ok, (f"valid loss {last['valid_loss']:.3f}; ONNX on {sess.get_providers()[0]}: {n_ort} detections, eager {n_ref}, "
                f"max |score difference| {diff:.2g}")  # fmt: skip


@check("ort-cuda")
def ort_cuda(tmp: Path) -> tuple[bool, str]:
    import numpy as np
    import torch

    from nasir.lower import build
    from nasir.targets import export

    model = build(DERIVED, overrides=["C=36", "layers=20"]).to(DEVICE).eval()
    path = export.to_onnx(model, torch.zeros(1, 3, 32, 32), tmp / "m.onnx")  # the example follows the model to the GPU
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # compare with full fp32
    try:
        diffs = export.parity(model, path, (1, 64), provider="cuda")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    _, run, _ = export.load_runner(path, "cuda")
    x = np.random.default_rng(0).standard_normal((64, 3, 32, 32), dtype=np.float32)
    for _ in range(3):
        run(x)
    t0 = time.perf_counter()
    for _ in range(10):
        run(x)
    rate = 640 / (time.perf_counter() - t0)
    worst = max(diffs.values())
    return diffs.provider == "CUDAExecutionProvider" and worst <= 1e-3, (
        f"{diffs.provider}: max |difference| {worst:.2g} at batch 1 and 64; {rate:.0f} images/s at batch 64")


# ---- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated checks: " + ", ".join(CHECKS))
    p.add_argument("--cpu", action="store_true", help="run the checks on the CPU (slow; to work on this script without a GPU)")
    args = p.parse_args(argv)
    import torch

    global DEVICE
    if args.cpu:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        print(f"gpu_smoke: no CUDA device on this machine (torch {torch.__version__}); nothing to check")
        return 0
    names = list(CHECKS) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        p.error(f"unknown checks {unknown}; there are {', '.join(CHECKS)}")
    try:
        import onnxruntime

        ort = f"onnxruntime {onnxruntime.__version__} {onnxruntime.get_available_providers()}"
    except ImportError:
        ort = "no onnxruntime"
    where = "the CPU" if DEVICE == "cpu" else f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    print(f"gpu_smoke: {where}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, {ort}", flush=True)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    failed = []
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"gpu_smoke_{name}_") as tmp:
            try:
                ok, figure = CHECKS[name](Path(tmp))
            except Exception as e:  # a check that raises fails; the others still run
                ok, figure = False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                traceback.print_exc(limit=-3, file=sys.stderr)
        print(f"{'PASS' if ok else 'FAIL'} {name}: {figure} [{time.perf_counter() - t0:.0f} s]", flush=True)
        if not ok:
            failed.append(name)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    print(f"gpu_smoke: {len(names) - len(failed)} of {len(names)} passed in {time.perf_counter() - t_all:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
