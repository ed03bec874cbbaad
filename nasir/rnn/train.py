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

from nasir.io import atomic_write, atomic_write_with
from nasir.rnn import corpus as corpus_mod
from nasir.rnn.architect import evaluate, weight_step
from nasir.rnn.cell import build
from nasir.rnn.search import RecurrentInterrupted, _Stop, sequence_length
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


@attrs.frozen
class TrainResult:
    out: Path
    valid_ppl: float
    test_ppl: float
    metrics: list[dict[str, Any]]
    files: dict[str, Path]


def _ppl(nll: float) -> float:
    return math.exp(min(nll, 50.0))


class LMTrainer:
    def __init__(self, genotype: Genotype, lm: LanguageModel, options: TrainOptions, out: Path, *,
                 corpus: corpus_mod.Corpus | None = None, progress: bool = False,
                 stop_after_steps: int | None = None):  # fmt: skip
        self.opt, self.out = options, Path(out)
        self.corpus = corpus if corpus is not None else corpus_mod.load(options.data)
        self.lm = attrs.evolve(lm, tokens=self.corpus.tokens)
        self.genotype, self.progress, self.stop_after_steps = genotype, progress, stop_after_steps
        torch.manual_seed(options.seed)
        self.model = build(self.lm, genotype)
        self.asgd = False
        self.optimizer = self._optimizer()
        self.train = corpus_mod.batchify(self.corpus.train, options.batch_size)
        self.valid = corpus_mod.batchify(self.corpus.valid, options.eval_batch_size)
        self.test = corpus_mod.batchify(self.corpus.test, options.test_batch_size)
        self.history: list[dict[str, Any]] = []
        self.val_losses: list[float] = []
        self.best = math.inf
        self.epoch = self.pos = self.step = self.total_steps = 0
        self.sums = {"loss": 0.0, "words": 0.0}
        self.hidden = self.model.init_hidden(options.batch_size)
        self.gen = torch.Generator()
        self._stop = _Stop()

    def _optimizer(self) -> torch.optim.Optimizer:
        params, o = list(self.model.parameters()), self.opt
        if self.asgd:
            return torch.optim.ASGD(params, lr=o.lr, t0=0, lambd=0.0, weight_decay=o.weight_decay)
        return torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay)

    def state_dict(self) -> dict[str, Any]:
        return {
            "options": attrs.asdict(self.opt), "genotype": str(self.genotype), "model": self.model.state_dict(),
            "asgd": self.asgd, "optimizer": self.optimizer.state_dict(), "history": json.dumps(self.history),
            "val_losses": list(self.val_losses), "best": self.best, "epoch": self.epoch, "pos": self.pos,
            "step": self.step, "total_steps": self.total_steps, "sums": dict(self.sums), "hidden": self.hidden,
            "rng": torch.get_rng_state(), "gen": self.gen.get_state(),
        }  # fmt: skip

    def save(self) -> None:
        state = self.state_dict()
        atomic_write_with(self.out / CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def load(self) -> None:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return
        s = torch.load(path, map_location="cpu", weights_only=True)
        if s["options"] != attrs.asdict(self.opt) or s["genotype"] != str(self.genotype):
            raise ValueError(f"{path} was written by a training run with other settings; use another output directory")
        self.model.load_state_dict(s["model"])
        self.asgd = bool(s["asgd"])
        self.optimizer = self._optimizer()
        self.optimizer.load_state_dict(s["optimizer"])
        self.history, self.val_losses, self.best = json.loads(s["history"]), list(s["val_losses"]), float(s["best"])
        self.epoch, self.pos, self.step, self.total_steps = s["epoch"], s["pos"], s["step"], s["total_steps"]
        self.sums, self.hidden = dict(s["sums"]), s["hidden"]
        torch.set_rng_state(s["rng"])
        self.gen.set_state(s["gen"])

    def run(self, resume: bool = False) -> TrainResult:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load()
        elif (self.out / CHECKPOINT).exists():
            (self.out / CHECKPOINT).unlink()
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
            self.hidden = model.init_hidden(o.batch_size)
        t0 = time.time()
        model.train()
        while self.pos < self.train.size(0) - 2:
            if o.limit_batches is not None and self.step >= o.limit_batches:
                break
            batch = corpus_mod.get_batch(self.train, self.pos, sequence_length(self.gen, o.bptt))
            L = batch[0].size(0)
            nll, self.hidden = weight_step(model, self.optimizer, batch, self.hidden, clip=o.clip, ar=o.ar, tar=o.tar, lr_scale=L / o.bptt)
            self.sums["loss"] += float(nll) * batch[1].numel()
            self.sums["words"] += batch[1].numel()
            self.pos += L
            self.step += 1
            self.total_steps += 1
            if self._stop.requested or (self.stop_after_steps is not None and self.total_steps >= self.stop_after_steps):
                self.save()
                raise RecurrentInterrupted(self.out, self.epoch, self.step)
        saved = self._averaged() if self.asgd else []
        val = evaluate(model, self.valid, o.bptt, o.eval_batch_size)
        if val < self.best:
            self.best = val
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
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
        words = max(self.sums["words"], 1)
        record = {"epoch": self.epoch + 1, "train_ppl": _ppl(self.sums["loss"] / words), "valid_loss": val,
                  "valid_ppl": _ppl(val), "optimizer": "asgd" if self.asgd and not switched else "sgd",
                  "switched_to_asgd": switched, "steps": self.step, "seconds": time.time() - t0}  # fmt: skip
        self.history.append(record)
        if self.progress:
            print(f"epoch {record['epoch']}: train ppl {record['train_ppl']:.2f}, valid ppl {record['valid_ppl']:.2f} ({record['optimizer']})", file=sys.stderr)
        self.epoch += 1
        self.pos = self.step = 0
        self.sums = {"loss": 0.0, "words": 0.0}
        atomic_write(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        self.save()

    def finish(self) -> TrainResult:
        best = torch.load(self.out / "model.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(best)
        test = evaluate(self.model, self.test, self.opt.bptt, self.opt.test_batch_size)
        result = {"valid_ppl": _ppl(self.best), "test_ppl": _ppl(test), "test_loss": test, "genotype": str(self.genotype),
                  "params": sum(p.numel() for p in self.model.parameters()), "epochs": self.epoch}  # fmt: skip
        atomic_write(self.out / "result.json", json.dumps(result, indent=1) + "\n")
        files = {n: self.out / n for n in ("model.pt", "metrics.jsonl", "result.json", CHECKPOINT)}
        return TrainResult(self.out, result["valid_ppl"], result["test_ppl"], list(self.history), files)


def train(genotype: Genotype, lm: LanguageModel, out: str | Path = "runs/lm", *, resume: bool = False,
          progress: bool = False, stop_after_steps: int | None = None, **options: Any) -> TrainResult:  # fmt: skip
    """Train `genotype` as a language model of size `lm` on options['data'] (embedded or ptb:PATH)."""
    trainer = LMTrainer(genotype, lm, TrainOptions(**options), Path(out), progress=progress, stop_after_steps=stop_after_steps)
    return trainer.run(resume=resume)
