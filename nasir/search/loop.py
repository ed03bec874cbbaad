"""The search loop (docs/runtime.md): one `Search` per run: supernet, data, optimisers, per step an
architecture step (the method's rule, nasir/methods) and a weight step (perturbed by the smoothing),
per epoch evaluation, derivation by the selection rule, metrics and checkpoint; resume and stop.
It runs as a `Task` of the runtime's one loop (nasir/runtime/fit.py; docs/runtime.md). Entry point and file layout: nasir/search/runner.py."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from nasir import device as dv
from nasir import finite, ir, methods
from nasir import provenance as prov
from nasir.data import classification as data_mod
from nasir.diagnostics import Diagnostic, DiagnosticError
from nasir.io import atomic_write
from nasir.macro import Plan
from nasir.runtime.dist import init_distributed
from nasir.runtime.fit import Task, fit
from nasir.runtime.metrics import MetricsLog
from nasir.runtime.state import save_checkpoint
from nasir.search import diagnostics, hooks
from nasir.search.architect import Architect, all_reduce_mean, weight_step
from nasir.search.artefacts import (
    canonical,
    cost_fn,
    derived_text,
    genotype_of,
    with_overrides,
    write_outputs,
)
from nasir.search.milenas import three_way_split
from nasir.search.settings import Options
from nasir.search.smoothing import epsilon
from nasir.search.strength import EarlyStop, StrengthMeter, architecture_key
from nasir.search.supernet import build_supernet, prepare
from nasir.search.topology import most_likely_edges, passive_aggressive, removed_nodes

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 3  # 3: the options gained warmup and drop_none; early stop keeps an order-free key


def _flag_error(message: str, hint: str | None = None) -> DiagnosticError:
    return DiagnosticError([Diagnostic(message, None, hint)])


@attrs.frozen
class SearchResult:
    out: Path
    derived: ir.Spec
    derived_text: str
    genotype: str | None
    alphas: dict[str, list[list[float]]]
    metrics: list[dict[str, Any]]
    files: dict[str, Path]
    notes: tuple[str, ...] = ()

    @property
    def valid_acc(self) -> float | None:
        return self.metrics[-1].get("valid_acc") if self.metrics else None


class SearchInterrupted(KeyboardInterrupt):
    """A stop signal (or `stop_after_steps`) ended the search at a step boundary; a checkpoint was saved."""

    def __init__(self, out: Path, epoch: int, step: int):
        super().__init__(f"search interrupted at epoch {epoch + 1}, step {step}; continue with --resume ({out})")
        self.out, self.epoch, self.step = out, epoch, step


class Search:
    """One search run in `out`; `run()` trains to the last epoch (resuming if asked) and writes outputs."""

    def __init__(self, spec: ir.Spec, plan: Plan, options: Options, out: Path, *, progress: bool = True,
                 callback: Callable[[dict[str, Any]], None] | None = None, stop_after_steps: int | None = None,
                 source: str | None = None, artifacts: bool = True):  # fmt: skip
        self.spec = prepare(spec)
        self.artifacts = artifacts
        self.plan = plan
        self.opt = options
        self.out = out
        self.progress = progress
        self.callback = callback
        self.stop_after_steps = stop_after_steps
        self.source = source or spec.file
        self.device = torch.device(options.device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # this process's GPU (nasir.device.select_device chose it)
        # Under torchrun every rank takes an equal slice of each global batch; every gradient is
        # averaged over the ranks (architect.all_reduce_mean), so weights and alphas stay identical.
        self.dist = init_distributed(self.device)
        self.reduce = all_reduce_mean if self.dist.world > 1 else None
        if options.batch_size % self.dist.world:
            raise _flag_error(f"the batch size {options.batch_size} does not split evenly over {self.dist.world} processes")
        self.data = data_mod.load_data(options.data, plan.input, plan.classes)
        self.notes: list[str] = [self.data.note] if self.data.note else []
        self.method = methods.method(options.method)
        self.selection = methods.selection(options.select)
        self.smoothing = methods.smoothing(options.smooth)
        self.three_way = self.method.three_way and any(c.beta_rows for c in self.spec.cells)
        if self.three_way:  # weights / alpha / beta (stretchable-cells, MiLeNAS)
            split = three_way_split(len(self.data), options.seed)
            self.splits = [torch.tensor(x, dtype=torch.long) for x in split]
        else:  # weights / architecture halves (DARTS)
            self.splits = list(data_mod.split_halves(len(self.data), options.seed))
        self.w_idx, self.a_idx = self.splits[0], self.splits[1]
        b = options.batch_size
        steps = max(1, min(len(x) for x in self.splits) // b)
        if options.limit_batches is not None:
            steps = min(steps, options.limit_batches)
        self.steps = steps
        if options.warmup_epochs >= options.epochs:
            self.notes.append(f"no architecture step: the warm-up ({options.warmup_epochs} epochs) covers all {options.epochs} "
                              "epochs, so the derived cell comes from the initial architecture variables (set warmup lower)")  # fmt: skip

        self.model = build_supernet(self.spec, plan, seed=options.seed, channels_last=options.channels_last,
                                    low_memory=options.low_memory, partial_channels=options.partial_channels,
                                    fuse=options.fuse)  # fmt: skip
        if options.deterministic:
            dv.deterministic_pooling(self.model)  # torch has no deterministic CUDA backward for adaptive pooling
        self.model.to(self.device)
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), options.w_lr, momentum=options.momentum,
                                     weight_decay=options.w_weight_decay)  # fmt: skip
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, options.epochs, eta_min=options.w_lr_min)
        # r(beta) is defined for output topologies only (stretchable-cells Eq. 14-15); under `topology
        # inputs k` it is 0 identically, a constant with no gradient (issue 14, item 15: it crashed every
        # such search), so no regularizer then.
        outputs_kinds = [k for k in self.model.betas if getattr(self.model.cells[k].topology, "kind", None) == "outputs"]
        regularizer = self._passive_aggressive if outputs_kinds and options.pa_lambda else None
        self.architect = Architect(self.model, self.w_opt, rule=hooks.rule(self.method, options), lr=options.a_lr, betas=options.a_betas,
                                   weight_decay=options.a_weight_decay, mixed_level=options.mixed_level,
                                   regularizer=regularizer, reduce=self.reduce)  # fmt: skip
        self.meter = StrengthMeter(options.strength_window or steps)
        self.early = EarlyStop(options.early_stop) if options.early_stop else None
        self.stopped_early = False
        self._derived: tuple[int, ir.Spec] | None = None
        self.epoch = 0
        self.step = 0
        self.partial = self._zero_sums()
        self.history: list[dict[str, Any]] = []
        # Issue 14: what the search is made from (also in checkpoint.pt), and the first non-finite
        # losses, kept on the device (nasir/finite.py) and read where the loop waits anyway.
        split = {"kind": "three_way" if self.three_way else "halves", "seed": options.seed}
        self.provenance = prov.record(spec, kind="search", overrides=dict(options.overrides), plan=plan, seed=options.seed,
                                      data=options.data, split=split)  # fmt: skip
        self.loss_watch = finite.FiniteWatch()
        self.arch_watch = finite.FiniteWatch()

    def _passive_aggressive(self) -> torch.Tensor:
        """lambda * r(beta) summed over the cell kinds (stretchable-cells Eq. 14-15)."""
        m = self.model
        return self.opt.pa_lambda * sum(passive_aggressive(m.cells[k], list(rows)) for k, rows in m.betas.items())  # type: ignore[return-value]

    # ---- state ---------------------------------------------------------------------------------
    @staticmethod
    def _zero_sums() -> dict[str, float]:
        return {"train_loss": 0.0, "train_correct": 0.0, "arch_loss": 0.0, "arch_seen": 0.0, "seen": 0.0, "seconds": 0.0}

    def state_dict(self, rng: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint; `rng` from nasir.device.rng_state (which every rank must call under DDP)."""
        return {
            "version": CHECKPOINT_VERSION,
            "options": self.opt.to_dict(),
            "spec": canonical(self.spec),
            "provenance": self.provenance,
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.architect.optimizer.state_dict(),
            "sched": self.sched.state_dict(),
            "rng": rng if rng is not None else dv.rng_state(),
            "partial": {k: float(v) for k, v in self.partial.items()},  # device sums read once, here
            "history": json.dumps(self.history),
            "strength": self.meter.state_dict(),
            "early": self.early.state_dict() if self.early else None,
            "stopped_early": self.stopped_early,
        }

    def save(self) -> None:
        """checkpoint.pt; every rank calls it (their RNG states are gathered), rank 0 writes it."""
        def make(rng: dict[str, Any]) -> dict[str, Any]:
            state = self.state_dict(rng)
            if not finite.state_is_finite(state["model"]):  # the losses were finite, but the last step's update was not
                raise self._diverged(f"the supernet's weights or architecture variables are not finite after epoch {self.epoch + (self.step == 0)}"
                                     f"{f', step {self.step}' if self.step else ''}")  # fmt: skip
            return state

        save_checkpoint(self.out / CHECKPOINT, self.dist, make)  # rank 0 writes, the others wait for the file

    def _diverged(self, what: str, step: int | None = None) -> finite.NonFiniteError:
        kept = "checkpoint.pt keeps the last finite state" if (self.out / CHECKPOINT).is_file() else "no checkpoint was written"
        return finite.NonFiniteError(f"search stopped: {what}; {kept}; nothing derived from it was written",
                                     hint="a smaller --lr or --arch-lr usually keeps the losses finite", step=step)  # fmt: skip

    def check_finite(self) -> None:
        """Stop at the first non-finite weight or architecture loss, naming its step (one host read)."""
        dist = self.dist.world > 1
        for watch, what in ((self.loss_watch, "training loss"), (self.arch_watch, "architecture loss")):
            bad = watch.first(distributed=dist, device=self.device)
            if bad is not None:
                g, value = bad
                raise self._diverged(f"the {what} is {finite.describe(value)} at epoch {g // self.steps + 1}, "
                                     f"step {g % self.steps + 1} (of {self.steps})", g)  # fmt: skip

    def load(self) -> None:
        path = self.out / CHECKPOINT
        try:
            state = dv.load_on_cpu(path)  # on the CPU: the RNG states must stay there; the rest moves below
        except FileNotFoundError:
            raise _flag_error(f"--resume: no checkpoint in '{self.out}'", "start a new search without --resume") from None
        except Exception as e:  # a truncated or foreign file
            raise _flag_error(f"--resume: cannot read '{path}': {type(e).__name__}: {e}") from None
        if state.get("version") != CHECKPOINT_VERSION:
            raise _flag_error(f"--resume: '{path}' was written by another version of nasir")
        prov.require_same(prov.of(state), self.provenance, ("spec", "overrides", "network", "seed", "data", "split"),
                          f"--resume: '{path}'", hint="resume with the spec, --set values, --seed and --data the search started with")  # fmt: skip
        saved = state["options"]
        now = self.opt.to_dict()
        # What the user set, not what follows from it (the layout `auto` resolves per device): only the
        # fields that are part of the result; a field the checkpoint predates counts as what ran before it
        # existed (its `absent` metadata), else as its default.
        fields = {f.name: f for f in attrs.fields(Options)}
        default = {k: f.metadata.get("absent", list(f.default) if isinstance(f.default, tuple) else f.default)
                   for k, f in fields.items()}  # fmt: skip
        differ = [k for k, v in now.items() if fields[k].eq and saved.get(k, default[k]) != v]
        if differ:
            listed = ", ".join(f"{k} ({saved.get(k, default[k])!r} then, {now[k]!r} now)" for k in differ)
            hint = "resume with the same flags, or start a new search in another --out"
            if differ == ["fuse"] and now["fuse"]:
                hint = "the fused supernet is the default now; resume this search with --no-fuse (fuse=False in Python)"
            raise _flag_error(f"--resume: the search in '{self.out}' ran with other settings: {listed}", hint)
        if state["spec"] != canonical(self.spec):
            raise _flag_error(f"--resume: the spec changed since the search in '{self.out}' started",
                              "resume with the spec it started from, or start a new search in another --out")  # fmt: skip
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.architect.optimizer.load_state_dict(state["a_opt"])
        self.sched.load_state_dict(state["sched"])
        self.notes.extend(f"resume: {n}" for n in dv.restore_rng(state["rng"]))
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.partial = {k: float(v) for k, v in state["partial"].items()}
        self.history = json.loads(state["history"])
        self.meter.load_state_dict(dv.move_to(state["strength"], self.device))  # its history lives where the gradients do
        self.stopped_early = bool(state["stopped_early"])
        if self.early is not None:
            self.early.load_state_dict(state["early"])

    # ---- batches -------------------------------------------------------------------------------
    def _batch(self, order: torch.Tensor, step: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.opt.batch_size
        idx = order[step * b : (step + 1) * b]
        g = data_mod.batch_generator(self.opt.seed, self.epoch, step, stream)
        x, y = self.data.batch(idx, g)
        if self.dist.world > 1:  # this rank's slice of the global batch, augmented as one process would
            n = len(y) // self.dist.world
            x, y = x[self.dist.rank * n : (self.dist.rank + 1) * n], y[self.dist.rank * n : (self.dist.rank + 1) * n]
        return dv.to_device(x, self.device), dv.to_device(y, self.device)  # pinned, non-blocking on CUDA

    # ---- the loop: a Task of the runtime's loop (nasir/runtime/fit.py, docs/runtime.md) -----------
    def run(self, resume: bool = False) -> SearchResult:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load()
        elif (self.out / CHECKPOINT).exists():
            raise _flag_error(f"'{self.out}' already holds a search (checkpoint.pt)",
                              "continue it with --resume, or choose another --out")  # fmt: skip
        if self.dist.main:
            prov.write(self.out, self.provenance)
        benchmark = torch.backends.cudnn.benchmark
        try:
            with dv.deterministic_mode(self.opt.deterministic):
                dv.fixed_shapes(self.device)  # cuDNN autotuning on CUDA unless deterministic: every step has one shape
                fit(self.task(), self.out, self.opt, self.device, self.dist, resume=False, progress=self.progress,
                    stop_after_steps=self.stop_after_steps, callback=self.callback, amp=False)  # fmt: skip
        finally:
            torch.backends.cudnn.benchmark = benchmark
        return self.finish()

    def task(self) -> Task:
        """The search as the runtime loop's task: its own steps (architecture, then weights), its streams,
        its epoch end, checkpoint and early stop; `fit` draws the orders, counts, checks and stops."""
        return Task(
            name="search", model=self.model, train_idx=self.splits[0], step=self._task_step, summary=dict,
            evaluate=dict, best_payload=dict, score="valid_acc", higher=True, make_optimizer=lambda: self.w_opt,
            begin_epoch=self._begin_epoch, owns_step=True, splits=self.splits, batch=self._task_batch,
            check=self.check_finite, postfix=self._postfix, step_info=self._step_info, end_epoch=self._end_epoch,
            save=self.save, done=lambda: self.stopped_early, finish_epoch_on_stop=True, count_from_start=True,
            interrupted=SearchInterrupted, ddp=False, start=(self.epoch, self.step), desc="search",
        )  # fmt: skip

    def _begin_epoch(self, _w_opt: torch.optim.Optimizer, epoch: int) -> None:
        opt = self.opt
        self.epoch = epoch
        self._lr = self.sched.get_last_lr()[0]
        self._eps = epsilon(epoch, opt.epochs, opt.eps_start, opt.eps_end) if self.smoothing.perturbs else None
        self.model.train()
        dv.reset_peak_memory(self.device)

    def _task_batch(self, orders: list[torch.Tensor], step: int) -> tuple[float, Any, Any, Any]:
        """The step's batches: weights (stream 0), architecture (1), betas (2, three-way splits)."""
        self.step = step
        t0 = time.perf_counter()
        train = self._batch(orders[0], step, 0)
        valid = self._batch(orders[1], step, 1)
        valid_beta = self._batch(orders[2], step, 2) if self.three_way else None
        return t0, train, valid, valid_beta

    def _task_step(self, _net: torch.nn.Module, batch: tuple[float, Any, Any, Any], _g: torch.Generator):
        model, opt = self.model, self.opt
        t0, train, valid, valid_beta = batch
        # 1. architecture step on the architecture data (after the warm-up), 2. weight step (docs/methods.md, DARTS).
        a_loss = None
        if self.epoch >= opt.warmup_epochs:
            with dv.fp32_arch_grads(opt.fp32_arch_grads):  # TF32 off: the finite difference is sensitive (docs/gpu.md)
                a_loss, _ = self.architect.step(train, valid, xi=self._lr, valid_beta=valid_beta)
            kinds = list(model.alphas)
            self.meter.record_grads(dict(zip(kinds, self.architect.last_grads[: len(kinds)])))
        soft = self._smoothed(train, self._eps) if self._eps is not None else None
        loss, logits = weight_step(model, self.w_opt, train, clip=opt.grad_clip, soft=soft, reduce=self.reduce)
        at = self.epoch * self.steps + self.step
        self.loss_watch.observe(loss, at)
        if a_loss is not None:
            self.arch_watch.observe(a_loss, at)
        sums = self.partial  # tensors on the device during the epoch: no host sync per step
        n = train[1].numel()
        sums["train_loss"] += loss.double() * n
        sums["train_correct"] += (logits.argmax(1) == train[1]).sum().double()
        if a_loss is not None:
            sums["arch_loss"] += a_loss.double() * n
            sums["arch_seen"] += n
        sums["seen"] += n
        sums["seconds"] += time.perf_counter() - t0  # on CUDA the time to queue the step; the epoch's total is exact
        self.step += 1
        self._last = (loss, a_loss)
        return loss, {}

    def _postfix(self) -> dict[str, str]:
        loss, a_loss = self._last
        return {"loss": f"{float(loss):.3f}", "arch": "warm-up" if a_loss is None else f"{float(a_loss):.3f}",
                "acc": f"{float(self.partial['train_correct']) / self.partial['seen']:.3f}"}  # fmt: skip

    def _step_info(self) -> dict[str, Any]:
        loss, a_loss = self._last
        return {"epoch": self.epoch + 1, "step": self.step, "global_step": self.epoch * self.steps + self.step,
                "loss": float(loss), "arch_loss": None if a_loss is None else float(a_loss)}  # fmt: skip

    def _end_epoch(self, _epoch: int) -> dict[str, Any]:
        """Evaluation, the epoch's record (docs/runtime.md), derivation, early stop, files, checkpoint."""
        model, opt = self.model, self.opt
        lr, eps = self._lr, self._eps
        t0 = time.perf_counter()
        valid_loss, valid_acc = self.evaluate(self.a_idx)
        eval_s = time.perf_counter() - t0
        # After the evaluation (its one host read ends the epoch's queue), before anything is written.
        self.check_finite()
        if not finite.state_is_finite(model.state_dict()):
            raise self._diverged(f"the supernet's weights or architecture variables are not finite after epoch {self.epoch + 1}")
        self.sched.step()
        sums = {k: float(v) for k, v in self.partial.items()}
        seen = max(sums["seen"], 1.0)
        record = {
            "epoch": self.epoch + 1, "steps": self.steps, "lr": lr,
            "train_loss": sums["train_loss"] / seen, "train_acc": sums["train_correct"] / seen,
            "arch_loss": sums["arch_loss"] / sums["arch_seen"] if sums.get("arch_seen") else None,
            "valid_loss": valid_loss, "valid_acc": valid_acc,
            "time_s": round(sums["seconds"] + eval_s, 3), "train_s": round(sums["seconds"], 3),
        }  # fmt: skip
        record.update(dv.precision_record(opt.fp32_arch_grads))
        if opt.deterministic:
            record["deterministic"] = True
        peak = dv.peak_memory_mb(self.device)
        if peak is not None:
            record["gpu_peak_mb"] = peak
        if eps is not None:
            record["eps"] = eps
        if self.epoch < opt.warmup_epochs:
            record["warmup"] = True
        if opt.hessian:
            t0 = time.perf_counter()
            with dv.fp32_arch_grads(opt.fp32_arch_grads):
                eig = self.hessian_eigenvalue()
            record["hessian_eig"] = eig.value
            record["hessian_converged"] = eig.converged
            record["hessian_method"] = eig.method
            record["hessian_s"] = round(time.perf_counter() - t0, 3)
        derived = self.derive()
        record["genotype"] = genotype_of(derived)
        if self.early is not None:
            self.stopped_early = self.early.update(architecture_key(derived))
            record["unchanged_epochs"] = self.early.count
            if self.stopped_early:
                record["early_stop"] = True
        self.history.append(record)
        self.epoch += 1
        self.step = 0
        self.partial = self._zero_sums()
        self._write_epoch(record)
        self.save()
        return record

    def _generator(self, step: int, stream: int) -> torch.Generator:
        seed = data_mod.batch_generator(self.opt.seed, self.epoch, step, stream).initial_seed()
        return torch.Generator(device=self.device).manual_seed(seed)

    def generator(self, stream: int) -> torch.Generator:
        """A generator on the device for this step's `stream` (a function of seed, epoch, step): for the hooks."""
        return self._generator(self.step, stream)

    def _smoothed(self, batch: tuple[torch.Tensor, torch.Tensor], eps: float) -> dict[str, torch.Tensor] | None:
        """The weights this weight step's mixed ops read: the smoothing's perturbation (nasir/methods/sdarts.py,
        implemented in search/hooks.py); None: softmax(alpha)."""
        return hooks.perturb(self.smoothing, self, batch, eps)

    def _fixed_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return diagnostics.fixed_batch(self)

    def hessian_eigenvalue(self):
        """SDARTS' diagnostic (search/diagnostics.py)."""
        return diagnostics.hessian_eigenvalue(self)

    @torch.no_grad()
    def evaluate(self, indices: torch.Tensor) -> tuple[float, float]:
        """Loss and accuracy of the supernet in eval mode on `indices` (DARTS' `infer` on the valid half)."""
        self.model.eval()
        b = self.opt.batch_size
        n_batches = math.ceil(len(indices) / b)
        if self.opt.limit_batches is not None:
            n_batches = min(n_batches, self.opt.limit_batches)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)  # summed on the device, read once
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        for k in range(n_batches):
            idx = indices[k * b : (k + 1) * b]
            x, y = self.data.batch(idx, train=False)
            x, y = dv.to_device(x, self.device), dv.to_device(y, self.device)
            logits = self.model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum().double()
            seen += y.numel()
        self.model.train()
        return float(loss) / max(seen, 1.0), float(correct) / max(seen, 1.0)

    # ---- derivation and outputs ----------------------------------------------------------------
    def scores(self) -> dict[str, list[list[float]]]:
        """The selection rule's score per (alpha row, candidate), per cell kind (passes/derive.py ranks
        them): the registered selection's hook (nasir/methods names it, search/hooks.py implements it)."""
        with torch.no_grad():
            return hooks.scores(self.selection, self)

    def removal_scores(self) -> dict[str, torch.Tensor]:
        """The naive criterion (search/diagnostics.py)."""
        return diagnostics.removal_scores(self)

    def derive(self) -> ir.Spec:
        """Selection by the chosen rule (`scores`) under the spec's limits and budgets (passes/derive.py);
        stretchable cells keep the edges of their most likely codes (search/topology.py)."""
        from nasir.passes.derive import derive

        at = self.epoch * self.steps + self.step  # steps done so far
        if self._derived is not None and self._derived[0] == at:  # nothing changed since (finish after the last epoch)
            return self._derived[1]
        budgets = self.spec.search.budgets if self.spec.search else ()
        m = self.model
        keep = {k: most_likely_edges(m.cells[k], list(rows)) for k, rows in m.betas.items()}
        remove = {k: removed_nodes(m.cells[k], list(rows)) for k, rows in m.betas.items()}
        # through the pass manager's "derive" pipeline (passes/derive.py `derive`, nasir/pipeline.py)
        derived = derive(self.spec, self.scores(), keep_edges=keep, remove_nodes=remove, drop_none=self.opt.drop_none,
                         cost=cost_fn(self.plan) if budgets else None)  # fmt: skip
        self._derived = (at, derived)
        return derived

    def _write_epoch(self, record: dict[str, Any]) -> None:
        if not self.dist.main:
            return
        for name, values in self._variables().items():
            atomic_write(self.out / name / f"epoch_{record['epoch']:03d}.json", json.dumps(values) + "\n")
            atomic_write(self.out / f"{name}.json", json.dumps(values) + "\n")
        MetricsLog(self.out / "metrics.jsonl").rewrite(self.history)  # the checkpoint holds every record: idempotent

    def _variables(self) -> dict[str, Any]:
        """What is written per epoch: alphas, the operation strengths, and betas / gammas where the supernet has them."""
        m = self.model
        out: dict[str, Any] = {"alphas": m.alpha_values()}
        strength = self.meter.strength()
        if strength:
            out["strengths"] = {k: v.double().tolist() for k, v in strength.items()}
        if m.betas:
            out["betas"] = m.beta_values()
        if m.gammas:
            out["gammas"] = m.gamma_values()
        return out

    def finish(self) -> SearchResult:
        """The result; rank 0 writes the files (search/artefacts.py). `derived` carries the caller's
        network overrides as defaults, as derived.cell does, so compiling it builds the network searched."""
        derived = self.derive()
        overrides = dict(self.opt.overrides)
        # rank 0 copies the op files beside derived.cell and names them in it (the others only return the text)
        text = derived_text(derived, self.source, overrides, directory=self.out if self.dist.main else None)
        genotype = genotype_of(derived)
        alphas = self.model.alpha_values()
        files: dict[str, Path] = {}
        notes = list(self.notes)
        if self.dist.main:
            files, more = write_outputs(self.out, derived=derived, text=text, genotype=genotype, variables=self._variables(),
                                        spec=self.spec, plan=self.plan, seed=self.opt.seed, artifacts=self.artifacts,
                                        checkpoint=CHECKPOINT)  # fmt: skip
            notes += more
        return SearchResult(self.out, with_overrides(derived, overrides), text, genotype, alphas, list(self.history), files, tuple(notes))
