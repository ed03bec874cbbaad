"""The search job: supernet + data + DARTS steps per epoch, checkpoints, outputs (`nasir.search`).

Per step (docs/methods.md, DARTS; the reference's train_search.py order): an architecture step on a batch of
the architecture half, then a weight step on a batch of the weight half. The papers' methods plug into
that loop, combinable: the architecture step's rule (DARTS order 1 or 2, MiLeNAS), PC-DARTS' partial
channels and stretchable cells' topology variables (in the supernet), SDARTS' perturbation (the weight
step's `soft`), the selection rule and early stop (at each epoch's derivation), the Hessian diagnostic. The training set is split in
two halves (DARTS train_portion 0.5). Defaults are the reference's: weights SGD lr 0.025 cosine-annealed
to 0.001 over the epochs, momentum 0.9, weight decay 3e-4, gradient norm clipped at 5; alpha Adam lr 3e-4,
betas (0.5, 0.999), weight decay 1e-3; seed 2, first order; no warm-up (PC-DARTS: architecture steps
from epoch 16, docs/methods.md). The spec's `search { ... }` settings (method darts(order = 2), epochs,
batch_size, seed, select, lr, lr_min, momentum, weight_decay, arch_lr, arch_weight_decay, warmup, ...)
override those defaults, and the caller's arguments (the CLI's flags) override the spec.

The output directory gets
    derived.cell          the derived architecture (standalone: cells and network, no search block)
    genotype.txt          its DARTS Genotype string (or NAS-Bench-201 string), when it has that form
    alphas.json           the final architecture variables {cell kind: [[alpha per op] per mixed edge]},
                          rows in IR edge order, ops in the choice's order (`nasir draw --alphas` reads it)
    alphas/epoch_NNN.json the same after every epoch
    strengths.json        operation strength per alpha (OStr-DARTS Eq. 11), same layout; strengths/epoch_NNN.json
    betas.json, gammas.json  topology variables (one list per beta row) / PC-DARTS edge variables, where present
    metrics.jsonl         one JSON object per epoch: losses, accuracies, learning rate, seconds, derivation
    checkpoint.pt         the state after the last finished epoch (or the step a stop signal arrived at)
    derived.onnx          the derived network UNTRAINED (its seeded initialisation, for checking the export; train
                          it with `nasir train`), input `image`, output `logits`; the seed is in its metadata
                          ("nasir.seed"), which `nasir verify-export` reads
    provenance.json       what the search was made from (nasir/provenance.py): spec, overrides, seed, data
    derived.png           a drawing of the derived cells
    alphas.png            a heatmap of softmax(alpha) per cell kind

Resuming (`resume=True`) restores model, optimisers, scheduler, RNG states, the position in the epoch
and the partial epoch's sums; the data order is a function of (seed, epoch), so a resumed search ends
with the same alphas and derived.cell as one that never stopped. SIGINT/SIGTERM stop at the next step
boundary and save a checkpoint first (under torchrun every rank stops after the same step; a second
signal stops at once only in a single process: nasir.device.StopFlag). On CUDA (docs/gpu.md) the
architecture gradients run without TF32, and `deterministic` makes a resumed search end with the
alphas of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from nasir import device as dv
from nasir import finite, ir
from nasir import provenance as prov
from nasir.data import classification as data_mod
from nasir.diagnostics import Diagnostic, DiagnosticError, error_at
from nasir.io import atomic_write, atomic_write_with
from nasir.macro import Plan
from nasir.runtime.dist import init_distributed
from nasir.runtime.state import save_checkpoint
from nasir.search import smoothing
from nasir.search.architect import Architect, all_reduce_mean, buffers_kept, weight_step
from nasir.search.milenas import three_way_split
from nasir.search.pcdarts import normalized_scores
from nasir.search.strength import EarlyStop, StrengthMeter, architecture_key, ostr_star, removal_importance
from nasir.search.supernet import build_supernet, prepare
from nasir.search.topology import most_likely_edges, passive_aggressive, removed_nodes

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 3  # 3: the options gained warmup and drop_none; early stop keeps an order-free key
METHODS = ("darts", "milenas", "pcdarts")
SELECTIONS = ("magnitude", "strength", "strength_star", "naive")
SMOOTHINGS = ("none", "rs", "adv")
PCDARTS_WARMUP = 15  # PC-DARTS' train_search.py: architecture steps from epoch 15 (0-based) on (docs/methods.md)
# Optimiser settings of the search block: spec name -> (Options field, test, what it must be).
_NUMBERS: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "lr": ("w_lr", lambda v: v > 0, "a positive number (the weight learning rate)"),
    "lr_min": ("w_lr_min", lambda v: v >= 0, "a number >= 0 (the cosine schedule's floor)"),
    "momentum": ("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": ("w_weight_decay", lambda v: v >= 0, "a number >= 0"),
    "arch_lr": ("a_lr", lambda v: v > 0, "a positive number (the architecture learning rate)"),
    "arch_weight_decay": ("a_weight_decay", lambda v: v >= 0, "a number >= 0"),
}


@attrs.frozen
class Options:
    """Everything that determines a search's result (and, below the line, what does not).

    method        darts (order 1 or 2) | milenas (mixed level, Eq. 18; `mixed_level` is lambda') |
                  pcdarts (partial channels, K = `partial_channels`, and edge normalisation)
    select        magnitude | strength | strength_star | naive (OStr-DARTS Sec. III); the strength is
                  averaged over the last `strength_window` architecture steps (None: one epoch's)
    smooth        none | rs | adv (SDARTS); radius `eps_start` -> `eps_end` over the epochs, PGD `adv_steps`
    early_stop    C of OStr-DARTS' Algorithm 1 (None: run every epoch)
    hessian       record the largest eigenvalue of the Hessian of L_val w.r.t. alpha every epoch
    pa_lambda     weight of the passive-aggressive regulariser on the topology variables (Eq. 15)
    warmup        epochs of weight steps only before the first architecture step (None: 15 under
                  pcdarts, the PC-DARTS authors' recipe, else 0; docs/methods.md)
    drop_none     derivation: None drops `none` from the argmax where a cell says `keep k` (DARTS) and
                  takes the full argmax elsewhere (NAS-Bench-201); True / False force one rule
    w_lr, w_lr_min, momentum, w_weight_decay   the weight optimiser (spec: lr, lr_min, momentum, weight_decay)
    a_lr, a_weight_decay                       the architecture optimiser (spec: arch_lr, arch_weight_decay)
    fp32_arch_grads  architecture gradients without TF32 (on by default; named in metrics.jsonl)
    deterministic    deterministic CUDA algorithms: a resumed search ends with the same alphas (docs/gpu.md)
    """

    method: str = "darts"
    order: int = 1
    partial_channels: int = 1
    mixed_level: float = 1.0
    select: str = "magnitude"
    strength_window: int | None = None
    smooth: str = "none"
    eps_start: float = 0.03
    eps_end: float = 0.3
    adv_steps: int = 7
    early_stop: int | None = None
    hessian: bool = False
    pa_lambda: float = 10.0
    warmup: int | None = None
    drop_none: bool | None = None
    epochs: int = 50
    batch_size: int = 64
    seed: int = 2
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
    layout: str = "auto"  # what the user asked for: auto | channels_last | contiguous
    fuse: bool = False  # the fused supernet (docs/performance.md): the same values up to float rounding
    overrides: tuple[tuple[str, Any], ...] = ()
    # ---- not part of the result (a resumed search may change them)
    low_memory: bool = attrs.field(default=False, eq=False)
    device: str = attrs.field(default="cpu", eq=False)
    channels_last: bool = attrs.field(default=False, eq=False)  # the layout used: `layout`, auto following the device
    fp32_arch_grads: bool = attrs.field(default=True, eq=False)  # TF32 off in the architecture step (docs/gpu.md)
    deterministic: bool = attrs.field(default=False, eq=False)  # nasir.device's deterministic mode (docs/gpu.md)

    @property
    def warmup_epochs(self) -> int:
        if self.warmup is not None:
            return self.warmup
        return PCDARTS_WARMUP if self.method == "pcdarts" else 0

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


def _args(st: ir.Setting, allowed: Mapping[str, tuple[str, Callable[[Any], bool], str]]) -> dict[str, Any]:
    """The keyword arguments of a setting's call, each checked: {name: (option, test, what it must be)}."""
    v = st.value
    out: dict[str, Any] = {}
    if not isinstance(v, ir.Call):
        return out
    for a in v.args:
        if a.name not in allowed:
            takes = ", ".join(f"'{k}'" for k in allowed) or "no arguments"
            raise error_at(a.span or st.span, f"{v.name}() takes {takes}; got '{a.name or 'a positional argument'}'")
        option, test, what = allowed[a.name]
        value = a.value.value if isinstance(a.value, ir.Num | ir.Bool) else None
        if value is None or isinstance(value, bool) or not test(value):
            raise error_at(a.value.span or a.span or st.span, f"'{a.name}' must be {what}")
        out[option] = value
    return out


_ORDER = ("order", lambda v: v in (1, 2), "1 or 2 (first- or second-order DARTS)")
_POSITIVE_INT = (lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1")
_METHOD_ARGS: dict[str, dict[str, tuple[str, Callable[[Any], bool], str]]] = {
    "darts": {"order": _ORDER},
    "milenas": {"lam": ("mixed_level", lambda v: v >= 0, "a number >= 0 (lambda' of Eq. 18)")},
    "pcdarts": {"k": ("partial_channels", *_POSITIVE_INT), "order": _ORDER},
}
_SELECT_ARGS = {"window": ("strength_window", *_POSITIVE_INT)}
_SMOOTH_ARGS = {
    "eps": ("eps_end", lambda v: v > 0, "a positive number (the final radius)"),
    "steps": ("adv_steps", *_POSITIVE_INT),
}


def spec_settings(spec: ir.Spec) -> dict[str, Any]:
    """The `search { ... }` block as search defaults; settings this runtime cannot honour are errors."""
    out: dict[str, Any] = {}
    if spec.search is None:
        return out
    errors: list[Diagnostic] = []  # every bad setting of the file in one report
    for st in spec.search.settings:
        try:
            _setting(st, out)
        except DiagnosticError as e:
            errors.extend(e.diagnostics)
    if errors:
        raise DiagnosticError(errors)
    return out


def _setting(st: ir.Setting, out: dict[str, Any]) -> None:
    """One setting of the `search` block into `out`; raises DiagnosticError when it is bad."""
    v = st.value
    name = v.name if isinstance(v, ir.Call | ir.Var) else None
    if st.name == "method":
        if name not in METHODS:
            raise error_at(st.span, f"search method '{name}' is not supported by the search runtime", "use darts(order = 1 | 2), milenas or pcdarts(k = 4)")
        out["method"] = name
        if name == "pcdarts":
            out["partial_channels"] = 4
        out.update(_args(st, _METHOD_ARGS[name]))
    elif st.name == "select":
        if name not in SELECTIONS:
            raise error_at(st.span, f"selection '{name}' is not supported by the search runtime", "use " + ", ".join(SELECTIONS))
        out["select"] = name
        out.update(_args(st, _SELECT_ARGS if name in ("strength", "strength_star") else {}))
    elif st.name == "smooth":
        if name not in SMOOTHINGS:
            raise error_at(st.span, f"smoothing '{name}' is not supported by the search runtime", "use none, rs or adv")
        out["smooth"] = name
        out.update(_args(st, {k: a for k, a in _SMOOTH_ARGS.items() if name == "adv" or k != "steps"} if name != "none" else {}))
    elif st.name in ("epochs", "batch_size", "early_stop"):
        out[st.name] = _num(st, st.name, 1)
    elif st.name in ("seed", "warmup"):
        out[st.name] = _num(st, st.name, 0)
    elif st.name in _NUMBERS:
        option, test, what = _NUMBERS[st.name]
        if not isinstance(v, ir.Num) or isinstance(v.value, bool) or not test(v.value):
            raise error_at(st.span, f"'{st.name}' must be {what}", f"for example '{st.name} {_EXAMPLES[st.name]}'")
        out[option] = float(v.value)
    elif st.name == "hessian":
        if not isinstance(v, ir.Bool):
            raise error_at(st.span, "'hessian' must be true or false", "for example 'hessian true'")
        out["hessian"] = bool(v.value)
    else:
        raise error_at(st.span, f"search setting '{st.name}' is not supported by the search runtime yet")


_EXAMPLES = {"lr": "0.025", "lr_min": "0.001", "momentum": "0.9", "weight_decay": "3e-4", "arch_lr": "3e-4",
             "arch_weight_decay": "1e-3"}  # fmt: skip


def _flag_error(message: str, hint: str | None = None) -> DiagnosticError:
    return DiagnosticError([Diagnostic(message, None, hint)])


FLAGS = ("method", "order", "partial_channels", "select", "strength_window", "smooth", "adv_steps", "early_stop",
         "hessian", "epochs", "batch_size", "seed", "warmup", "w_lr", "w_lr_min", "momentum", "w_weight_decay",
         "a_lr", "a_weight_decay")  # fmt: skip


def make_options(spec: ir.Spec, *, data: str, overrides: Mapping[str, Any], limit_batches: int | None,
                 channels_last: bool | None, low_memory: bool, device: torch.device, fp32_arch_grads: bool = True,
                 deterministic: bool = False, fuse: bool = False, **flags: Any) -> Options:  # fmt: skip
    """The spec's `search` block over the defaults, the caller's `flags` (None: unset; names in FLAGS) over both.

    `channels_last` None is the device's default layout: it is derived, not set, so a search saved on
    one device resumes on another (Search.load compares `layout`, what the user set)."""
    unknown = set(flags) - set(FLAGS)
    if unknown:
        raise TypeError(f"unknown search settings: {', '.join(sorted(unknown))}")
    s = spec_settings(spec)
    if flags.get("method") == "pcdarts" and s.get("method") != "pcdarts":
        s["partial_channels"] = 4
    for k, v in flags.items():
        if v is not None:
            s[k] = v
    method = s.get("method", "darts")
    if method not in METHODS:
        raise _flag_error(f"--method must be one of {', '.join(METHODS)}, got '{method}'")
    if s.get("order", 1) not in (1, 2):
        raise _flag_error(f"--order must be 1 or 2, got {s['order']}")
    for k, low in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("partial_channels", 1), ("strength_window", 1),
                   ("adv_steps", 1), ("early_stop", 1), ("warmup", 0)):  # fmt: skip
        if k in s and s[k] is not None and (not isinstance(s[k], int) or isinstance(s[k], bool) or s[k] < low):
            raise _flag_error(f"--{k.replace('_', '-')} must be a whole number >= {low}, got {s[k]}")
    for name, (option, test, what) in _NUMBERS.items():
        # NaN fails every test, but inf passes `> 0`: a setting must also be finite (issue 14, item 2)
        if option in s and (isinstance(s[option], bool) or not isinstance(s[option], int | float) or not test(s[option])
                            or not math.isfinite(s[option])):  # fmt: skip
            raise _flag_error(f"--{name.replace('_', '-')} must be {what}, got {s[option]}")
        if option in s:
            s[option] = float(s[option])
    if s.get("select", "magnitude") not in SELECTIONS:
        raise _flag_error(f"--select must be one of {', '.join(x.replace('_', '-') for x in SELECTIONS)}, got '{s['select']}'")
    if s.get("smooth", "none") not in SMOOTHINGS:
        raise _flag_error(f"--smooth must be one of {', '.join(SMOOTHINGS)}, got '{s['smooth']}'")
    if method == "milenas" and s.get("order", 1) != 1:
        raise _flag_error("--order 2 does not apply to --method milenas: MiLeNAS is a first-order method")
    if method != "pcdarts" and s.get("partial_channels", 1) != 1:
        raise _flag_error("--pc-k (partial channels) applies to --method pcdarts only")
    if method == "pcdarts" and any(c.topology is not None for c in spec.cells):
        raise _flag_error("--method pcdarts: PC-DARTS' edge normalisation and topology variables both decide edges; use one of them",
                          "drop the cell's 'topology' line or choose --method darts or milenas")  # fmt: skip
    if limit_batches is not None and limit_batches < 1:
        raise _flag_error(f"--limit-batches must be at least 1, got {limit_batches}")
    layout = {None: "auto", True: "channels_last", False: "contiguous"}[channels_last]
    if channels_last is None:
        channels_last = device.type == "cpu"  # docs/methods.md (DARTS, supernet conventions): NHWC runs the CPU supernet in ~0.63 x the time
    return Options(data=data, overrides=tuple(sorted(overrides.items())), limit_batches=limit_batches, layout=layout, fuse=fuse,
                   channels_last=channels_last, low_memory=low_memory, device=str(device), fp32_arch_grads=fp32_arch_grads,
                   deterministic=deterministic, **s)  # fmt: skip


# ---- the job ------------------------------------------------------------------------------------------
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process instead of returning it to the OS after every step.

    A search step frees and reallocates its activations (GiBs); by default glibc unmaps large blocks
    and trims the heap, and the next step faults the pages back in, zero-filled. On the shared VMs we
    measure on, that first touch costs more than the arithmetic (see benchmarks/search_step.py). The
    peak resident set is unchanged; memory is not given back until the process ends.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_trim_threshold, 2**30) == 1
    return libc.mallopt(m_mmap_threshold, 32 * 2**20) == 1 and ok  # 32 MiB: glibc's largest mmap threshold


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
        self.three_way = options.method == "milenas" and any(c.beta_rows for c in self.spec.cells)
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
        self.stop = dv.StopFlag()
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
        order = "milenas" if options.method == "milenas" else options.order
        # r(beta) is defined for output topologies only (stretchable-cells Eq. 14-15); under `topology
        # inputs k` it is 0 identically, a constant with no gradient (issue 14, item 15: it crashed every
        # such search), so no regularizer then.
        outputs_kinds = [k for k in self.model.betas if getattr(self.model.cells[k].topology, "kind", None) == "outputs"]
        regularizer = self._passive_aggressive if outputs_kinds and options.pa_lambda else None
        self.architect = Architect(self.model, self.w_opt, order=order, lr=options.a_lr, betas=options.a_betas,
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
            "spec": _canonical(self.spec),
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
        # fields that are part of the result; a field the checkpoint predates counts as its default.
        fields = {f.name: f for f in attrs.fields(Options)}
        default = {k: list(f.default) if isinstance(f.default, tuple) else f.default for k, f in fields.items()}
        differ = [k for k, v in now.items() if fields[k].eq and saved.get(k, default[k]) != v]
        if differ:
            listed = ", ".join(f"{k} ({saved.get(k, default[k])!r} then, {now[k]!r} now)" for k in differ)
            raise _flag_error(f"--resume: the search in '{self.out}' ran with other settings: {listed}",
                              "resume with the same flags, or start a new search in another --out")  # fmt: skip
        if state["spec"] != _canonical(self.spec):
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

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> SearchResult:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load()
        elif (self.out / CHECKPOINT).exists():
            raise _flag_error(f"'{self.out}' already holds a search (checkpoint.pt)",
                              "continue it with --resume, or choose another --out")  # fmt: skip
        if self.dist.main:
            prov.write(self.out, self.provenance)
        total = self.opt.epochs * self.steps
        bar = None
        if self.progress and self.dist.main:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.epoch * self.steps + self.step, file=sys.stderr, unit="step",
                       dynamic_ncols=True, leave=False)  # fmt: skip
        benchmark = torch.backends.cudnn.benchmark
        try:
            with self.stop.installed(), dv.deterministic_mode(self.opt.deterministic):
                dv.fixed_shapes(self.device)  # cuDNN autotuning on CUDA unless deterministic: every step has one shape
                while self.epoch < self.opt.epochs and not self.stopped_early:
                    self._epoch(bar)
        finally:
            torch.backends.cudnn.benchmark = benchmark
            if bar is not None:
                bar.close()
        return self.finish()

    def _epoch(self, bar) -> None:
        model, opt = self.model, self.opt
        orders = [data_mod.epoch_order(idx, opt.seed, self.epoch, stream) for stream, idx in enumerate(self.splits)]
        lr = self.sched.get_last_lr()[0]
        eps = smoothing.epsilon(self.epoch, opt.epochs, opt.eps_start, opt.eps_end) if opt.smooth != "none" else None
        model.train()
        sums: dict[str, Any] = self.partial  # tensors on the device during the epoch: no host sync per step
        dv.reset_peak_memory(self.device)
        if bar is not None:
            bar.set_description(f"epoch {self.epoch + 1}/{opt.epochs}")
        while self.step < self.steps:
            t0 = time.perf_counter()
            train = self._batch(orders[0], self.step, 0)
            valid = self._batch(orders[1], self.step, 1)
            valid_beta = self._batch(orders[2], self.step, 2) if self.three_way else None
            # 1. architecture step on the architecture data (after the warm-up), 2. weight step (docs/methods.md, DARTS).
            a_loss = None
            if self.epoch >= opt.warmup_epochs:
                with dv.fp32_arch_grads(opt.fp32_arch_grads):  # TF32 off: the finite difference is sensitive (docs/gpu.md)
                    a_loss, _ = self.architect.step(train, valid, xi=lr, valid_beta=valid_beta)
                kinds = list(model.alphas)
                self.meter.record_grads(dict(zip(kinds, self.architect.last_grads[: len(kinds)])))
            soft = self._smoothed(train, eps) if eps is not None else None
            loss, logits = weight_step(model, self.w_opt, train, clip=opt.grad_clip, soft=soft, reduce=self.reduce)
            at = self.epoch * self.steps + self.step
            self.loss_watch.observe(loss, at)
            if a_loss is not None:
                self.arch_watch.observe(a_loss, at)
            if self.device.type == "cpu":
                self.check_finite()  # nothing to wait for on the CPU: stop at once
            n = train[1].numel()
            sums["train_loss"] += loss.double() * n
            sums["train_correct"] += (logits.argmax(1) == train[1]).sum().double()
            if a_loss is not None:
                sums["arch_loss"] += a_loss.double() * n
                sums["arch_seen"] += n
            sums["seen"] += n
            sums["seconds"] += time.perf_counter() - t0  # on CUDA the time to queue the step; the epoch's total is exact
            self.step += 1
            done = self.epoch * self.steps + self.step
            if bar is not None:
                bar.update(1)
                if self.step % 50 == 1 or self.step == self.steps:  # reading the numbers waits for the GPU
                    if self.dist.world == 1:  # (under torchrun every rank checks at the same points)
                        self.check_finite()
                    bar.set_postfix(loss=f"{float(loss):.3f}", arch="warm-up" if a_loss is None else f"{float(a_loss):.3f}",
                                    acc=f"{float(sums['train_correct']) / sums['seen']:.3f}")  # fmt: skip
            if self.callback is not None:  # a callback reads the losses: that waits for the GPU
                self.callback({"epoch": self.epoch + 1, "step": self.step, "global_step": done, "loss": float(loss),
                               "arch_loss": None if a_loss is None else float(a_loss)})  # fmt: skip
            if self.stop.agreed() or (self.stop_after_steps is not None and done >= self.stop_after_steps):
                if self.step < self.steps:
                    self.check_finite()
                    self.save()
                    raise SearchInterrupted(self.out, self.epoch, self.step)
                self.stop.requested = True  # the epoch is complete: finish it, then stop
        t0 = time.perf_counter()
        valid_loss, valid_acc = self.evaluate(self.a_idx)
        eval_s = time.perf_counter() - t0
        # After the evaluation (its one host read ends the epoch's queue), before anything is written.
        self.check_finite()
        if not finite.state_is_finite(model.state_dict()):
            raise self._diverged(f"the supernet's weights or architecture variables are not finite after epoch {self.epoch + 1}")
        self.sched.step()
        sums = {k: float(v) for k, v in sums.items()}
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
        record["genotype"] = _genotype(derived)
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
        if self.stop.requested and self.epoch < opt.epochs and not self.stopped_early:
            raise SearchInterrupted(self.out, self.epoch, 0)

    def _generator(self, step: int, stream: int) -> torch.Generator:
        seed = data_mod.batch_generator(self.opt.seed, self.epoch, step, stream).initial_seed()
        return torch.Generator(device=self.device).manual_seed(seed)

    def _smoothed(self, batch: tuple[torch.Tensor, torch.Tensor], eps: float) -> dict[str, torch.Tensor]:
        """softmax(alpha) + delta for this weight step (SDARTS-RS or -ADV, search/smoothing.py)."""
        model = self.model
        with torch.no_grad():
            soft = {k: v.detach() for k, v in model.softmax_weights().items()}
        g = self._generator(self.step, 3)
        if self.opt.smooth == "rs":
            return {k: smoothing.random_smoothing(v, eps, g) for k, v in soft.items()}
        x, y = batch

        def loss(weights):
            return F.cross_entropy(model(x, soft=weights), y)

        # The authors attack in eval mode (docs/methods.md, "SDARTS"); the weight step runs in train mode.
        model.eval()
        try:
            with buffers_kept(model):
                return smoothing.adversarial(soft, loss, eps, steps=self.opt.adv_steps, generator=g, reduce=self.reduce)  # type: ignore[return-value]
        finally:
            model.train()

    def _fixed_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `batch_size` samples of the architecture data, unaugmented: the diagnostics' batch."""
        x, y = self.data.batch(self.a_idx[: self.opt.batch_size], train=False)
        return dv.to_device(x, self.device), dv.to_device(y, self.device)

    def hessian_eigenvalue(self) -> smoothing.Eigenvalue:
        """The largest eigenvalue of the Hessian of L_val w.r.t. alpha (SDARTS' diagnostic), train mode
        as in the search, on the fixed batch; BN statistics untouched; with a convergence flag."""
        x, y = self._fixed_batch()
        model = self.model
        g = torch.Generator().manual_seed(self.opt.seed)
        with buffers_kept(model):
            return smoothing.hessian_max_eigenvalue(lambda: F.cross_entropy(model(x), y), model.alpha_parameters(), generator=g)

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
        """The selection rule's score per (alpha row, candidate), per cell kind (passes/derive.py ranks them).

        magnitude: softmax(alpha) (DARTS), times the edge weights under PC-DARTS; strength: operation
        strength (OStr-DARTS Eq. 11); strength_star: OStr* (Eq. 18); naive: the loss increase when
        the op is removed (Fig. 4b). Before any architecture step the strengths fall back to magnitude.
        """
        model, select = self.model, self.opt.select
        with torch.no_grad():
            soft = {k: F.softmax(a.detach().double(), dim=-1) for k, a in model.alphas.items()}
            strength = {k: v.double() for k, v in self.meter.strength().items()}
            if select == "strength" and strength:
                return {k: v.tolist() for k, v in strength.items()}
            if select == "strength_star" and strength:
                return {k: ostr_star(v, model.alphas[k].detach().double()).tolist() for k, v in strength.items()}
            if select == "naive":
                return {k: v.tolist() for k, v in self.removal_scores().items()}
            return {k: (normalized_scores(model.cells[k], v, model.gammas[k].detach().double()) if k in model.gammas else v).tolist()
                    for k, v in soft.items()}  # fmt: skip

    def removal_scores(self) -> dict[str, torch.Tensor]:
        """The naive criterion: L(supernet without op o on edge e) - L(supernet) on the fixed batch, train mode."""
        model = self.model
        x, y = self._fixed_batch()
        shapes = {k: tuple(a.shape) for k, a in model.alphas.items()}

        def set_mask(masks):
            model.op_mask = None if all(bool((m == 1).all()) for m in masks.values()) else dict(masks)

        with buffers_kept(model):
            return removal_importance(lambda: F.cross_entropy(model(x), y), set_mask, shapes)  # type: ignore[arg-type]

    def derive(self) -> ir.Spec:
        """Selection by the chosen rule (`scores`) under the spec's limits and budgets (passes/derive.py);
        stretchable cells keep the edges of their most likely codes (search/topology.py)."""
        from nasir.passes.derive import Derive

        at = self.epoch * self.steps + self.step  # steps done so far
        if self._derived is not None and self._derived[0] == at:  # nothing changed since (finish after the last epoch)
            return self._derived[1]
        budgets = self.spec.search.budgets if self.spec.search else ()
        m = self.model
        keep = {k: most_likely_edges(m.cells[k], list(rows)) for k, rows in m.betas.items()}
        remove = {k: removed_nodes(m.cells[k], list(rows)) for k, rows in m.betas.items()}
        derived = Derive(self.scores(), keep_edges=keep, remove_nodes=remove, drop_none=self.opt.drop_none,
                         cost=_cost_fn(self.plan) if budgets else None).run(self.spec).spec  # fmt: skip
        self._derived = (at, derived)
        return derived

    def _write_epoch(self, record: dict[str, Any]) -> None:
        if not self.dist.main:
            return
        for name, values in self._variables().items():
            atomic_write(self.out / name / f"epoch_{record['epoch']:03d}.json", json.dumps(values) + "\n")
            atomic_write(self.out / f"{name}.json", json.dumps(values) + "\n")
        atomic_write(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))

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
        derived = self.derive()
        out = self.out
        files: dict[str, Path] = {}
        notes = list(self.notes)
        text = derived_text(derived, self.source, dict(self.opt.overrides))
        if not self.dist.main:  # rank 0 writes the files
            return SearchResult(out, derived, text, _genotype(derived), self.model.alpha_values(), list(self.history), files, tuple(notes))
        atomic_write(out / "derived.cell", text)
        files["derived.cell"] = out / "derived.cell"
        genotype = _genotype(derived)
        if genotype is not None:
            atomic_write(out / "genotype.txt", genotype + "\n")
            files["genotype.txt"] = out / "genotype.txt"
        alphas = self.model.alpha_values()
        for name, values in self._variables().items():
            atomic_write(out / f"{name}.json", json.dumps(values) + "\n")
            files[f"{name}.json"] = out / f"{name}.json"
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
    # Issue 14, item 6: the file is the derived network's seeded initialisation, not trained weights;
    # it says so, and records the seed (nasir verify-export reads "nasir.seed").
    meta = {"nasir.seed": str(seed), "nasir.weights": "untrained: the derived network's seeded initialisation (train it with nasir train)"}
    return to_onnx(model, torch.zeros(1, *plan.input), path, metadata=meta)


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
           seed: int | None = None, select: str | None = None, method: str | None = None,
           partial_channels: int | None = None, smooth: str | None = None, adv_steps: int | None = None,
           early_stop: int | None = None, hessian: bool | None = None, strength_window: int | None = None,
           warmup: int | None = None, w_lr: float | None = None, w_lr_min: float | None = None,
           momentum: float | None = None, w_weight_decay: float | None = None, a_lr: float | None = None,
           a_weight_decay: float | None = None, device: str = "auto", resume: bool = False,
           overrides: Sequence[str] | Mapping[str, Any] | None = None, low_memory: bool = False,
           channels_last: bool | None = None, limit_batches: int | None = None, progress: bool = True,
           callback: Callable[[dict[str, Any]], None] | None = None,
           stop_after_steps: int | None = None, artifacts: bool = True, fp32_arch_grads: bool = True,
           deterministic: bool = False, fuse: bool = False) -> SearchResult:  # fmt: skip
    """Search a `.cell` space on `data` and derive an architecture; every file lands in `out`.

    `data`: `digits` (embedded), `synthetic[:N]`, `cifar10:PATH`, `folder:PATH`. Unset settings come
    from the spec's `search` block, then from the DARTS defaults; `Options` says what each one does
    (method darts|milenas|pcdarts, select magnitude|strength|strength_star|naive, smooth none|rs|adv,
    early_stop C, hessian, warmup, the optimisers' w_lr, w_lr_min, momentum, w_weight_decay, a_lr,
    a_weight_decay). `limit_batches` caps the steps per
    epoch (and the evaluation batches) for quick runs. `callback(info)` runs after every step;
    `stop_after_steps` stops (with a checkpoint) once that many steps are done in all, as a signal would.
    `artifacts=False` skips derived.onnx and the PNGs. `device`: auto | cpu | cuda | cuda:N (under
    torchrun, a CUDA run takes LOCAL_RANK's GPU; nasir.device.select_device). `fp32_arch_grads`: the
    architecture gradients without TF32; `deterministic`: deterministic CUDA algorithms, so a resumed
    search ends with the alphas of one that never stopped (docs/gpu.md). `fuse`: the fused supernet
    (passes/fuse.py; faster, the same values up to float rounding, docs/performance.md).
    Raises DiagnosticError for bad input and `SearchInterrupted` when stopped early.
    """
    from nasir.compile import resolve

    spec, plan = resolve(spec_or_path, overrides)
    values = dict(overrides) if isinstance(overrides, Mapping) else _override_values(overrides)
    dev = dv.select_device(device)
    data_mod.parse_data_spec(data)  # bad data specs fail before anything is built
    options = make_options(spec, data=data, overrides=values, limit_batches=limit_batches, channels_last=channels_last,
                           fp32_arch_grads=fp32_arch_grads, deterministic=deterministic, fuse=fuse,
                           low_memory=low_memory, device=dev, order=order, epochs=epochs, batch_size=batch_size,
                           seed=seed, select=select, method=method, partial_channels=partial_channels, smooth=smooth,
                           adv_steps=adv_steps, early_stop=early_stop, hessian=hessian,
                           strength_window=strength_window, warmup=warmup, w_lr=w_lr, w_lr_min=w_lr_min,
                           momentum=momentum, w_weight_decay=w_weight_decay, a_lr=a_lr,
                           a_weight_decay=a_weight_decay)  # fmt: skip
    out_dir = Path(out) if out is not None else Path("runs") / Path(spec.file).stem
    claim_out(out_dir, resume)  # before the data is read and the supernet built (issue 14, items 9, 10, 16)
    check_space(spec, plan, options)
    runner = Search(spec, plan, options, out_dir, progress=progress, callback=callback,
                    stop_after_steps=stop_after_steps, source=spec.file, artifacts=artifacts)  # fmt: skip
    return runner.run(resume=resume)


def claim_out(out: Path, resume: bool) -> None:
    """The run directory, checked before any work: a directory nasir can create and write (not a file,
    not under one), holding no other search unless `resume`. Temporary files of an atomic write that
    a kill interrupted (`.checkpoint.pt.*.tmp`, each a whole supernet) are removed."""
    from nasir.io import remove_stale_temporaries, writable_dir

    writable_dir(out, "search")
    if not resume and (out / CHECKPOINT).exists():
        raise _flag_error(f"'{out}' already holds a search (checkpoint.pt)", "continue it with --resume, or choose another --out")
    remove_stale_temporaries(out)


def check_space(spec: ir.Spec, plan: Plan, options: Options) -> None:
    """Failures the first step would meet, reported before it (issue 14, item 9); the spec-level ones
    (`nasir.verify.search_space_problems`) are also reported by `nasir check`. An unmeetable budget
    needs the network's cost, so it is checked here: the cheapest derivation the limits allow
    (every edge's best parameter-free candidate) must fit."""
    from nasir.verify import search_space_problems

    problems = search_space_problems(spec, plan)
    if problems:
        raise DiagnosticError(problems)
    budgets = spec.search.budgets if spec.search else ()
    if budgets and not any(c.topology is not None for c in spec.cells):  # (topology cells derive by their codes)
        from nasir import ops as ops_mod
        from nasir.passes.derive import Derive

        searched = prepare(spec)
        cheap = {c.name: [[1.0 if ops_mod.REGISTRY[o].parameter_free and not ops_mod.REGISTRY[o].is_zero else 0.0 for o in row]
                          for row in c.alpha_rows] for c in searched.cells if c.alpha_rows}  # fmt: skip
        Derive(cheap, drop_none=options.drop_none, cost=_cost_fn(plan)).run(searched)  # raises "budget cannot be met ..."


def _override_values(overrides: Sequence[str] | str | None) -> dict[str, Any]:
    from nasir.macro import parse_overrides

    if overrides is None:
        return {}
    return parse_overrides([overrides] if isinstance(overrides, str) else list(overrides))[0]
