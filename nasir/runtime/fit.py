"""The training loop (docs/runtime.md): one resumable loop driven by a task object (`Task`), shared by
classification and detection training (nasir/train.py builds the tasks) and the search
(nasir/search/loop.py `Search.task`, whose own steps, streams and epoch end are `Task` hooks). Per epoch: the task's
schedule, seeded order and batches (nasir/data), mixed precision (`amp`; None: on CUDA) with its
GradScaler, clipped optimizer steps, DDP under torchrun; at its end evaluation, best.pt, metrics.jsonl
(`MetricsLog`), last.pt (`save_checkpoint`); finite checks (nasir/finite.py) and stop at a step boundary
(`Control`). It imports neither search nor training.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import torch

from nasir import device as dv
from nasir import finite
from nasir import provenance as prov
from nasir.data import classification as data_mod
from nasir.diagnostics import Diagnostic, DiagnosticError
from nasir.io import atomic_write_with
from nasir.runtime.dist import Dist, shard
from nasir.runtime.loop import Control
from nasir.runtime.metrics import MetricsLog
from nasir.runtime.state import load_checkpoint, save_checkpoint


@attrs.define
class Task:
    """What a kind of training supplies to the shared loop (`fit`).

    `step(net, batch, generator)` runs the forward pass and returns the loss and the sums it adds to
    the epoch's running totals ("loss" and "seen" in every task); `batches(index_batches)` turns the
    epoch's remaining index batches into what `step` reads (the indices themselves, or a DataLoader);
    `evaluate()` measures the held-out set, and its `score` picks best.pt (`higher` is better or not).
    """

    name: str
    model: torch.nn.Module
    train_idx: torch.Tensor
    step: Callable[[torch.nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict[str, Any]]]
    summary: Callable[[dict[str, float]], dict[str, float]]  # running totals -> train_* metrics
    evaluate: Callable[[], dict[str, float]]
    best_payload: Callable[[dict[str, Any]], dict[str, Any]]  # the epoch's record -> best.pt's content
    score: str
    higher: bool
    make_optimizer: Callable[[], torch.optim.Optimizer]  # called once the process group and DDP are set up
    begin_epoch: Callable[[torch.optim.Optimizer, int], None]  # per epoch: the learning rate, drop-path, ...
    batches: Callable[[list[torch.Tensor]], Iterable[Any]] = iter
    fixed_shapes: bool = False  # every batch has one shape: let cuDNN autotune (nasir.device.fixed_shapes)
    extra: dict[str, Any] = attrs.Factory(dict)  # saved in last.pt beside the weights
    provenance: dict[str, Any] | None = None  # nasir/provenance.py: in provenance.json, last.pt and best.pt
    # The search's hooks (docs/runtime.md, "The search as a Task"); every default is training's behaviour.
    owns_step: bool = False  # `step` ran its own backward and optimizer steps (fit only observes and counts)
    splits: list[torch.Tensor] | None = None  # one seeded order per split (stream k); `batch(orders, step)` draws
    batch: Callable[[list[torch.Tensor], int], Any] | None = None  # (steps: min(len(split)) // batch size)
    check: Callable[[], None] | None = None  # the task's own finite check (its watches) instead of fit's
    postfix: Callable[[], dict[str, str]] | None = None  # the progress bar's numbers
    step_info: Callable[[], dict[str, Any]] | None = None  # set: the callback is called per step with it, not per epoch
    end_epoch: Callable[[int], dict[str, Any]] | None = None  # set: replaces evaluation, record, best.pt, metrics, last.pt
    save: Callable[[], None] | None = None  # the task's checkpoint at a stop (instead of last.pt)
    done: Callable[[], bool] = lambda: False  # early stop, consulted before each epoch
    finish_epoch_on_stop: bool = False  # a stop at the epoch's last step finishes the epoch first
    count_from_start: bool = False  # stop_after_steps counts the run's steps from its start (resumed ones included)
    interrupted: Callable[[Path, int, int], BaseException] | None = None  # the exception a stop raises
    ddp: bool = True  # False: the task averages its gradients itself (no DistributedDataParallel)
    start: tuple[int, int] | None = None  # (epoch, step) the task resumed at itself
    desc: str | None = None  # the progress bar's title


class TrainInterrupted(KeyboardInterrupt):
    """A stop signal (or `stop_after_steps`) ended training at a step boundary; last.pt was saved first."""

    def __init__(self, out: Path, epoch: int, step: int):
        super().__init__(f"training interrupted at epoch {epoch + 1}, step {step}; continue with --resume ({out})")
        self.out, self.epoch, self.step = out, epoch, step


def _add(sums: dict[str, Any], add: dict[str, Any]) -> None:
    """Running totals without a host synchronisation: tensors stay on the device (float64) until read."""
    for k, v in add.items():
        sums[k] = sums.get(k, 0.0) + (v.detach().double() if isinstance(v, torch.Tensor) else v)


def _host(sums: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in sums.items()}


def fit(task: Task, out: Path, cfg: Any, dev: torch.device, d: Dist, *, resume: bool, progress: bool,
         stop_after_steps: int | None, callback: Callable[[dict[str, Any]], None] | None,
         amp: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """The training loop both tasks share: per-epoch schedule and drop-path, seeded order and batches,
    mixed precision (`amp`; None: on CUDA) with its GradScaler, clipped SGD, metrics.jsonl, best.pt,
    last.pt after every epoch, resume. SIGINT/SIGTERM stop at the next step boundary on which every
    rank agrees (nasir.device.StopFlag), after saving last.pt; --resume continues from that step."""
    model = task.model
    amp = dev.type == "cuda" if amp is None else amp
    if cfg.batch_size % d.world:
        raise DiagnosticError([Diagnostic(f"the batch size {cfg.batch_size} does not split evenly over {d.world} processes")])
    net: torch.nn.Module = model
    if d.world > 1 and task.ddp:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if d.main and task.provenance is not None:
        # After DDP's construction (a collective): every rank has checked --out before this is written.
        prov.write(out, task.provenance)
    opt = task.make_optimizer()
    # fp16 autocast on CUDA needs loss scaling; the scaler's state (scale, growth tracker) is part of
    # last.pt, so a resumed run scales and skips exactly the steps an uninterrupted one does.
    scaler = torch.amp.GradScaler(dev.type, enabled=amp)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best": -math.inf if task.higher else math.inf, "metrics_lines": 0}
    sums: dict[str, Any] = {}
    metrics = MetricsLog(out / "metrics.jsonl", enabled=d.main)
    if resume and (out / "last.pt").exists():
        ck = load_checkpoint(out / "last.pt")
        if ck.get("task", "classification") != task.name:
            raise DiagnosticError([Diagnostic(f"'{out / 'last.pt'}' is from a {ck.get('task', 'classification')} run, not {task.name}",
                                              hint="resume with the same --task, or train into another --out")])  # fmt: skip
        if task.provenance is not None:
            prov.require_same(prov.of(ck), task.provenance, prov.RESUME, f"--resume: '{out / 'last.pt'}'",
                              hint="resume with the spec, --set values, --seed and --data the run started with, or train into another --out")  # fmt: skip
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if amp != bool(ck.get("scaler")):
                raise ValueError(f"mixed precision was {'on' if ck.get('scaler') else 'off'} then, {'on' if amp else 'off'} now")
            if amp:
                scaler.load_state_dict(ck["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise DiagnosticError([Diagnostic(f"'{out / 'last.pt'}' was written with other settings: {str(e).strip().splitlines()[0]}",
                                              hint="resume with the settings the run started with (--set, --preset, --device, ...)")]) from None  # fmt: skip
        state, sums = ck["state"], ck["sums"]
        # metrics.jsonl is appended before last.pt is saved: a kill between the two left a line this
        # checkpoint has not seen, and the epoch runs again. Keep the lines it has seen (docs/runtime.md).
        # (A last.pt from before this field: every epoch it finished has its line.)
        state.setdefault("metrics_lines", state["epoch"])
        metrics.truncate(state["metrics_lines"])
        for note in dv.restore_rng(ck["rng"]):
            if d.main:
                print(f"nasir: resume: {note}", file=sys.stderr)
    if task.start is not None:
        state["epoch"], state["step"] = task.start
    if task.splits is not None:  # several streams: the last partial batch is dropped (as DARTS does)
        steps = max(1, min(len(x) for x in task.splits) // cfg.batch_size)
    else:
        steps = math.ceil(len(task.train_idx) / cfg.batch_size)
    if cfg.limit_batches is not None:
        steps = min(steps, cfg.limit_batches)
    control = Control(total=cfg.epochs * steps, initial=state["epoch"] * steps + state["step"], progress=progress, main=d.main,
                      desc=task.desc or f"train {task.name}", stop_after_steps=stop_after_steps, leave=task.end_epoch is None)  # fmt: skip
    bar, stop = control.bar, control.stop
    last: dict[str, Any] = {}
    done = 0
    benchmark = dv.fixed_shapes(dev) if task.fixed_shapes else False

    watch = finite.FiniteWatch()  # the first step whose loss was not finite, kept on the device (nasir/finite.py)

    def check_losses(epoch: int) -> None:
        """Stop at the first non-finite loss, naming its step; nothing of the diverged run is saved."""
        bad = watch.first(distributed=d.world > 1, device=dev)
        if bad is not None:
            g, value = bad
            raise _diverged(out, f"the training loss is {finite.describe(value)} at epoch {g // steps + 1}, step {g % steps + 1} "
                                 f"(of {steps})", g)  # fmt: skip

    def save() -> None:
        if not finite.state_is_finite(task.model.state_dict()):
            raise _diverged(out, f"the weights are not finite after epoch {state['epoch'] + (state['step'] == 0)}, "
                                 f"step {state['step'] or steps}", None)  # fmt: skip
        save_last(out, task, opt, scaler, state, sums, d)

    interrupted = task.interrupted or TrainInterrupted

    try:
        with stop.installed():
            while state["epoch"] < cfg.epochs and not task.done():
                epoch = state["epoch"]
                task.begin_epoch(opt, epoch)  # the learning rate and drop-path of this epoch
                t0 = time.perf_counter()
                dv.reset_peak_memory(dev)
                net.train()
                if task.splits is not None and task.batch is not None:  # one order per stream, the task slices per rank
                    orders = [data_mod.epoch_order(idx, cfg.seed, epoch, stream) for stream, idx in enumerate(task.splits)]
                    batches: Iterable[Any] = (task.batch(orders, s) for s in range(state["step"], steps))
                else:
                    order = data_mod.epoch_order(task.train_idx, cfg.seed, epoch, 0)
                    todo = [shard(order[s * cfg.batch_size : (s + 1) * cfg.batch_size], d) for s in range(state["step"], steps)]
                    batches = task.batches(todo)
                check = task.check or functools.partial(check_losses, epoch)
                for batch in batches:
                    g = data_mod.batch_generator(cfg.seed, epoch, state["step"], d.rank)
                    with contextlib.nullcontext() if task.owns_step else torch.autocast(dev.type, enabled=amp):
                        loss, add = task.step(net, batch, g)
                    if task.check is None:
                        watch.observe(loss, epoch * steps + state["step"])
                    if dev.type == "cpu":
                        check()  # nothing to wait for on the CPU: stop at once
                    if not task.owns_step:
                        opt.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        scaler.unscale_(opt)
                        if cfg.grad_clip > 0:  # 0: no clipping
                            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        scaler.step(opt)
                        scaler.update()
                    _add(sums, add)
                    state["step"] += 1
                    done += 1
                    if bar is not None:
                        bar.update(1)
                        if state["step"] % 50 == 1 or state["step"] == steps:  # reading the loss waits for the GPU
                            if d.world == 1:  # (under torchrun every rank checks at the same points, below)
                                check()
                            if task.postfix is not None:
                                bar.set_postfix(**task.postfix())
                            else:
                                bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{float(sums['loss']) / max(1.0, float(sums['seen'])):.3f}")
                    if task.step_info is not None and callback is not None:  # reading the losses waits for the GPU
                        callback(task.step_info())
                    if control.should_stop(epoch * steps + state["step"] if task.count_from_start else done):
                        if task.finish_epoch_on_stop and state["step"] == steps:
                            stop.requested = True  # the epoch is complete: finish it, then stop
                            continue
                        check()
                        task.save() if task.save is not None else save()
                        raise interrupted(out, epoch, state["step"])
                if task.end_epoch is not None:  # the task evaluates, records, writes and saves (its checks first)
                    last = task.end_epoch(epoch)
                    state = {**state, "epoch": epoch + 1, "step": 0}
                    if stop.requested and state["epoch"] < cfg.epochs and not task.done():
                        raise interrupted(out, state["epoch"], 0)
                    continue
                check_losses(epoch)
                if not finite.state_is_finite(model.state_dict()):
                    raise _diverged(out, f"the weights are not finite after epoch {epoch + 1} (its last step, {steps}, "
                                         "updated them to NaN or inf)", None)  # fmt: skip
                valid = task.evaluate()
                nonfinite = [k for k, v in valid.items() if isinstance(v, float) and not math.isfinite(v)]
                if nonfinite:
                    raise _diverged(out, f"the held-out {nonfinite[0].removeprefix('valid_')} is {finite.describe(valid[nonfinite[0]])} "
                                         f"after epoch {epoch + 1}", None)  # fmt: skip
                last = {"epoch": epoch + 1, **task.summary(_host(sums)), **valid, "lr": opt.param_groups[0]["lr"],
                        "seconds": time.perf_counter() - t0}  # fmt: skip
                if amp:
                    last["amp_scale"] = float(scaler.get_scale())
                if torch.are_deterministic_algorithms_enabled():
                    last["deterministic"] = True
                peak = dv.peak_memory_mb(dev)
                if peak is not None:
                    last["gpu_peak_mb"] = peak
                score = valid[task.score]
                improved = score >= state["best"] if task.higher else score <= state["best"]
                if d.main and improved:
                    best = {**task.best_payload(last), "provenance": task.provenance}
                    atomic_write_with(out / "best.pt", lambda tmp, best=best: torch.save(best, tmp))
                metrics.append(last)  # then last.pt, which records the line count (MetricsLog: idempotent resume)
                state = {"epoch": epoch + 1, "step": 0, "best": score if improved else state["best"], "metrics_lines": metrics.lines}
                sums = {}
                save()
                if callback is not None and task.step_info is None:
                    callback(last)
    finally:
        control.close()
        if benchmark:
            torch.backends.cudnn.benchmark = False
    last[f"best_{task.score}"] = state["best"]
    return last


def _diverged(out: Path, what: str, step: int | None) -> finite.NonFiniteError:
    """The error that stops a diverged run: what went non-finite where, and what is kept."""
    kept = load_checkpoint(out / "last.pt").get("state") if (out / "last.pt").is_file() else None
    if kept is None:
        where = "no checkpoint was written (none was finite)"
    else:
        at = f"epoch {kept['epoch'] + 1}, step {kept['step']}" if kept.get("step") else f"the end of epoch {kept['epoch']}"
        where = f"{out / 'last.pt'} keeps the last finite state (at {at})"
    return finite.NonFiniteError(f"training stopped: {what}; {where}",
                                 hint="a smaller --lr, or --grad-clip, usually keeps the loss finite", step=step)  # fmt: skip


def save_last(out: Path, task: Task, opt, scaler, state, sums, d: Dist) -> None:
    """last.pt, written by rank 0; every rank calls it (the RNG states of all ranks are gathered)."""
    save_checkpoint(out / "last.pt", d, lambda rng: {
        "task": task.name, **task.extra, "provenance": task.provenance, "model": task.model.state_dict(),
        "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "state": dict(state), "sums": _host(sums), "rng": rng})  # fmt: skip
