"""The recurrent search job: DARTS on the recurrent supernet, truncated BPTT, outputs and resume (docs/recurrent.md).

Per step, as the authors' search (train_search.py of their rnn code): a sequence length L is drawn (bptt,
or bptt / 2 with probability 0.05, then normal(., 5), at least 5, at most bptt + 20); an architecture step
on the next validation window (length bptt, wrapping around the validation stream) with its own carried
state; then a weight step on the next L training words with the learning rate scaled by L / bptt,
gradient norm clipped, TAR added. Hidden states are carried across batches (detached) and reset at every
epoch start. After each epoch: validation perplexity, the derived cell (k = 1) by magnitude (softmax alpha)
or by operation strength (OStr-DARTS Eq. 11, mean |dL/dalpha| over the last architecture steps).

Outputs in `out`: derived.cell, genotype.txt, alphas.json (+ alphas/epoch_NNN.json), strengths.json,
metrics.jsonl, checkpoint.pt, alphas.png, derived.png, derived.onnx. The sequence lengths come from a generator seeded
by (seed, epoch) and the checkpoint holds every state (weights, optimisers, RNG, position, hidden states),
so a resumed search ends with the same alphas and derived cell as one that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from nasir import device as dv
from nasir import finite, ir
from nasir import provenance as prov
from nasir.io import atomic_write, atomic_write_with
from nasir.rnn import corpus as corpus_mod
from nasir.rnn.architect import RecurrentArchitect, evaluate, weight_step
from nasir.rnn.cell import SearchLM, derive
from nasir.rnn.space import Genotype, LanguageModel, SearchSpace
from nasir.rnn.text import derived_text
from nasir.search.strength import StrengthMeter

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 2  # 2: RNG states as nasir/device.py saves them (CPU, CUDA, numpy, Python)
SELECTIONS = ("magnitude", "strength")


@attrs.frozen
class RecurrentOptions:
    """What determines a recurrent search's result; defaults are the authors' search settings (docs/recurrent.md)."""

    order: int = 1
    select: str = "magnitude"
    strength_window: int | None = None  # None: one epoch's architecture steps
    epochs: int = 50
    batch_size: int = 256
    eval_batch_size: int = 10
    bptt: int = 35
    seed: int = 3
    lr: float = 20.0
    weight_decay: float = 5e-7
    clip: float = 0.25
    a_lr: float = 3e-3
    a_weight_decay: float = 1e-3
    ar: float = 0.0
    tar: float = 1e-3
    warmup: int = 0
    data: str = "embedded"
    limit_batches: int | None = None

    def __attrs_post_init__(self):
        if self.order not in (1, 2):
            raise ValueError("order must be 1 or 2")
        if self.select not in SELECTIONS:
            raise ValueError(f"select must be one of {', '.join(SELECTIONS)} for a recurrent search")
        for name in ("epochs", "batch_size", "eval_batch_size", "bptt"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        # NaN is not `< 0`: every float setting must be a finite number in its range (issue 14, item 2)
        errors = finite.check_settings(attrs.asdict(self), positive=("lr", "a_lr", "clip"),
                                       nonnegative=("weight_decay", "a_weight_decay", "ar", "tar"))  # fmt: skip
        if errors:
            raise ValueError("; ".join(errors))


class CheckpointMismatchError(ValueError):
    """checkpoint.pt in the output directory belongs to another run (settings, or number of processes)."""


class RecurrentInterrupted(KeyboardInterrupt):
    def __init__(self, out: Path, epoch: int, step: int):
        super().__init__(f"search interrupted at epoch {epoch + 1}, step {step}; continue with resume ({out})")
        self.out, self.epoch, self.step = out, epoch, step


@attrs.frozen
class RecurrentResult:
    out: Path
    genotype: Genotype
    derived_text: str
    alphas: list[list[float]]
    metrics: list[dict[str, Any]]
    files: dict[str, Path]


def sequence_length(gen: torch.Generator, bptt: int) -> int:
    """The authors' random BPTT length: bptt (p 0.95) or bptt / 2, then normal(., 5), clamped to [5, bptt + 20]."""
    base = bptt if float(torch.rand((), generator=gen)) < 0.95 else bptt / 2
    length = int(base + 5 * float(torch.randn((), generator=gen)))
    return max(5, min(length, bptt + 20))


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self):
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


class RecurrentSearch:
    def __init__(self, space: SearchSpace, lm: LanguageModel, options: RecurrentOptions, out: Path, *,
                 corpus: corpus_mod.Corpus | None = None, cell_name: str = "rnn", network_name: str = "ptb",
                 source: str = "", progress: bool = False, stop_after_steps: int | None = None,
                 artifacts: bool = True, callback: Callable[[dict[str, Any]], None] | None = None,
                 render: Callable[[Genotype, LanguageModel, str], str] | None = None, cell: ir.Cell | None = None,
                 device: str | torch.device = "auto", provenance: dict[str, Any] | None = None):  # fmt: skip
        self.space, self.opt, self.out = space, options, Path(out)
        # what the search is made from (nasir/provenance.py): in provenance.json and checkpoint.pt, compared on resume
        self.provenance = provenance
        self.loss_watch, self.arch_watch = finite.FiniteWatch(), finite.FiniteWatch()  # nasir/finite.py
        self.device = dv.select_device(device)  # auto: CUDA when present
        self.cell = cell  # the search cell's IR (the .cell file's), derived by passes/derive.py; None: the space's
        self.corpus = corpus if corpus is not None else corpus_mod.load(options.data)
        self.lm = attrs.evolve(lm, tokens=self.corpus.tokens)  # the vocabulary is the data's
        self.cell_name, self.network_name, self.source = cell_name, network_name, source
        self.progress, self.stop_after_steps, self.artifacts, self.callback = progress, stop_after_steps, artifacts, callback
        self.render = render  # (genotype, model sizes, header) -> derived.cell text; None: nasir/rnn/text.py
        torch.manual_seed(options.seed)
        # built on the CPU (the same initial weights on every device), then moved
        self.model = SearchLM(self.lm, space).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.weight_parameters(), lr=options.lr, weight_decay=options.weight_decay)
        self.architect = RecurrentArchitect(self.model, order=options.order, lr=options.a_lr, weight_decay=options.a_weight_decay,
                                            w_weight_decay=options.weight_decay, clip=options.clip)  # fmt: skip
        self.train = corpus_mod.batchify(self.corpus.train, options.batch_size).to(self.device)
        self.valid = corpus_mod.batchify(self.corpus.valid, options.batch_size).to(self.device)
        self.valid_eval = corpus_mod.batchify(self.corpus.valid, options.eval_batch_size).to(self.device)
        self.meter = StrengthMeter(options.strength_window or 10**9)
        self.history: list[dict[str, Any]] = []
        self.epoch, self.pos, self.step, self.total_steps = 0, 0, 0, 0
        self.sums = {"loss": 0.0, "words": 0.0, "arch_loss": 0.0, "arch_steps": 0.0}
        self.h_train = self.model.init_hidden(options.batch_size)
        self.h_valid = self.model.init_hidden(options.batch_size)
        self.gen = torch.Generator()
        self._stop = _Stop()

    # ---- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "provenance": self.provenance,
            "options": attrs.asdict(self.opt),
            "space": {"nodes": self.space.nodes, "ops": list(self.space.ops), "output": list(self.space.output)},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "architect": self.architect.state_dict(),
            "meter": self.meter.state_dict(),
            "epoch": self.epoch, "pos": self.pos, "step": self.step, "total_steps": self.total_steps,
            "sums": self._host_sums(), "history": json.dumps(self.history),
            "h_train": self.h_train, "h_valid": self.h_valid,
            "rng": dv.rng_state(), "gen": self.gen.get_state(),
        }  # fmt: skip

    def save(self) -> None:
        self.check_finite()
        state = self.state_dict()
        if not finite.state_is_finite(state["model"]):  # the losses were finite, the last update was not
            raise self._diverged(f"the supernet's weights or architecture variables are not finite at epoch {self.epoch + 1}, step {self.step}")
        atomic_write_with(self.out / CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def _diverged(self, what: str, step: int | None = None) -> finite.NonFiniteError:
        kept = "checkpoint.pt keeps the last finite state" if (self.out / CHECKPOINT).is_file() else "no checkpoint was written"
        return finite.NonFiniteError(f"search stopped: {what}; {kept}; nothing derived from it was written",
                                     hint="a smaller --lr or arch_lr usually keeps the losses finite", step=step)  # fmt: skip

    def check_finite(self) -> None:
        """Stop at the first non-finite weight or architecture loss, naming its epoch and step (one host read).
        The bad step lies in this epoch: the check runs at least at every epoch's end."""
        for watch, what in ((self.loss_watch, "training loss"), (self.arch_watch, "architecture loss")):
            bad = watch.first(device=self.device)
            if bad is not None:
                g, value = bad
                start = self.total_steps - self.step  # the global step this epoch began at
                raise self._diverged(f"the {what} is {finite.describe(value)} at epoch {self.epoch + 1}, step {g - start + 1}", g)

    def load(self) -> None:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return
        state = dv.load_on_cpu(path)
        if self.provenance is not None:  # before the settings: say which of spec, overrides, seed, data differs
            prov.require_same(prov.of(state), self.provenance, prov.RESUME, f"--resume: '{path}'",
                              hint="resume with the spec, --set values, --seed and --data the search started with")  # fmt: skip
        if state.get("version") != CHECKPOINT_VERSION or state["options"] != attrs.asdict(self.opt):
            raise CheckpointMismatchError(f"{path} was written by a search with other settings; use another output directory")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.architect.load_state_dict(state["architect"])
        self.meter.load_state_dict(dv.move_to(state["meter"], self.device))
        self.epoch, self.pos, self.step, self.total_steps = state["epoch"], state["pos"], state["step"], state["total_steps"]
        self.sums = dict(state["sums"])
        self.history = json.loads(state["history"])
        self.h_train, self.h_valid = state["h_train"].to(self.device), state["h_valid"].to(self.device)
        for note in dv.restore_rng(state["rng"]):
            print(f"nasir: note: {note}", file=sys.stderr)
        self.gen.set_state(state["gen"])

    def _host_sums(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.sums.items()}  # one host read per value

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> RecurrentResult:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load()
        elif (self.out / CHECKPOINT).exists():
            (self.out / CHECKPOINT).unlink()
        if self.provenance is not None:
            prov.write(self.out, self.provenance)
        with self._stop.installed():
            while self.epoch < self.opt.epochs:
                self._epoch()
        return self.finish()

    def _epoch(self) -> None:
        opt, model = self.opt, self.model
        if self.pos == 0 and self.step == 0:
            self.gen.manual_seed(opt.seed * 100003 + self.epoch)
            self.h_train = model.init_hidden(opt.batch_size)
            self.h_valid = model.init_hidden(opt.batch_size)
            self.meter.reset() if opt.strength_window is None else None
            self._t0 = time.time()
        t0 = getattr(self, "_t0", time.time())
        model.train()
        while self.pos < self.train.size(0) - 2:
            if opt.limit_batches is not None and self.step >= opt.limit_batches:
                break
            L = sequence_length(self.gen, opt.bptt)
            train = corpus_mod.get_batch(self.train, self.pos, L)
            if self.epoch >= opt.warmup:
                valid = corpus_mod.get_batch(self.valid, self.pos % (self.valid.size(0) - 1), opt.bptt)
                xi = self.optimizer.param_groups[0]["lr"]
                aloss, self.h_valid = self.architect.step(train, self.h_train, valid, self.h_valid, xi)
                self.arch_watch.observe(torch.as_tensor(aloss), self.total_steps)
                self.meter.record_grads({self.cell_name: self.architect.last_grads[0]})
                self.sums["arch_loss"] += aloss.double()  # summed on the device: no host read per step (nasir/finite.py)
                self.sums["arch_steps"] += 1
            nll, self.h_train = weight_step(model, self.optimizer, train, self.h_train, clip=opt.clip, ar=opt.ar,
                                            tar=opt.tar, lr_scale=train[0].size(0) / opt.bptt)  # fmt: skip
            self.loss_watch.observe(torch.as_tensor(nll), self.total_steps)
            if self.device.type == "cpu":
                self.check_finite()  # nothing to wait for on the CPU: stop at once (nasir/finite.py)
            n = train[1].numel()
            self.sums["loss"] += nll.double() * n  # float64, as the host sum it replaces: the same bits
            self.sums["words"] += n
            self.pos += train[0].size(0)
            self.step += 1
            self.total_steps += 1
            if self.callback is not None:
                self.callback({"epoch": self.epoch, "step": self.step, "loss": float(nll)})
            if self._stop.requested or (self.stop_after_steps is not None and self.total_steps >= self.stop_after_steps):
                self.save()
                raise RecurrentInterrupted(self.out, self.epoch, self.step)
        self.check_finite()
        if not finite.state_is_finite(model.state_dict()):
            raise self._diverged(f"the supernet's weights or architecture variables are not finite after epoch {self.epoch + 1}")
        valid_nll = evaluate(model, self.valid_eval, opt.bptt, opt.eval_batch_size)
        if not math.isfinite(valid_nll):
            raise self._diverged(f"the validation loss is {finite.describe(valid_nll)} after epoch {self.epoch + 1}")
        genotype = self.genotype()
        s = self.sums = self._host_sums()
        record = {
            "epoch": self.epoch + 1,
            "train_loss": s["loss"] / max(s["words"], 1),
            "train_ppl": math.exp(min(s["loss"] / max(s["words"], 1), 50)),
            "arch_loss": s["arch_loss"] / s["arch_steps"] if s["arch_steps"] else None,
            "valid_loss": valid_nll,
            "valid_ppl": math.exp(min(valid_nll, 50)),
            "lr": self.optimizer.param_groups[0]["lr"],
            "steps": self.step,
            "seconds": time.time() - t0,
            "genotype": str(genotype),
        }
        self.history.append(record)
        if self.progress:
            print(f"epoch {record['epoch']}/{opt.epochs}: train ppl {record['train_ppl']:.2f}, valid ppl {record['valid_ppl']:.2f}, {genotype}", file=sys.stderr)
        self.epoch += 1
        self.pos = self.step = 0
        self.sums = {k: 0.0 for k in self.sums}
        self._write_epoch(record)
        self.save()

    # ---- derivation and outputs --------------------------------------------------------------------
    def scores(self) -> torch.Tensor:
        if self.opt.select == "strength":
            strength = self.meter.strength()
            if strength:
                return strength[self.cell_name]
        return torch.softmax(self.model.alpha.detach(), dim=-1)

    def genotype(self) -> Genotype:
        return derive(self.space, self.scores(), self.cell)

    def _variables(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alphas": {self.cell_name: self.model.alpha.detach().double().tolist()}}
        strength = self.meter.strength()
        if strength:
            out["strengths"] = {k: v.double().tolist() for k, v in strength.items()}
        return out

    def _write_epoch(self, record: dict[str, Any]) -> None:
        for name, values in self._variables().items():
            atomic_write(self.out / name / f"epoch_{record['epoch']:03d}.json", json.dumps(values) + "\n")
            atomic_write(self.out / f"{name}.json", json.dumps(values) + "\n")
        atomic_write(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))

    def finish(self) -> RecurrentResult:
        out = self.out
        genotype = self.genotype()
        header = f"Derived by nasir search from {Path(self.source).name or 'the recurrent space'}; genotype {genotype}"
        if self.render is not None:
            text = self.render(genotype, self.lm, header)
        else:
            text = derived_text(genotype, self.lm, cell=self.cell_name, network=self.network_name, header=header)
        files = {"derived.cell": out / "derived.cell", "genotype.txt": out / "genotype.txt",
                 "metrics.jsonl": out / "metrics.jsonl", "checkpoint.pt": out / CHECKPOINT}  # fmt: skip
        atomic_write(out / "derived.cell", text)
        atomic_write(out / "genotype.txt", str(genotype) + "\n")
        for name, values in self._variables().items():
            atomic_write(out / f"{name}.json", json.dumps(values) + "\n")
            files[f"{name}.json"] = out / f"{name}.json"
        if self.artifacts:
            from nasir.rnn.cell import build
            from nasir.rnn.export import to_onnx
            from nasir.rnn.plots import alpha_heatmap

            files["alphas.png"] = alpha_heatmap(self.space, self.model.alpha.detach().tolist(), out / "alphas.png", self.cell_name)
            files["derived.png"] = draw_derived(text, out / "derived.png")
            torch.manual_seed(self.opt.seed)
            files["derived.onnx"] = to_onnx(build(self.lm, genotype), out / "derived.onnx")
        return RecurrentResult(out, genotype, text, self.model.alpha.detach().double().tolist(), list(self.history), files)


def draw_derived(text: str, path: Path) -> Path:
    """derived.png: the derived cell as CNN searches draw theirs (targets/draw.py), from derived.cell's text."""
    from nasir.api import load
    from nasir.targets.draw import draw

    return draw(load(text, name=str(path.with_suffix(".cell"))), path)


def search(space: SearchSpace | None = None, lm: LanguageModel | None = None, out: str | Path = "runs/ptb", *,
           resume: bool = False, progress: bool = False, stop_after_steps: int | None = None, artifacts: bool = True,
           cell_name: str = "rnn", network_name: str = "ptb", source: str = "",
           callback: Callable[[dict[str, Any]], None] | None = None, device: str = "auto", **options: Any) -> RecurrentResult:  # fmt: skip
    """Search a recurrent space (default: DARTS' 8-node space at the search size) on `data` (options['data'])."""
    from nasir.rnn.space import SEARCH_SIZE

    torch.set_num_threads(max(1, torch.get_num_threads()))
    runner = RecurrentSearch(space or SearchSpace(), lm or SEARCH_SIZE, RecurrentOptions(**options), Path(out),
                             cell_name=cell_name, network_name=network_name, source=source, progress=progress,
                             stop_after_steps=stop_after_steps, artifacts=artifacts, callback=callback, device=device)  # fmt: skip
    return runner.run(resume=resume)
