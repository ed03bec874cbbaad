"""Training a derived recurrent cell as a language model, the authors' protocol (docs/recurrent.md).

SGD (lr 20, weight decay 8e-7) on L + AR + TAR with the gradient norm clipped at 0.25, a random
sequence length per batch (search.sequence_length) with the learning rate scaled by length / bptt, the
hidden state carried across batches (detached); after each epoch the validation loss; once it has not
improved on the best of all but the last `nonmono` evaluations, the optimiser becomes averaged SGD
(ASGD, t0 = 0, lambd = 0) and the validation loss is then measured at the averaged weights. The best
weights (by validation loss) are kept and give the test perplexity at the end (test batch size 1).

Outputs in `out`: model.pt (best weights, a state_dict), metrics.jsonl, result.json, checkpoint.pt.
A stop signal (or `stop_after_steps`) saves a checkpoint at the step boundary; `resume=True` restores
weights, optimiser (SGD or ASGD with its averages), RNG states, position and hidden state, so the
resumed run ends with the same weights as one that never stopped.

Device and processes (as `nasir train` of a CNN, nasir/train.py): `device` is nasir/device.py's
`select_device` (auto: CUDA when present; under torchrun this process's GPU, LOCAL_RANK). Under torchrun
(WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (NCCL on GPUs, gloo on the CPU): the
batch's B streams (columns of the batchified data) are split into equal contiguous slices, rank r
carrying the hidden state of its B / world columns; every rank draws the same sequence lengths (the
length generator is seeded by (seed, epoch)), so the per-rank losses are means over equally many words
and DDP's average of their gradients is the gradient of the whole batch's mean loss; the clip then
applies to that average. The dropout masks of rank r come from torch's generator seeded by (seed, r),
so ranks draw independent masks. Validation and test run on every rank (the same weights, eval mode:
the same numbers), so the switch to ASGD and the best weights agree without a collective; rank 0 writes
every file. checkpoint.pt holds every rank's RNG states (nasir/device.py `rng_state`), the whole
batch's hidden state (all columns, in rank order) and the summed training loss, so it resumes under
the same number of processes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import torch

from nasir import device as dv
from nasir import finite
from nasir import provenance as prov
from nasir.io import atomic_write, atomic_write_with
from nasir.rnn import corpus as corpus_mod
from nasir.rnn.architect import evaluate, weight_step
from nasir.rnn.cell import build
from nasir.rnn.search import CheckpointMismatchError, RecurrentInterrupted, sequence_length
from nasir.rnn.space import Genotype, LanguageModel

CHECKPOINT = "checkpoint.pt"


@attrs.frozen
class TrainOptions:
    epochs: int = 8000  # the authors' budget; their runs stop on time
    batch_size: int = 64
    eval_batch_size: int = 10
    test_batch_size: int = 1
    bptt: int = 35
    lr: float = 20.0
    weight_decay: float = 8e-7
    clip: float = 0.25
    ar: float = 0.0
    tar: float = 1e-3
    nonmono: int = 5
    seed: int = 1267
    data: str = "embedded"
    limit_batches: int | None = None

    def __attrs_post_init__(self):
        # NaN is not `< 0`: every float setting must be a finite number in its range (issue 14, item 2)
        errors = finite.check_settings(attrs.asdict(self), positive=("lr", "clip"), nonnegative=("weight_decay", "ar", "tar"))
        if errors:
            raise ValueError("; ".join(errors))


@attrs.frozen
class TrainResult:
    out: Path
    valid_ppl: float
    test_ppl: float
    metrics: list[dict[str, Any]]
    files: dict[str, Path]


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world): under torchrun the runtime's process group (started once, left at exit)."""
    from nasir.runtime.dist import init_distributed

    d = init_distributed(device)
    return d.rank, d.world


def _ppl(nll: float) -> float:
    return math.exp(min(nll, 50.0))


class LMTrainer:
    def __init__(self, genotype: Genotype, lm: LanguageModel, options: TrainOptions, out: Path, *,
                 corpus: corpus_mod.Corpus | None = None, progress: bool = False,
                 stop_after_steps: int | None = None, device: str | torch.device = "auto",
                 provenance: dict[str, Any] | None = None):  # fmt: skip
        self.opt, self.out = options, Path(out)
        # what the run is made from (nasir/provenance.py): in provenance.json and checkpoint.pt, compared on resume
        self.provenance = provenance
        self.watch = finite.FiniteWatch()  # the first non-finite training loss, kept on the device (nasir/finite.py)
        self.device = dv.select_device(device)
        self.rank, self.world = _init_distributed(self.device)
        if options.batch_size % self.world:
            raise ValueError(f"the batch size {options.batch_size} does not split evenly over {self.world} processes")
        self.corpus = corpus if corpus is not None else corpus_mod.load(options.data)
        self.lm = attrs.evolve(lm, tokens=self.corpus.tokens)
        self.genotype, self.progress, self.stop_after_steps = genotype, progress, stop_after_steps
        torch.manual_seed(options.seed)
        self.model = build(self.lm, genotype).to(self.device)  # built on the CPU: the same weights everywhere
        self.net: torch.nn.Module = self.model  # what the training step calls: DDP's wrapper under torchrun
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            torch.manual_seed(options.seed * 1_000_003 + self.rank)  # this rank's own dropout masks
        self.local_batch = options.batch_size // self.world
        self.asgd = False
        self.optimizer = self._optimizer()
        train = corpus_mod.batchify(self.corpus.train, options.batch_size)
        self.train = train[:, self.rank * self.local_batch : (self.rank + 1) * self.local_batch].contiguous().to(self.device)
        self.valid = corpus_mod.batchify(self.corpus.valid, options.eval_batch_size).to(self.device)
        self.test = corpus_mod.batchify(self.corpus.test, options.test_batch_size).to(self.device)
        self.history: list[dict[str, Any]] = []
        self.val_losses: list[float] = []
        self.best = math.inf
        self.epoch = self.pos = self.step = self.total_steps = 0
        self.sums = {"loss": 0.0, "words": 0.0}
        self.hidden = self.model.init_hidden(self.local_batch)
        self.gen = torch.Generator()
        self._stop = dv.StopFlag()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def _gather(self) -> tuple[torch.Tensor, dict[str, float]]:
        """The whole batch's hidden state (every rank's columns, in rank order) and the summed loss/words."""
        sums = {k: float(v) for k, v in self.sums.items()}  # the loss is summed on the device (no host read per step)
        if self.world == 1:
            return self.hidden.detach().cpu(), sums
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, (self.hidden.detach().cpu(), sums))
        return torch.cat([h for h, _ in parts], dim=0), {k: sum(p[1][k] for p in parts) for k in self.sums}

    def _optimizer(self) -> torch.optim.Optimizer:
        params, o = list(self.model.parameters()), self.opt
        if self.asgd:
            return torch.optim.ASGD(params, lr=o.lr, t0=0, lambd=0.0, weight_decay=o.weight_decay)
        return torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay)

    def state_dict(self) -> dict[str, Any]:
        """Every rank calls it (collectives); only rank 0's is saved."""
        hidden, sums = self._gather()
        return {
            "provenance": self.provenance, "options": attrs.asdict(self.opt), "genotype": str(self.genotype), "model": self.model.state_dict(),
            "asgd": self.asgd, "optimizer": self.optimizer.state_dict(), "history": json.dumps(self.history),
            "val_losses": list(self.val_losses), "best": self.best, "epoch": self.epoch, "pos": self.pos,
            "step": self.step, "total_steps": self.total_steps, "sums": sums, "hidden": hidden,
            "rng": dv.rng_state(), "gen": self.gen.get_state(), "world": self.world,
        }  # fmt: skip

    def save(self) -> None:
        self.check_finite()
        state = self.state_dict()
        if not finite.state_is_finite(state["model"]):  # the losses were finite, the last update was not
            raise self._diverged(f"the weights are not finite at epoch {self.epoch + 1}, step {self.step}")
        if self.main:
            atomic_write_with(self.out / CHECKPOINT, lambda tmp: torch.save(state, tmp))
        if self.world > 1:  # the others wait for the file: a rank that resumes at once must read this checkpoint
            import torch.distributed as dist

            dist.barrier()

    def _diverged(self, what: str, step: int | None = None) -> finite.NonFiniteError:
        kept = f"{self.out / CHECKPOINT} keeps the last finite state" if (self.out / CHECKPOINT).is_file() else "no checkpoint was written"
        return finite.NonFiniteError(f"training stopped: {what}; {kept}; no non-finite weights were written",
                                     hint="a smaller --lr, or --grad-clip, usually keeps the loss finite", step=step)  # fmt: skip

    def check_finite(self) -> None:
        """Stop at the first non-finite training loss, naming its epoch and step (one host read; every rank
        calls it at the same points). The bad step lies in this epoch: the check runs at every epoch's end."""
        bad = self.watch.first(distributed=self.world > 1, device=self.device)
        if bad is not None:
            g, value = bad
            start = self.total_steps - self.step  # the global step this epoch began at
            raise self._diverged(f"the training loss is {finite.describe(value)} at epoch {self.epoch + 1}, step {g - start + 1}", g)

    def load(self) -> None:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return
        s = dv.load_on_cpu(path)
        if self.provenance is not None:  # before the settings: say which of spec, overrides, seed, data differs
            prov.require_same(prov.of(s), self.provenance, prov.RESUME, f"--resume: '{path}'",
                              hint="resume with the spec, --set values, --seed and --data the run started with")  # fmt: skip
        if s["options"] != attrs.asdict(self.opt) or s["genotype"] != str(self.genotype) or not isinstance(s.get("rng"), dict):
            raise CheckpointMismatchError(f"{path} was written by a training run with other settings; use another output directory")
        if s.get("world", 1) != self.world:
            raise CheckpointMismatchError(f"{path} was written by {s.get('world', 1)} process(es); resume it with as many (this run has {self.world})")
        self.model.load_state_dict(s["model"])
        self.asgd = bool(s["asgd"])
        self.optimizer = self._optimizer()
        self.optimizer.load_state_dict(s["optimizer"])
        self.history, self.val_losses, self.best = json.loads(s["history"]), list(s["val_losses"]), float(s["best"])
        self.epoch, self.pos, self.step, self.total_steps = s["epoch"], s["pos"], s["step"], s["total_steps"]
        # the summed loss goes to rank 0 (the epoch's totals are summed over ranks), the hidden columns to their rank
        self.sums = dict(s["sums"]) if self.main else {k: 0.0 for k in s["sums"]}
        self.hidden = s["hidden"][self.rank * self.local_batch : (self.rank + 1) * self.local_batch].to(self.device)
        for note in dv.restore_rng(s["rng"]):
            print(f"nasir: note: {note}", file=sys.stderr)
        self.gen.set_state(s["gen"])

    def run(self, resume: bool = False) -> TrainResult:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load()
        elif self.main and (self.out / CHECKPOINT).exists():
            (self.out / CHECKPOINT).unlink()
        if self.main and self.provenance is not None:
            prov.write(self.out, self.provenance)
        with self._stop.installed():
            while self.epoch < self.opt.epochs:
                self._epoch()
        return self.finish()

    def _averaged(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """Swap the ASGD averages into the weights; returns what to swap back."""
        saved = []
        with torch.no_grad():
            for p in self.model.parameters():
                ax = self.optimizer.state.get(p, {}).get("ax")
                if ax is not None:
                    saved.append((p, p.detach().clone()))
                    p.copy_(ax)
        return saved

    def _epoch(self) -> None:
        o, model = self.opt, self.model
        if self.pos == 0 and self.step == 0:
            self.gen.manual_seed(o.seed * 100003 + self.epoch)
            self.hidden = model.init_hidden(self.local_batch)
        t0 = time.time()
        model.train()
        while self.pos < self.train.size(0) - 2:
            if o.limit_batches is not None and self.step >= o.limit_batches:
                break
            batch = corpus_mod.get_batch(self.train, self.pos, sequence_length(self.gen, o.bptt))
            L = batch[0].size(0)
            nll, self.hidden = weight_step(self.net, self.optimizer, batch, self.hidden, clip=o.clip, ar=o.ar, tar=o.tar, lr_scale=L / o.bptt)
            self.watch.observe(torch.as_tensor(nll), self.total_steps)
            if self.device.type == "cpu":
                self.check_finite()  # nothing to wait for on the CPU: stop at once (nasir/finite.py)
            self.sums["loss"] += nll.double() * batch[1].numel()  # float64, as the host sum it replaced: the same bits
            self.sums["words"] += batch[1].numel()
            self.pos += L
            self.step += 1
            self.total_steps += 1
            if self._stop.agreed() or (self.stop_after_steps is not None and self.total_steps >= self.stop_after_steps):
                self.save()
                raise RecurrentInterrupted(self.out, self.epoch, self.step)
        self.check_finite()
        if not finite.state_is_finite(model.state_dict()):
            raise self._diverged(f"the weights are not finite after epoch {self.epoch + 1}")
        saved = self._averaged() if self.asgd else []
        val = evaluate(model, self.valid, o.bptt, o.eval_batch_size)
        if not math.isfinite(val):
            raise self._diverged(f"the validation loss is {finite.describe(val)} after epoch {self.epoch + 1}")
        if val < self.best:
            self.best = val
            if self.main:
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                atomic_write_with(self.out / "model.pt", lambda tmp: torch.save(state, tmp))
        with torch.no_grad():
            for p, v in saved:
                p.copy_(v)
        switched = False
        if not self.asgd:
            # the non-monotone trigger (the authors' train.py): worse than the best before the last `nonmono`
            if len(self.val_losses) > o.nonmono and val > min(self.val_losses[: -o.nonmono]):
                self.asgd, switched = True, True
                self.optimizer = self._optimizer()
            self.val_losses.append(val)
        _, totals = self._gather()  # the epoch's loss over every rank's columns
        words = max(totals["words"], 1)
        record = {"epoch": self.epoch + 1, "train_ppl": _ppl(totals["loss"] / words), "valid_loss": val,
                  "valid_ppl": _ppl(val), "optimizer": "asgd" if self.asgd and not switched else "sgd",
                  "switched_to_asgd": switched, "steps": self.step, "seconds": time.time() - t0}  # fmt: skip
        self.history.append(record)
        if self.progress and self.main:
            print(f"epoch {record['epoch']}: train ppl {record['train_ppl']:.2f}, valid ppl {record['valid_ppl']:.2f} ({record['optimizer']})", file=sys.stderr)
        self.epoch += 1
        self.pos = self.step = 0
        self.sums = {"loss": 0.0, "words": 0.0}
        if self.main:
            atomic_write(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        self.save()

    def finish(self) -> TrainResult:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()  # rank 0 has written model.pt
        best = torch.load(self.out / "model.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(best)
        test = evaluate(self.model, self.test, self.opt.bptt, self.opt.test_batch_size)
        result = {"valid_ppl": _ppl(self.best), "test_ppl": _ppl(test), "test_loss": test, "genotype": str(self.genotype),
                  "params": sum(p.numel() for p in self.model.parameters()), "epochs": self.epoch}  # fmt: skip
        if self.main:
            atomic_write(self.out / "result.json", json.dumps(result, indent=1) + "\n")
        files = {n: self.out / n for n in ("model.pt", "metrics.jsonl", "result.json", CHECKPOINT)}
        return TrainResult(self.out, result["valid_ppl"], result["test_ppl"], list(self.history), files)


def train(genotype: Genotype, lm: LanguageModel, out: str | Path = "runs/lm", *, resume: bool = False,
          progress: bool = False, stop_after_steps: int | None = None, device: str = "auto", **options: Any) -> TrainResult:  # fmt: skip
    """Train `genotype` as a language model of size `lm` on options['data'] (embedded or ptb:PATH);
    under torchrun with DistributedDataParallel (module docstring)."""
    trainer = LMTrainer(genotype, lm, TrainOptions(**options), Path(out), progress=progress, stop_after_steps=stop_after_steps,
                        device=device)  # fmt: skip
    return trainer.run(resume=resume)
