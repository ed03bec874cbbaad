"""The search job: supernet + data + DARTS steps per epoch, checkpoints, outputs (`nasir.search`).

Per step (methods.md, DARTS; the reference's train_search.py order): an architecture step on a batch of
the architecture half, then a weight step on a batch of the weight half. The training set is split in
two halves (DARTS train_portion 0.5). Defaults are the reference's: weights SGD lr 0.025 cosine-annealed
to 0.001 over the epochs, momentum 0.9, weight decay 3e-4, gradient norm clipped at 5; alpha Adam lr 3e-4,
betas (0.5, 0.999), weight decay 1e-3; seed 2, first order. The spec's `search { ... }` settings
(method darts(order = 2), epochs, batch_size, seed, select) override those defaults, and the caller's
arguments (the CLI's flags) override the spec.

The output directory gets
    derived.cell          the derived architecture (standalone: cells and network, no search block)
    genotype.txt          its DARTS Genotype string (or NAS-Bench-201 string), when it has that form
    alphas.json           the final architecture variables {cell kind: [[alpha per op] per mixed edge]},
                          rows in IR edge order, ops in the choice's order (`nasir draw --alphas` reads it)
    alphas/epoch_NNN.json the same after every epoch
    metrics.jsonl         one JSON object per epoch: losses, accuracies, learning rate, seconds, derivation
    checkpoint.pt         the state after the last finished epoch (or the step a stop signal arrived at)
    derived.onnx          the derived network (seeded initialisation), input `image`, output `logits`
    derived.png           a drawing of the derived cells
    alphas.png            a heatmap of softmax(alpha) per cell kind

Resuming (`resume=True`) restores model, optimisers, scheduler, RNG states, the position in the epoch
and the partial epoch's sums; the data order is a function of (seed, epoch), so a resumed search ends
with the same alphas and derived.cell as one that never stopped. SIGINT/SIGTERM stop at the next step
boundary and save a checkpoint first; a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from nasir import ir
from nasir.diagnostics import Diagnostic, DiagnosticError, error_at
from nasir.io import atomic_write, atomic_write_with
from nasir.macro import Plan
from nasir.search import data as data_mod
from nasir.search.architect import Architect, weight_step
from nasir.search.supernet import build_supernet, prepare

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1
SELECTIONS = ("magnitude",)  # the runtime's selection rules; verify.SEARCH_SETTINGS lists the language's


@attrs.frozen
class Options:
    """Everything that determines a search's result (and, below the line, what does not)."""

    order: int = 1
    epochs: int = 50
    batch_size: int = 64
    seed: int = 2
    select: str = "magnitude"
    data: str = "digits"
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    a_lr: float = 3e-4
    a_betas: tuple[float, float] = (0.5, 0.999)
    a_weight_decay: float = 1e-3
    limit_batches: int | None = None
    channels_last: bool = False
    overrides: tuple[tuple[str, Any], ...] = ()
    # ---- not part of the result
    low_memory: bool = attrs.field(default=False, eq=False)
    device: str = attrs.field(default="cpu", eq=False)

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["a_betas"] = list(self.a_betas)
        d["overrides"] = [list(x) for x in self.overrides]
        return d


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


# ---- settings ---------------------------------------------------------------------------------------
def _num(st: ir.Setting, what: str, minimum: int = 0) -> int:
    v = st.value
    if not isinstance(v, ir.Num) or not isinstance(v.value, int) or isinstance(v.value, bool) or v.value < minimum:
        raise error_at(st.span, f"'{st.name}' must be a whole number >= {minimum}", f"for example '{st.name} {max(minimum, 1)}'")
    return int(v.value)


def spec_settings(spec: ir.Spec) -> dict[str, Any]:
    """The `search { ... }` block as search defaults; settings this runtime cannot honour are errors."""
    out: dict[str, Any] = {}
    if spec.search is None:
        return out
    for st in spec.search.settings:
        v = st.value
        if st.name == "method":
            name = v.name if isinstance(v, ir.Call | ir.Var) else None
            if name != "darts":
                raise error_at(st.span, f"search method '{name}' is not supported by the search runtime yet", "use 'method darts(order = 1)' or 'darts(order = 2)'")
            if isinstance(v, ir.Call):
                for a in v.args:
                    if a.name != "order":
                        raise error_at(a.span or st.span, f"darts() takes one argument, 'order' (1 or 2); got '{a.name or 'a positional argument'}'")
                    if not isinstance(a.value, ir.Num) or a.value.value not in (1, 2):
                        raise error_at(a.value.span or a.span, "order must be 1 or 2 (first- or second-order DARTS)")
                    out["order"] = int(a.value.value)
        elif st.name == "select":
            name = v.name if isinstance(v, ir.Var | ir.Call) else None
            if name not in SELECTIONS:
                raise error_at(st.span, f"selection '{name}' is not supported by the search runtime yet", "use 'select magnitude' (or --select magnitude)")
            out["select"] = name
        elif st.name == "smooth":
            if not (isinstance(v, ir.Var) and v.name == "none"):
                raise error_at(st.span, "smoothing (SDARTS) is not supported by the search runtime yet", "use 'smooth none'")
        elif st.name in ("epochs", "batch_size"):
            out[st.name] = _num(st, st.name, 1)
        elif st.name == "seed":
            out["seed"] = _num(st, "seed", 0)
        else:
            raise error_at(st.span, f"search setting '{st.name}' is not supported by the search runtime yet")
    return out


def _flag_error(message: str, hint: str | None = None) -> DiagnosticError:
    return DiagnosticError([Diagnostic(message, None, hint)])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise _flag_error("--device cuda: no CUDA device is available", "use --device cpu or --device auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise _flag_error(f"--device must be auto, cpu or cuda, got '{device}'")
    return torch.device(device)


def make_options(spec: ir.Spec, *, data: str, order: int | None, epochs: int | None, batch_size: int | None,
                 seed: int | None, select: str | None, overrides: Mapping[str, Any], limit_batches: int | None,
                 channels_last: bool | None, low_memory: bool, device: torch.device) -> Options:  # fmt: skip
    s = spec_settings(spec)
    flags = {"order": order, "epochs": epochs, "batch_size": batch_size, "seed": seed, "select": select}
    for k, v in flags.items():
        if v is not None:
            s[k] = v
    if s.get("order", 1) not in (1, 2):
        raise _flag_error(f"--order must be 1 or 2, got {s['order']}")
    for k, low in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
        if k in s and (not isinstance(s[k], int) or s[k] < low):
            raise _flag_error(f"--{k.replace('_', '-')} must be a whole number >= {low}, got {s[k]}")
    if s.get("select", "magnitude") not in SELECTIONS:
        raise _flag_error(f"--select {s['select']} is not supported by the search runtime yet", "use --select magnitude")
    if limit_batches is not None and limit_batches < 1:
        raise _flag_error(f"--limit-batches must be at least 1, got {limit_batches}")
    if channels_last is None:
        channels_last = device.type == "cpu"  # performance.md: NHWC runs the CPU supernet in ~0.63 x the time
    return Options(data=data, overrides=tuple(sorted(overrides.items())), limit_batches=limit_batches,
                   channels_last=channels_last, low_memory=low_memory, device=str(device), **s)  # fmt: skip


# ---- the job ------------------------------------------------------------------------------------------
class _StopFlag:
    """SIGINT/SIGTERM ask for a stop at the next step boundary; a second signal stops at once."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\nnasir: stopping after this step (again to stop at once)", file=sys.stderr)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _rng_state() -> dict[str, Any]:
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _canonical(spec: ir.Spec) -> str:
    from nasir.printer import cell, network

    return "\n\n".join([cell(c) for c in spec.cells] + [network(n) for n in spec.networks]) + "\n"


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
        self.data = data_mod.load_data(options.data, plan.input, plan.classes)
        self.w_idx, self.a_idx = data_mod.split_halves(len(self.data), options.seed)
        b = options.batch_size
        steps = max(1, min(len(self.w_idx), len(self.a_idx)) // b)
        if options.limit_batches is not None:
            steps = min(steps, options.limit_batches)
        self.steps = steps
        self.stop = _StopFlag()
        self.notes: list[str] = [self.data.note] if self.data.note else []

        self.model = build_supernet(self.spec, plan, seed=options.seed, channels_last=options.channels_last,
                                    low_memory=options.low_memory).to(self.device)  # fmt: skip
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), options.w_lr, momentum=options.momentum,
                                     weight_decay=options.w_weight_decay)  # fmt: skip
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, options.epochs, eta_min=options.w_lr_min)
        self.architect = Architect(self.model, self.w_opt, order=options.order, lr=options.a_lr,
                                   betas=options.a_betas, weight_decay=options.a_weight_decay)  # fmt: skip
        self.epoch = 0
        self.step = 0
        self.partial = self._zero_sums()
        self.history: list[dict[str, Any]] = []

    # ---- state ---------------------------------------------------------------------------------
    @staticmethod
    def _zero_sums() -> dict[str, float]:
        return {"train_loss": 0.0, "train_correct": 0.0, "arch_loss": 0.0, "seen": 0.0, "seconds": 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "options": self.opt.to_dict(),
            "spec": _canonical(self.spec),
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.architect.optimizer.state_dict(),
            "sched": self.sched.state_dict(),
            "rng": _rng_state(),
            "partial": dict(self.partial),
            "history": json.dumps(self.history),
        }

    def save(self) -> None:
        state = self.state_dict()
        atomic_write_with(self.out / CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def load(self) -> None:
        path = self.out / CHECKPOINT
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except FileNotFoundError:
            raise _flag_error(f"--resume: no checkpoint in '{self.out}'", "start a new search without --resume") from None
        except Exception as e:  # a truncated or foreign file
            raise _flag_error(f"--resume: cannot read '{path}': {type(e).__name__}: {e}") from None
        if state.get("version") != CHECKPOINT_VERSION:
            raise _flag_error(f"--resume: '{path}' was written by another version of nasir")
        saved = state["options"]
        now = self.opt.to_dict()
        differ = [k for k, v in now.items() if k not in ("low_memory", "device") and saved.get(k) != v]
        if differ:
            listed = ", ".join(f"{k} ({saved.get(k)!r} then, {now[k]!r} now)" for k in differ)
            raise _flag_error(f"--resume: the search in '{self.out}' ran with other settings: {listed}",
                              "resume with the same flags, or start a new search in another --out")  # fmt: skip
        if state["spec"] != _canonical(self.spec):
            raise _flag_error(f"--resume: the spec changed since the search in '{self.out}' started",
                              "resume with the spec it started from, or start a new search in another --out")  # fmt: skip
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.architect.optimizer.load_state_dict(state["a_opt"])
        self.sched.load_state_dict(state["sched"])
        _set_rng_state(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.partial = {k: float(v) for k, v in state["partial"].items()}
        self.history = json.loads(state["history"])

    # ---- batches -------------------------------------------------------------------------------
    def _batch(self, order: torch.Tensor, step: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.opt.batch_size
        idx = order[step * b : (step + 1) * b]
        g = data_mod.batch_generator(self.opt.seed, self.epoch, step, stream)
        x, y = self.data.batch(idx, g)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> SearchResult:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load()
        elif (self.out / CHECKPOINT).exists():
            raise _flag_error(f"'{self.out}' already holds a search (checkpoint.pt)",
                              "continue it with --resume, or choose another --out")  # fmt: skip
        total = self.opt.epochs * self.steps
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.epoch * self.steps + self.step, file=sys.stderr, unit="step",
                       dynamic_ncols=True, leave=False)  # fmt: skip
        try:
            with self.stop.installed():
                while self.epoch < self.opt.epochs:
                    self._epoch(bar)
        finally:
            if bar is not None:
                bar.close()
        return self.finish()

    def _epoch(self, bar) -> None:
        model, opt = self.model, self.opt
        w_order = data_mod.epoch_order(self.w_idx, opt.seed, self.epoch, 0)
        a_order = data_mod.epoch_order(self.a_idx, opt.seed, self.epoch, 1)
        lr = self.sched.get_last_lr()[0]
        model.train()
        sums = self.partial
        if bar is not None:
            bar.set_description(f"epoch {self.epoch + 1}/{opt.epochs}")
        while self.step < self.steps:
            t0 = time.perf_counter()
            train = self._batch(w_order, self.step, 0)
            valid = self._batch(a_order, self.step, 1)
            # 1. architecture step on the architecture half, 2. weight step (methods.md, DARTS).
            a_loss, _ = self.architect.step(train, valid, xi=lr)
            loss, logits = weight_step(model, self.w_opt, train, clip=opt.grad_clip)
            n = train[1].numel()
            sums["train_loss"] += float(loss) * n
            sums["train_correct"] += float((logits.argmax(1) == train[1]).sum())
            sums["arch_loss"] += float(a_loss) * n
            sums["seen"] += n
            sums["seconds"] += time.perf_counter() - t0
            self.step += 1
            done = self.epoch * self.steps + self.step
            info = {"epoch": self.epoch + 1, "step": self.step, "global_step": done, "loss": float(loss), "arch_loss": float(a_loss)}
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.3f}", arch=f"{float(a_loss):.3f}",
                                acc=f"{sums['train_correct'] / sums['seen']:.3f}")  # fmt: skip
            if self.callback is not None:
                self.callback(info)
            if self.stop.requested or (self.stop_after_steps is not None and done >= self.stop_after_steps):
                if self.step < self.steps:
                    self.save()
                    raise SearchInterrupted(self.out, self.epoch, self.step)
                self.stop.requested = True  # the epoch is complete: finish it, then stop
        t0 = time.perf_counter()
        valid_loss, valid_acc = self.evaluate(self.a_idx)
        eval_s = time.perf_counter() - t0
        self.sched.step()
        seen = max(sums["seen"], 1.0)
        record = {
            "epoch": self.epoch + 1, "steps": self.steps, "lr": lr,
            "train_loss": sums["train_loss"] / seen, "train_acc": sums["train_correct"] / seen,
            "arch_loss": sums["arch_loss"] / seen, "valid_loss": valid_loss, "valid_acc": valid_acc,
            "time_s": round(sums["seconds"] + eval_s, 3), "train_s": round(sums["seconds"], 3),
        }  # fmt: skip
        derived = self.derive()
        record["genotype"] = _genotype(derived)
        self.history.append(record)
        self.epoch += 1
        self.step = 0
        self.partial = self._zero_sums()
        self._write_epoch(record)
        self.save()
        if self.stop.requested and self.epoch < opt.epochs:
            raise SearchInterrupted(self.out, self.epoch, 0)

    @torch.no_grad()
    def evaluate(self, indices: torch.Tensor) -> tuple[float, float]:
        """Loss and accuracy of the supernet in eval mode on `indices` (DARTS' `infer` on the valid half)."""
        self.model.eval()
        b = self.opt.batch_size
        n_batches = math.ceil(len(indices) / b)
        if self.opt.limit_batches is not None:
            n_batches = min(n_batches, self.opt.limit_batches)
        loss = correct = seen = 0.0
        for k in range(n_batches):
            idx = indices[k * b : (k + 1) * b]
            x, y = self.data.batch(idx, train=False)
            x, y = x.to(self.device), y.to(self.device)
            logits = self.model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
            seen += y.numel()
        self.model.train()
        return loss / max(seen, 1.0), correct / max(seen, 1.0)

    # ---- derivation and outputs ----------------------------------------------------------------
    def derive(self) -> ir.Spec:
        """Magnitude selection (methods.md, DARTS derivation) under the spec's limits and budgets (passes/derive.py)."""
        from nasir.passes.derive import Derive

        budgets = self.spec.search.budgets if self.spec.search else ()
        return Derive(self.model.scores(), cost=_cost_fn(self.plan) if budgets else None).run(self.spec).spec

    def _write_epoch(self, record: dict[str, Any]) -> None:
        alphas = self.model.alpha_values()
        atomic_write(self.out / "alphas" / f"epoch_{record['epoch']:03d}.json", json.dumps(alphas) + "\n")
        atomic_write(self.out / "alphas.json", json.dumps(alphas) + "\n")
        atomic_write(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))

    def finish(self) -> SearchResult:
        derived = self.derive()
        out = self.out
        files: dict[str, Path] = {}
        notes = list(self.notes)
        text = derived_text(derived, self.source, dict(self.opt.overrides))
        atomic_write(out / "derived.cell", text)
        files["derived.cell"] = out / "derived.cell"
        genotype = _genotype(derived)
        if genotype is not None:
            atomic_write(out / "genotype.txt", genotype + "\n")
            files["genotype.txt"] = out / "genotype.txt"
        alphas = self.model.alpha_values()
        atomic_write(out / "alphas.json", json.dumps(alphas) + "\n")
        files["alphas.json"] = out / "alphas.json"
        files["metrics.jsonl"] = out / "metrics.jsonl"
        files["checkpoint.pt"] = out / CHECKPOINT
        if not self.artifacts:
            return SearchResult(out, derived, text, genotype, alphas, list(self.history), files, tuple(notes))
        try:
            files["derived.onnx"] = export_onnx(derived, self.plan, out / "derived.onnx", seed=self.opt.seed)
        except ImportError as e:
            notes.append(f"no ONNX export: {e}")
        try:
            from nasir.targets.draw import draw

            files["derived.png"] = draw(derived, out / "derived.png")
        except ImportError as e:
            notes.append(f"no cell drawing: {e}")
        files["alphas.png"] = alpha_heatmap(self.spec, alphas, out / "alphas.png")
        return SearchResult(out, derived, text, genotype, alphas, list(self.history), files, tuple(notes))


def _genotype(derived: ir.Spec) -> str | None:
    """The DARTS genotype, else the NAS-Bench-201 string, else None (the cells have neither form)."""
    from nasir import genotype

    for fn in (genotype.spec_to_genotype, genotype.spec_to_nb201):
        try:
            return fn(derived)
        except DiagnosticError:
            continue
    return None


def derived_text(derived: ir.Spec, source: str, overrides: Mapping[str, Any] | None = None) -> str:
    """Standalone `.cell` text of a derived spec: every cell and network it needs, whatever file they came from.

    Network parameters set on the command line become the defaults, so the file builds the network searched.
    """
    if overrides:
        nets = []
        for n in derived.networks:
            params = tuple(attrs.evolve(p, default=_literal(overrides[p.name])) if p.name in overrides else p for p in n.params)
            nets.append(attrs.evolve(n, params=params))
        derived = attrs.evolve(derived, networks=tuple(nets))
    return f"# Derived by nasir search from {Path(source).name}.\n" + _canonical(derived)


def _literal(v: Any) -> ir.Expr:
    return ir.Bool(v) if isinstance(v, bool) else ir.Num(v)


def _cost_fn(plan: Plan) -> Callable[[ir.Spec], dict[str, float]]:
    def cost(spec: ir.Spec) -> dict[str, float]:
        from nasir.targets.blocks import count_macs, count_params
        from nasir.targets.network import Network

        net = Network(spec, plan)
        aux = net.auxiliary_head
        params = count_params(net) - (count_params(aux) if aux is not None else 0)
        return {"params": float(params), "macs": float(count_macs(net, plan.input))}

    return cost


def export_onnx(derived: ir.Spec, plan: Plan, path: Path, seed: int = 0) -> Path:
    from nasir.targets.export import to_onnx
    from nasir.targets.network import build

    model = build(derived, plan, seed=seed).eval()
    return to_onnx(model, torch.zeros(1, *plan.input), path)


def alpha_heatmap(spec: ir.Spec, alphas: Mapping[str, Sequence[Sequence[float]]], path: Path) -> Path:
    """softmax(alpha) per cell kind as a heatmap: one row per mixed edge (IR order), one column per op."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = [k for k in alphas if spec.cell(k) is not None]
    fig = Figure(figsize=(9, 1.2 + 0.32 * sum(len(alphas[k]) for k in kinds) + 0.8 * len(kinds)))
    FigureCanvasAgg(fig)
    heights = [max(len(alphas[k]), 1) for k in kinds]
    axes = fig.subplots(len(kinds), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, kind in zip(axes, kinds):
        cell = spec.cell(kind)
        edges = [e for e in cell.edges if e.alpha is not None]  # type: ignore[union-attr]
        soft = torch.tensor(alphas[kind], dtype=torch.float64).softmax(-1)
        im = ax.imshow(soft.numpy(), cmap="Blues", vmin=0.0, aspect="auto")
        ax.set_yticks(range(len(edges)), [f"{e.src} -> {e.dst}" for e in sorted(edges, key=lambda e: e.alpha)], fontsize=7)
        ops = cell.alpha_rows[0] if cell.alpha_rows else ()  # type: ignore[union-attr]
        ax.set_xticks(range(len(ops)), ops, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{kind}: softmax(alpha)", fontsize=9)
        for (i, j), v in zip(((i, j) for i in range(soft.shape[0]) for j in range(soft.shape[1])), soft.flatten().tolist()):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.6 * float(soft.max()) else "black")
        fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path


# ---- the library entry point ----------------------------------------------------------------------------
def search(spec_or_path: ir.Spec | str | Path, data: str = "digits", out: str | Path | None = None, *,
           epochs: int | None = None, batch_size: int | None = None, order: int | None = None,
           seed: int | None = None, select: str | None = None, device: str = "auto", resume: bool = False,
           overrides: Sequence[str] | Mapping[str, Any] | None = None, low_memory: bool = False,
           channels_last: bool | None = None, limit_batches: int | None = None, progress: bool = True,
           callback: Callable[[dict[str, Any]], None] | None = None,
           stop_after_steps: int | None = None, artifacts: bool = True) -> SearchResult:  # fmt: skip
    """Search a `.cell` space on `data` and derive an architecture; every file lands in `out`.

    `data`: `digits` (embedded), `synthetic[:N]`, `cifar10:PATH`, `folder:PATH`. Unset settings come
    from the spec's `search` block, then from the DARTS defaults. `limit_batches` caps the steps per
    epoch (and the evaluation batches) for quick runs. `callback(info)` runs after every step;
    `stop_after_steps` stops (with a checkpoint) once that many steps are done in all, as a signal would.
    `artifacts=False` skips derived.onnx and the PNGs.
    Raises DiagnosticError for bad input and `SearchInterrupted` when stopped early.
    """
    from nasir.compile import resolve

    spec, plan = resolve(spec_or_path, overrides)
    values = dict(overrides) if isinstance(overrides, Mapping) else _override_values(overrides)
    dev = resolve_device(device)
    data_mod.parse_data_spec(data)  # bad data specs fail before anything is built
    options = make_options(spec, data=data, order=order, epochs=epochs, batch_size=batch_size, seed=seed,
                           select=select, overrides=values, limit_batches=limit_batches,
                           channels_last=channels_last, low_memory=low_memory, device=dev)  # fmt: skip
    out_dir = Path(out) if out is not None else Path("runs") / Path(spec.file).stem
    runner = Search(spec, plan, options, out_dir, progress=progress, callback=callback,
                    stop_after_steps=stop_after_steps, source=spec.file, artifacts=artifacts)  # fmt: skip
    return runner.run(resume=resume)


def _override_values(overrides: Sequence[str] | str | None) -> dict[str, Any]:
    from nasir.macro import parse_overrides

    if overrides is None:
        return {}
    return parse_overrides([overrides] if isinstance(overrides, str) else list(overrides))[0]
