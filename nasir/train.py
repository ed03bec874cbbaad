"""Retraining a derived network (`nasir train`) and measuring it (`nasir eval`).

The DARTS evaluation protocol ships as presets (`darts-cifar`, `darts-imagenet`) and a short one for
the embedded data (`digits`); every setting can be overridden. Checkpoints each epoch (`last.pt`),
the best by held-out accuracy (`best.pt`), `metrics.jsonl`, a progress bar, `--resume`.
Under torchrun (WORLD_SIZE > 1) it trains with DistributedDataParallel (NCCL on GPUs, gloo on the
CPU): the global batch is split evenly across ranks, gradients are averaged by DDP, so every rank
holds the same weights after every step.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from nasir import ir
from nasir.diagnostics import Diagnostic, DiagnosticError
from nasir.io import atomic_write_with
from nasir.search import data as data_mod

PRESETS: dict[str, dict[str, Any]] = {
    # DARTS, Sec. 3.3 / train.py: 600 epochs, batch 96, SGD 0.025 cosine, momentum 0.9, wd 3e-4,
    # cutout 16, drop-path 0.2, auxiliary weight 0.4, gradient clip 5.
    "darts-cifar": dict(set=("C=36", "layers=20", "auxiliary=true"), epochs=600, batch_size=96, lr=0.025, lr_min=0.0,
                        schedule="cosine", momentum=0.9, weight_decay=3e-4, cutout=16, drop_path=0.2,
                        auxiliary_weight=0.4, grad_clip=5.0, label_smoothing=0.0),
    # DARTS train_imagenet.py: 250 epochs, batch 128, SGD 0.1 decayed by 0.97 per epoch, wd 3e-5,
    # label smoothing 0.1, auxiliary 0.4, clip 5.
    "darts-imagenet": dict(set=("C=48", "layers=14", "auxiliary=true"), epochs=250, batch_size=128, lr=0.1, lr_min=0.0,
                           schedule="exponential", gamma=0.97, momentum=0.9, weight_decay=3e-5, cutout=0, drop_path=0.0,
                           auxiliary_weight=0.4, grad_clip=5.0, label_smoothing=0.1),
    # A short run on the embedded digits, for the README walk-through and tests.
    "digits": dict(set=(), epochs=8, batch_size=64, lr=0.05, lr_min=0.0, schedule="cosine", momentum=0.9,
                   weight_decay=3e-4, cutout=0, drop_path=0.0, auxiliary_weight=0.4, grad_clip=5.0, label_smoothing=0.0),
}  # fmt: skip


@attrs.frozen
class TrainConfig:
    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.05
    lr_min: float = 0.0
    schedule: str = "cosine"  # cosine | exponential
    gamma: float = 0.97
    momentum: float = 0.9
    weight_decay: float = 3e-4
    cutout: int = 0
    drop_path: float = 0.0
    auxiliary_weight: float = 0.4
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    holdout: float = 0.2  # fraction of the data held out for evaluation (the CIFAR-10 test set for cifar10)
    seed: int = 0
    limit_batches: int | None = None
    set: tuple[str, ...] = ()

    @classmethod
    def from_preset(cls, preset: str | None, **changes: Any) -> TrainConfig:
        base: dict[str, Any] = {}
        if preset is not None:
            if preset not in PRESETS:
                from nasir.diagnostics import did_you_mean

                raise DiagnosticError([Diagnostic(f"unknown preset '{preset}'", hint=did_you_mean(preset, PRESETS) or "presets: " + ", ".join(PRESETS))])
            base = dict(PRESETS[preset])
        base.update({k: v for k, v in changes.items() if v is not None})
        return cls(**base)


_LAST_MODEL_STATE: dict[str, torch.Tensor] = {}  # the weights the last train() in this process ended with


# ---- distributed ----------------------------------------------------------------------------------
@attrs.frozen
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """torchrun sets WORLD_SIZE/RANK; start the process group once (NCCL on CUDA, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def shard(idx: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's part of a global batch: equal contiguous slices (the global batch must divide)."""
    if d.world == 1:
        return idx
    n = len(idx) // d.world
    return idx[d.rank * n : (d.rank + 1) * n]


# ---- the loop -------------------------------------------------------------------------------------
def cutout(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """DARTS' Cutout (utils.py): per image a centre (y, x) anywhere; rows y - size//2 .. y + size//2 - 1
    and the same columns, clipped at the border, are zeroed."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=g)[:, None, None]
    cx = torch.randint(0, w, (n,), generator=g)[:, None, None]
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    inside = (ys >= cy - size // 2) & (ys < cy + size // 2) & (xs >= cx - size // 2) & (xs < cx + size // 2)
    return x * (~inside)[:, None].to(x.dtype)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    if cfg.schedule == "exponential":
        return cfg.lr * cfg.gamma**epoch
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * epoch / cfg.epochs))


def _split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    k = max(1, int(round(n * fraction)))
    return perm[k:].sort().values, perm[:k].sort().values


def evaluate(model: torch.nn.Module, data: data_mod.Data, idx: torch.Tensor, device: torch.device, batch: int = 256) -> tuple[float, float]:
    """(loss, accuracy) on `idx` in eval mode."""
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(idx), batch):
            x, y = data.batch(idx[i : i + batch])
            logits = model(x.to(device))
            loss_sum += float(F.cross_entropy(logits, y.to(device), reduction="sum"))
            correct += int((logits.argmax(1).cpu() == y).sum())
    return loss_sum / max(1, len(idx)), correct / max(1, len(idx))


def _eval_data(text: str, data: data_mod.Data, holdout: float, seed: int) -> tuple[data_mod.Data, torch.Tensor, data_mod.Data, torch.Tensor]:
    """Train and held-out sets: CIFAR-10's own test batch when present, else a fixed held-out fraction."""
    spec = data_mod.parse_data_spec(text)
    if spec.kind == "cifar10":
        import torchvision

        root = Path(spec.path).expanduser()  # type: ignore[arg-type]
        root = root.parent if root.name == "cifar-10-batches-py" else root
        try:
            ds = torchvision.datasets.CIFAR10(str(root), train=False, download=False)
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255.0)
            mean, std = torch.tensor(data_mod.CIFAR_MEAN)[:, None, None], torch.tensor(data_mod.CIFAR_STD)[:, None, None]
            test = data_mod.Data("cifar10-test", 10, data.shape, (x - mean) / std, torch.tensor(ds.targets))
            return data, torch.arange(len(data)), test, torch.arange(len(test))
        except (RuntimeError, OSError):
            pass  # no test batch on disk: hold out a part of the training set instead
    train_idx, test_idx = _split(len(data), holdout, seed)
    return data, train_idx, data, test_idx


def train(spec: ir.Spec, data: str, out: str | Path, cfg: TrainConfig, *, device: str = "auto", resume: bool = False,
          progress: bool = True, stop_after_steps: int | None = None,
          callback: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Train `spec`'s network on `data`; returns the final metrics. Writes last.pt, best.pt, metrics.jsonl in `out`."""
    from nasir.macro import parse_overrides, plan
    from nasir.search.runner import _set_rng_state, resolve_device
    from nasir.targets.network import Network

    dev = resolve_device(device)
    d = init_distributed(dev)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides, _ = parse_overrides(list(cfg.set))
    p = plan(spec, overrides=overrides)
    torch.manual_seed(cfg.seed)
    model = Network(spec, p).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    raw = data_mod.load_data(data, p.input, p.classes)
    train_data, train_idx, test_data, test_idx = _eval_data(data, raw, cfg.holdout, cfg.seed)
    if cfg.batch_size % d.world:
        raise DiagnosticError([Diagnostic(f"the batch size {cfg.batch_size} does not split evenly over {d.world} processes")])
    net: torch.nn.Module = model
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    state = {"epoch": 0, "step": 0, "best": -1.0}
    sums = {"loss": 0.0, "correct": 0, "seen": 0}
    if resume and (out / "last.pt").exists():
        ck = load_checkpoint(out / "last.pt")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state, sums = ck["state"], ck["sums"]
        _set_rng_state(ck["rng"])
    steps = math.ceil(len(train_idx) / cfg.batch_size)
    if cfg.limit_batches is not None:
        steps = min(steps, cfg.limit_batches)
    total = cfg.epochs * steps
    bar = None
    if progress and d.main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=state["epoch"] * steps + state["step"], desc="train", unit="step", dynamic_ncols=True)
    last: dict[str, Any] = {}
    done = 0
    try:
        while state["epoch"] < cfg.epochs:
            epoch = state["epoch"]
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch)
            model.drop_path_prob = cfg.drop_path * epoch / cfg.epochs  # DARTS: linear in the epoch
            order = data_mod.epoch_order(train_idx, cfg.seed, epoch, 0)
            t0 = time.perf_counter()
            net.train()
            while state["step"] < steps:
                step = state["step"]
                idx = shard(order[step * cfg.batch_size : (step + 1) * cfg.batch_size], d)
                g = data_mod.batch_generator(cfg.seed, epoch, step, d.rank)
                x, y = train_data.batch(idx, g)
                if cfg.cutout:
                    x = cutout(x, cfg.cutout, g)
                x, y = x.to(dev), y.to(dev)
                with torch.autocast(dev.type, enabled=dev.type == "cuda"):
                    out_ = net(x)
                    logits, aux = out_ if isinstance(out_, tuple) else (out_, None)
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                    if aux is not None:
                        loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux, y, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                sums["loss"] += loss.item() * len(y)
                sums["correct"] += int((logits.argmax(1) == y).sum())
                sums["seen"] += len(y)
                state["step"] += 1
                done += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{sums['loss'] / sums['seen']:.3f}")
                if stop_after_steps is not None and done >= stop_after_steps:
                    _save(out, model, opt, state, sums, d)
                    raise KeyboardInterrupt
            val_loss, val_acc = evaluate(model, test_data, test_idx, dev)
            last = {"epoch": epoch + 1, "train_loss": sums["loss"] / max(1, sums["seen"]),
                    "train_acc": sums["correct"] / max(1, sums["seen"]), "valid_loss": val_loss, "valid_acc": val_acc,
                    "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}  # fmt: skip
            state = {"epoch": epoch + 1, "step": 0, "best": max(state["best"], val_acc)}
            sums = {"loss": 0.0, "correct": 0, "seen": 0}
            if d.main:
                if val_acc >= state["best"]:
                    best = {"model": model.state_dict(), "epoch": epoch + 1, "valid_acc": val_acc}
                    atomic_write_with(out / "best.pt", lambda tmp, best=best: torch.save(best, tmp))
                with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(last) + "\n")
            _save(out, model, opt, state, sums, d)
            if callback is not None:
                callback(last)
    finally:
        if bar is not None:
            bar.close()
    last["best_valid_acc"] = state["best"]
    global _LAST_MODEL_STATE
    _LAST_MODEL_STATE = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return last


def _save(out: Path, model, opt, state, sums, d: Dist) -> None:
    from nasir.search.runner import _rng_state

    if not d.main:
        return
    ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": dict(state), "sums": dict(sums), "rng": _rng_state()}
    atomic_write_with(out / "last.pt", lambda tmp: torch.save(ck, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DiagnosticError([Diagnostic(f"cannot read checkpoint '{path}': no such file")]) from None
    except Exception as e:  # a corrupt or foreign file: say so, no traceback
        raise DiagnosticError([Diagnostic(f"'{path}' is not a readable nasir checkpoint: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")]) from None


def evaluate_checkpoint(spec_or_path, weights: str | Path, data: str, *, overrides=None, device: str = "auto",
                        seed: int = 0, holdout: float = 0.2) -> tuple[float, float, int]:  # fmt: skip
    """`nasir eval`: (loss, accuracy, images) of a checkpoint on the held-out split `train` used."""
    from nasir.compile import build_from_plan, resolve
    from nasir.search.runner import resolve_device

    spec, p = resolve(spec_or_path, overrides)
    dev = resolve_device(device)
    model = build_from_plan(spec, p, weights, seed).to(dev)
    raw = data_mod.load_data(data, p.input, p.classes)
    _, _, test_data, test_idx = _eval_data(data, raw, holdout, seed)
    loss, acc = evaluate(model, test_data, test_idx, dev)
    return loss, acc, len(test_idx)
