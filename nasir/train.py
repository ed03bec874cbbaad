"""Retraining a derived network (`nasir train`) and measuring it (`nasir eval`).

The DARTS evaluation protocol ships as presets (`darts-cifar`, `darts-imagenet`) and a short one for
the embedded data (`digits`); every setting can be overridden. Checkpoints each epoch (`last.pt`),
the best by held-out accuracy (`best.pt`), `metrics.jsonl`, a progress bar, `--resume`.
Under torchrun (WORLD_SIZE > 1) it trains with DistributedDataParallel (NCCL on GPUs, gloo on the
CPU): the global batch is split evenly across ranks, gradients are averaged by DDP, so every rank
holds the same weights after every step.

`--task detection` (`train(..., task="detection")`) trains the network as the backbone of a
torchvision RetinaNet (nasir.targets.detection) on COCO-format data on disk (`coco:PATH`), with SGD
on the sum of RetinaNet's two losses; best.pt is the lowest held-out loss. Both tasks share the loop
(nasir/runtime/fit.py, driven by a `Task`): schedule, optimizer step, checkpoints, resume, metrics, progress bar and DDP.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from nasir import device as dv
from nasir import finite, ir, limits
from nasir import provenance as prov
from nasir.data import classification as data_mod
from nasir.data import coco as data_coco
from nasir.data.classification import holdout_split
from nasir.diagnostics import Diagnostic, DiagnosticError
from nasir.io import remove_stale_temporaries, writable_dir
from nasir.runtime.dist import Dist, init_distributed
from nasir.runtime.fit import Task, TrainInterrupted, _add, _host, fit  # noqa: F401 - TrainInterrupted: the public name
from nasir.runtime.settings import setting_diagnostic
from nasir.runtime.state import load_checkpoint  # noqa: F401 - nasir.train.load_checkpoint: the public name

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
    # --task detection, a short run from scratch: torchvision's RetinaNet recipe (SGD 0.01, momentum
    # 0.9, wd 1e-4, horizontal flips) at a smaller scale: 320-pixel images, 64-wide FPN and heads.
    # Full COCO scale: --min-size 800 --max-size 1333 --fpn-channels 256 --epochs 26 --batch-size 16.
    "detection": dict(set=(), epochs=12, batch_size=8, lr=0.01, lr_min=0.0, schedule="cosine", momentum=0.9,
                      weight_decay=1e-4, cutout=0, drop_path=0.0, auxiliary_weight=0.0, grad_clip=10.0,
                      label_smoothing=0.0, min_size=320, max_size=512, fpn_channels=64, hflip=0.5),
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
    # --task detection only (the RetinaNet; targets/detection.py): torchvision's defaults
    min_size: int = 800  # images are resized so that the short side is min_size ...
    max_size: int = 1333  # ... and the long side at most max_size
    levels: tuple[int, ...] | None = None  # backbone levels by position; None: default_levels
    fpn_channels: int = 256
    hflip: float = 0.5  # probability of a horizontal flip of a training image
    eval_ap: bool = False  # also score the held-out images with COCO AP every epoch (nasir/coco_eval.py)

    @classmethod
    def from_preset(cls, preset: str | None, **changes: Any) -> TrainConfig:
        base: dict[str, Any] = {}
        if preset is not None:
            if preset not in PRESETS:
                from nasir.diagnostics import did_you_mean

                raise DiagnosticError([Diagnostic(f"unknown preset '{preset}'", hint=did_you_mean(preset, PRESETS) or "presets: " + ", ".join(PRESETS))])
            base = dict(PRESETS[preset])
        base.update({k: v for k, v in changes.items() if v is not None})
        cfg = cls(**base)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Every out-of-range setting, as errors named by the setting (the CLI points them at its flag)."""
        errors = []
        for name in ("epochs", "batch_size", "limit_batches", "min_size", "max_size", "fpn_channels"):
            v = getattr(self, name)
            if v is not None and v < 1:
                errors.append(setting_diagnostic(name, f"must be a whole number >= 1, got {v}"))
        if self.cutout is not None and self.cutout < 0:
            errors.append(setting_diagnostic("cutout", f"must be >= 0, got {self.cutout}"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= limits.MAX_SEED:
            errors.append(setting_diagnostic("seed", f"must be a whole number in 0..{limits.MAX_SEED}, got {self.seed}"))
        # NaN is not `< 0`: every float setting must also be finite (issue 14, item 2). --grad-clip 0
        # means no clipping (clipping every gradient to norm 0 would zero them all).
        errors += finite.setting_problems(attrs.asdict(self), nonnegative=("lr", "weight_decay", "auxiliary_weight", "grad_clip",
                                                                           "momentum", "lr_min"),
                                          positive=("gamma",), unit=("drop_path", "label_smoothing", "hflip"))  # fmt: skip
        if not (0 < self.holdout < 1):
            errors.append(Diagnostic(f"the held-out fraction must be between 0 and 1 (exclusive), got {self.holdout}"))
        if errors:
            raise DiagnosticError(list(dict.fromkeys(errors)))


_LAST_MODEL_STATE: dict[str, torch.Tensor] = {}  # the weights the last train() in this process ended with


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


def evaluate(model: torch.nn.Module, data: data_mod.Data, idx: torch.Tensor, device: torch.device, batch: int = 256) -> tuple[float, float]:
    """(loss, accuracy) on `idx` in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: one host read at the end
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for i in range(0, len(idx), batch):
            x, y = data.batch(idx[i : i + batch], train=False)  # evaluation never augments (as the search's)
            x, y = dv.to_device(x, device), dv.to_device(y, device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
    return float(loss_sum) / max(1, len(idx)), int(correct) / max(1, len(idx))


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
    train_idx, test_idx = holdout_split(len(data), holdout, seed)
    return data, train_idx, data, test_idx


def _device(device: str) -> tuple[torch.device, Dist]:
    """The device (under torchrun with CUDA: this process's GPU, LOCAL_RANK) and the process group."""
    dev = dv.select_device(device)
    return dev, init_distributed(dev)


def _fit(task: Task, out: Path, cfg: TrainConfig, dev: torch.device, d: Dist, **kw: Any) -> dict[str, Any]:
    """The runtime's training loop (nasir/runtime/fit.py) on `task`; the weights it ends with are kept for tests."""
    last = fit(task, out, cfg, dev, d, **kw)
    global _LAST_MODEL_STATE
    _LAST_MODEL_STATE = {k: v.detach().cpu().clone() for k, v in task.model.state_dict().items()}
    return last


def _sgd(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _schedule(model: torch.nn.Module, cfg: TrainConfig) -> Callable[[torch.optim.Optimizer, int], None]:
    """Per epoch: the learning rate (`lr_at`) and DARTS' drop-path probability, linear in the epoch."""

    def begin(opt: torch.optim.Optimizer, epoch: int) -> None:
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        _set_drop_path(model, cfg.drop_path * epoch / cfg.epochs)

    return begin


def _set_drop_path(model: torch.nn.Module, p: float) -> None:
    from nasir.targets.network import CellModule

    for m in model.modules():
        if isinstance(m, CellModule):
            m.drop_prob = p


def train(spec: ir.Spec, data: str, out: str | Path, cfg: TrainConfig, *, task: str = "classification", device: str = "auto",
          resume: bool = False, progress: bool = True, stop_after_steps: int | None = None,
          callback: Callable[[dict[str, Any]], None] | None = None, amp: bool | None = None,
          deterministic: bool = False, overwrite: bool = False, **options: Any) -> dict[str, Any]:  # fmt: skip
    """Train `spec`'s network on `data`; returns the final metrics. Writes last.pt, best.pt, metrics.jsonl in `out`.

    An `out` that holds a run is refused unless `resume` (continue it: its provenance must match) or
    `overwrite` (its run files are removed first); see `claim_out`.

    `task="detection"` trains a RetinaNet on it (`train_detection`, which takes the `options`).
    `amp`: autocast with a GradScaler (None: on CUDA, fp16; on the CPU autocast means bfloat16).
    Stopped by a signal or `stop_after_steps`, it saves last.pt and raises TrainInterrupted.
    `deterministic`: nasir.device's deterministic mode for the run (docs/gpu.md): on CUDA a run
    and its resumed twin give the same weights, at some cost in speed.
    """
    if task not in ("classification", "detection"):
        raise ValueError(f"unknown task '{task}'")
    claim_out(Path(out), resume=resume, overwrite=overwrite)
    with dv.deterministic_mode(deterministic):
        if task == "detection":
            return train_detection(spec, data, out, cfg, device=device, resume=resume, progress=progress,
                                   stop_after_steps=stop_after_steps, callback=callback, amp=amp, **options)  # fmt: skip
        return _train_classifier(spec, data, out, cfg, device=device, resume=resume, progress=progress,
                                 stop_after_steps=stop_after_steps, callback=callback, amp=amp, **options)  # fmt: skip


RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", prov.FILE)


def _out_error(message: str, hint: str | None = None) -> DiagnosticError:
    return DiagnosticError([Diagnostic(message, hint=hint)])


def claim_out(out: Path, *, resume: bool, overwrite: bool, files: tuple[str, ...] = RUN_FILES, resume_from: str = "last.pt") -> None:
    """Check the run directory before any work (issue 14, items 7 and 16): a directory nasir can write,
    not holding another run unless `resume` or `overwrite`. `overwrite` removes the run files; stale
    temporary files of an interrupted atomic write (`.last.pt.*.tmp`) are removed in any case.
    Messages start with --out so that the CLI points them at the flag."""
    if resume and overwrite:
        raise _out_error("--overwrite and --resume contradict each other", "--resume continues the run in --out; --overwrite replaces it")
    writable_dir(out, "run")
    present = [f for f in files if (out / f).exists()]
    if resume:
        if present and not (out / resume_from).exists():
            raise _out_error(f"--resume: '{out}' holds a run ({', '.join(present)}) but no {resume_from} to continue from",
                             "train into another --out, or replace the run with --overwrite")  # fmt: skip
    elif present:
        if not overwrite:
            raise _out_error(f"--out '{out}' already holds a training run ({', '.join(present)})",
                             "continue it with --resume, replace it with --overwrite, or choose another --out")  # fmt: skip
        if int(os.environ.get("RANK", "0")) == 0:
            for f in present:
                (out / f).unlink()
    remove_stale_temporaries(out, files)


def _train_classifier(spec: ir.Spec, data: str, out: str | Path, cfg: TrainConfig, *, device: str, resume: bool,
                      progress: bool, stop_after_steps: int | None, callback: Callable[[dict[str, Any]], None] | None,
                      amp: bool | None, **options: Any) -> dict[str, Any]:  # fmt: skip
    if options:
        raise TypeError(f"classification takes no options {sorted(options)}")
    from nasir.macro import parse_overrides, plan
    from nasir.targets.network import Network

    if data.startswith("coco:"):
        raise data_mod._spec_error(data, "coco:PATH holds detection data", 0, 4, "train a detector on it with --task detection")
    dev, d = _device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides, _ = parse_overrides(list(cfg.set))
    p = plan(spec, overrides=overrides)
    torch.manual_seed(cfg.seed)
    model = Network(spec, p)
    if torch.are_deterministic_algorithms_enabled():
        dv.deterministic_pooling(model)  # torch has no deterministic CUDA backward for adaptive pooling
    model = model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    raw = data_mod.load_data(data, p.input, p.classes)
    train_data, train_idx, test_data, test_idx = _eval_data(data, raw, cfg.holdout, cfg.seed)

    def step(net: torch.nn.Module, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = train_data.batch(idx, g)
        if cfg.cutout:
            x = cutout(x, cfg.cutout, g)
        x, y = dv.to_device(x, dev), dv.to_device(y, dev)
        out_ = net(x)
        logits, aux = out_ if isinstance(out_, tuple) else (out_, None)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if aux is not None:
            loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux, y, label_smoothing=cfg.label_smoothing)
        return loss, {"loss": loss.detach() * len(y), "correct": (logits.argmax(1) == y).sum(), "seen": len(y)}

    def evaluate_() -> dict[str, float]:
        loss, acc = evaluate(model, test_data, test_idx, dev)
        return {"valid_loss": loss, "valid_acc": acc}

    def summary(s: dict[str, float]) -> dict[str, float]:
        seen = max(1.0, s.get("seen", 0.0))
        return {"train_loss": s.get("loss", 0.0) / seen, "train_acc": s.get("correct", 0.0) / seen}

    t = Task("classification", model, train_idx, step, summary, evaluate_,
              lambda rec: {"model": model.state_dict(), "epoch": rec["epoch"], "valid_acc": rec["valid_acc"]},
              score="valid_acc", higher=True, make_optimizer=lambda: _sgd(model, cfg), begin_epoch=_schedule(model, cfg), fixed_shapes=True,
              provenance=run_provenance(spec, p, "classification", cfg, data))  # fmt: skip
    return _fit(t, out, cfg, dev, d, resume=resume, progress=progress, stop_after_steps=stop_after_steps, callback=callback, amp=amp)


def run_provenance(spec: ir.Spec, plan, kind: str, cfg: TrainConfig, data: str) -> dict[str, Any]:
    """The provenance record of a training run (nasir/provenance.py): spec, overrides, network, seed,
    data, and the held-out split (a `holdout` fraction drawn with `seed`)."""
    return prov.record(spec, kind=kind, overrides=list(cfg.set), plan=plan, seed=cfg.seed, data=data,
                       split={"holdout": cfg.holdout, "seed": cfg.seed})  # fmt: skip


# ---- detection ------------------------------------------------------------------------------------
def train_detection(spec: ir.Spec, data: str, out: str | Path, cfg: TrainConfig, *, device: str = "auto", resume: bool = False,
                    progress: bool = True, stop_after_steps: int | None = None,
                    callback: Callable[[dict[str, Any]], None] | None = None, workers: int | None = None,
                    backbone_weights: str | Path | None = None, amp: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """`nasir train --task detection`: `spec`'s network as a RetinaNet backbone on `coco:PATH`.

    Data: PATH/annotations/instances_train.json with images in PATH/train/; PATH/val/ with
    instances_val.json, when present, is the held-out set, else `cfg.holdout` of the training images.
    Training flips images horizontally with probability `cfg.hflip`, drawn from the per-batch
    generator, so a resumed run sees the same batches; `workers` DataLoader processes only read and
    decode (None: nasir.device.loader_workers, none on the CPU, up to 4 per GPU); on CUDA the
    batches come through pinned memory. The held-out loss is RetinaNet's losses in eval mode (BatchNorm running statistics).
    best.pt has the weights and settings of `nasir.targets.detection.retinanet` (as compile writes
    them: {"format", "spec", "config", "state_dict"}, plus "epoch" and "valid_loss"), so
    `retinanet(spec, **ck["config"]).load_state_dict(ck["state_dict"])` rebuilds it.
    `backbone_weights`: a classification checkpoint (nasir train's best.pt) to start the backbone from.
    """
    from nasir.macro import parse_overrides, plan
    from nasir.targets import detection

    path = data_coco.coco_path(data)
    dev, d = _device(device)
    if workers is None:
        workers = dv.loader_workers(dev, d.world)
    out = Path(out)
    overrides, _ = parse_overrides(list(cfg.set))
    p = plan(spec, overrides=overrides)
    detection.require_rgb(spec, p)
    train_set = data_coco.coco_dataset(path, "train")
    data_coco.check_images(train_set)
    has_val = (path / "annotations" / "instances_val.json").exists() and (path / "val").is_dir()
    if has_val:
        test_set = data_coco.coco_dataset(path, "val")
        data_coco.check_images(test_set)
        train_idx, test_idx = torch.arange(len(train_set)), torch.arange(len(test_set))
    else:
        if len(train_set) < 2:
            raise DiagnosticError([Diagnostic(f"{path}: {len(train_set)} training image(s): too few to hold some out",
                                              hint="add images, or a PATH/val split with annotations/instances_val.json")])  # fmt: skip
        test_set = train_set
        train_idx, test_idx = holdout_split(len(train_set), cfg.holdout, cfg.seed)
    if test_set is not train_set and test_set.labels_of != train_set.labels_of:
        raise DiagnosticError([Diagnostic(f"{path}: the training and held-out annotations define other categories "
                                          f"({sorted(train_set.labels_of)} vs {sorted(test_set.labels_of)})",
                                          hint="both splits must list the same categories: labels are numbered by category id")])  # fmt: skip
    levels = list(cfg.levels) if cfg.levels is not None else detection.default_levels(spec, p)
    config = {"num_classes": max(train_set.num_classes, test_set.num_classes), "network": None, "overrides": overrides,
              "min_size": cfg.min_size, "max_size": cfg.max_size, "levels": levels, "fpn_channels": cfg.fpn_channels}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = detection.retinanet(spec, **config)
    if torch.are_deterministic_algorithms_enabled():
        dv.deterministic_pooling(model)
    if backbone_weights is not None and not (resume and (out / "last.pt").exists()):
        from nasir.lower import load_checkpoint as load_state_dict

        prov.require_same(prov.read(backbone_weights), prov.record(spec, kind="detection"), ("spec",),
                          f"--backbone-weights '{backbone_weights}'", hint="start from a checkpoint of this spec's network")  # fmt: skip
        detection.load_backbone(model, load_state_dict(backbone_weights), backbone_weights)
    model.to(dev)

    def loader(ds: torch.utils.data.Dataset, batches: list[torch.Tensor]) -> torch.utils.data.DataLoader:
        # Reading only: the order is given, flips happen in `step`; its own generator leaves the global RNG alone.
        return torch.utils.data.DataLoader(ds, batch_sampler=[b.tolist() for b in batches], collate_fn=data_coco.collate,
                                           num_workers=workers, generator=torch.Generator(),
                                           pin_memory=dev.type == "cuda")  # fmt: skip

    def to_dev(images: list[torch.Tensor], targets: list[dict[str, Any]]):
        # Pinned by the loader on CUDA: non-blocking copies.
        nb = dev.type == "cuda"
        return ([im.to(dev, non_blocking=nb) for im in images],
                [{k: v.to(dev, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets])  # fmt: skip

    def terms(losses: dict[str, torch.Tensor], n: int) -> dict[str, Any]:
        total = losses["classification"] + losses["bbox_regression"]
        return {"loss": total.detach() * n, **{k: v.detach() * n for k, v in losses.items()}, "seen": n}

    def step(net: torch.nn.Module, batch, g: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        images, targets = detection.random_hflip(*batch, cfg.hflip, g)
        losses = net(*to_dev(images, targets))
        return losses["classification"] + losses["bbox_regression"], terms(losses, len(images))

    def averages(s: dict[str, float], prefix: str) -> dict[str, float]:
        seen = max(1.0, s.get("seen", 0.0))
        return {f"{prefix}_{k}": s.get(k, 0.0) / seen for k in ("loss", "classification", "bbox_regression")}

    def evaluate_() -> dict[str, float]:
        model.eval()
        s: dict[str, Any] = {}
        chunks = [test_idx[i : i + cfg.batch_size] for i in range(0, len(test_idx), cfg.batch_size)]
        with torch.no_grad():
            for images, targets in loader(test_set, chunks):
                _add(s, terms(detection.losses(model, *to_dev(images, targets)), len(images)))
        record = averages(_host(s), "valid")
        if cfg.eval_ap:  # COCO AP as OStr-DARTS Table VII reports it; NaN (no object of a size) -> null in metrics.jsonl
            from nasir.coco_eval import evaluate_detector

            ap = evaluate_detector(model, test_set, dev, indices=test_idx.tolist(), batch_size=cfg.batch_size)
            record.update({f"valid_{k}": None if math.isnan(v) else v for k, v in ap.items()})
        return record

    # label k (1..K) of the detector's output is category id categories[k - 1]
    meta = {"format": detection.FORMAT, "spec": str(spec.file), "config": config, "categories": sorted(train_set.labels_of)}
    t = Task("detection", model, train_idx, step, lambda s: averages(s, "train"), evaluate_,
              lambda rec: {**meta, "state_dict": model.state_dict(), "epoch": rec["epoch"], "valid_loss": rec["valid_loss"]},
              score="valid_loss", higher=False, make_optimizer=lambda: _sgd(model, cfg), begin_epoch=_schedule(model, cfg), batches=lambda todo: loader(train_set, todo), extra={"config": config},
              provenance=run_provenance(spec, p, "detection", cfg, data))  # fmt: skip
    return _fit(t, out, cfg, dev, d, resume=resume, progress=progress, stop_after_steps=stop_after_steps, callback=callback, amp=amp)


def evaluate_checkpoint(spec_or_path, weights: str | Path, data: str | None = None, *, overrides=None, device: str = "auto",
                        seed: int | None = None, holdout: float | None = None) -> tuple[float, float, int]:  # fmt: skip
    """`nasir eval`: (loss, accuracy, images) of a checkpoint on the held-out split `train` used.

    The checkpoint's provenance (nasir/provenance.py) supplies the data, seed and held-out fraction
    left as None, and is compared with what is given: another spec, other --set values, other data or
    another split seed is refused (another seed would score training images as held-out ones).
    A checkpoint without provenance is evaluated with the defaults: digits, seed 0, a fifth held out.
    """
    from nasir.lower import build_from_plan, resolve

    spec, p = resolve(spec_or_path, overrides)
    then = prov.read(weights)
    split = (then or {}).get("split") or {}
    if data is None:
        data = (then or {}).get("data") or "digits"
    seed = seed if seed is not None else split.get("seed", 0)
    holdout = holdout if holdout is not None else split.get("holdout", 0.2)
    if then is not None:
        now = prov.record(spec, kind=then.get("kind", "classification"), overrides=overrides, plan=p, seed=seed, data=data,
                          split={"holdout": holdout, "seed": seed})  # fmt: skip
        prov.require_same(then, now, prov.HELD_OUT, f"'{weights}'",
                          hint="leave --data and --seed out to use the checkpoint's; pass the --set values it was trained with")  # fmt: skip
    dev = dv.select_device(device)
    model = build_from_plan(spec, p, weights, seed).to(dev)
    raw = data_mod.load_data(data, p.input, p.classes)
    _, _, test_data, test_idx = _eval_data(data, raw, holdout, seed)
    loss, acc = evaluate(model, test_data, test_idx, dev)
    return loss, acc, len(test_idx)
