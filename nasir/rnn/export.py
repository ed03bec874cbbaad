"""Targets of a derived recurrent language model: PyTorch source, TorchScript, ONNX, and ONNX Runtime parity.

Every target is the inference graph (eval mode: no dropout) of `RNNLM` with a derived cell,
    (words [T, B] int64, hidden [B, H]) -> (log_probs [T, B, V], next hidden [B, H])
with T and B dynamic. The cell's time step is traced (the genotype is unrolled into straight-line code,
no data-dependent control flow); the loop over time is scripted around it, so TorchScript and ONNX (a
`Loop` over T) take any sequence length. Files are written atomically (`nasir.io`).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nasir.io import atomic_write, atomic_write_with
from nasir.rnn.cell import RNNLM, DerivedCell
from nasir.rnn.space import Genotype

INPUTS = ("words", "hidden")
OUTPUTS = ("log_probs", "next_hidden")
OPSET = 17


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The deprecation notices of torch.jit and the TorchScript ONNX exporter: they are the tools chosen here."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        yield


class _Step(nn.Module):
    """One time step of a derived cell in eval mode: (x [B, ninp], h [B, nhid]) -> next h."""

    def __init__(self, cell: DerivedCell):
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.cell.step(x, h, None, None)


class _Loop(nn.Module):
    def __init__(self, step: torch.jit.ScriptModule, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.step = step
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, words: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = F.embedding(words, self.weight)
        h = hidden
        outs = torch.zeros(words.size(0), words.size(1), hidden.size(1), dtype=hidden.dtype)
        for t in range(words.size(0)):
            h = self.step(emb[t], h)
            outs[t] = h
        logits = torch.matmul(outs, self.weight.t()) + self.bias
        return F.log_softmax(logits, dim=-1), h


def scripted(model: RNNLM) -> torch.jit.ScriptModule:
    """The TorchScript module of `model` (eval mode; dynamic T and B)."""
    if not isinstance(model.cell, DerivedCell):
        raise TypeError("only a derived recurrent cell exports (the search supernet is not a target)")
    was = model.training
    model.eval()
    try:
        H, ninp = model.lm.nhid, model.lm.ninp
        with torch.no_grad(), _quiet():
            step = torch.jit.trace(_Step(model.cell), (torch.zeros(2, ninp), torch.zeros(2, H)), check_trace=False)
            return torch.jit.script(_Loop(step, model.encoder.weight, model.decoder.bias))
    finally:
        model.train(was)


def to_torchscript(model: RNNLM, path: str | Path) -> Path:
    script = scripted(model)
    path = Path(path)
    with _quiet():
        atomic_write_with(path, lambda tmp: torch.jit.save(script, str(tmp)))
    return path


def to_onnx(model: RNNLM, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """ONNX of the language model with dynamic sequence length and batch (opset 17, a Loop over time).
    `metadata`: key/value strings for the model's `metadata_props`, as nasir/targets/export.py writes
    them (e.g. nasir.seed, which `nasir verify-export` reads back)."""
    script = scripted(model)
    buf = io.BytesIO()
    example = (torch.zeros(3, 2, dtype=torch.long), torch.zeros(2, model.lm.nhid))
    with _quiet():
        torch.onnx.export(script, example, buf, dynamo=False, opset_version=OPSET, input_names=list(INPUTS),
                          output_names=list(OUTPUTS),
                          dynamic_axes={"words": {0: "sequence", 1: "batch"}, "hidden": {0: "batch"},
                                        "log_probs": {0: "sequence", 1: "batch"}, "next_hidden": {0: "batch"}})  # fmt: skip
    data = buf.getvalue()
    if metadata:
        import onnx

        m = onnx.load_from_string(data)
        for k, v in metadata.items():
            entry = m.metadata_props.add()
            entry.key, entry.value = str(k), str(v)
        data = m.SerializeToString()
    path = Path(path)
    atomic_write(path, data)
    return path


def onnx_parity(model: RNNLM, path: str | Path, lengths: Sequence[int] = (5, 17), batch: int = 3, seed: int = 0) -> float:
    """The largest |ONNX Runtime - PyTorch| over both outputs at each sequence length (random words and state)."""
    return max(parity(model, path, (batch,), lengths, seed=seed, provider="cpu").values())


def _runner(path: Path, provider: str) -> tuple[Callable[[np.ndarray, np.ndarray], list[np.ndarray]], str]:
    """(words, hidden) -> [log_probs, next_hidden] of an exported language model, and what runs it."""
    from nasir.diagnostics import Diagnostic, DiagnosticError
    from nasir.targets.export import onnx_providers, onnxruntime

    hint = "verify against the spec (and --set values) the model was compiled from"
    if not path.is_file():
        raise DiagnosticError([Diagnostic(f"cannot read '{path}': no such file")])
    if path.suffix.lower() == ".pt2":
        raise DiagnosticError([Diagnostic(f"'{path}': a language model exports to ONNX or TorchScript, not .pt2", hint=hint)])
    kind = "onnx" if path.suffix.lower() == ".onnx" else "torchscript"
    try:
        if kind == "onnx":
            ort = onnxruntime()
            sess = ort.InferenceSession(str(path), providers=onnx_providers(provider))
            names = tuple(i.name for i in sess.get_inputs())
            if names != INPUTS:
                raise DiagnosticError([Diagnostic(f"'{path}' takes the inputs {', '.join(names)}; a language model's export takes "
                                                  f"{', '.join(INPUTS)}", hint=hint)])  # fmt: skip
            return (lambda w, h: sess.run(list(OUTPUTS), {INPUTS[0]: w, INPUTS[1]: h})), sess.get_providers()[0]
        with _quiet():
            module = torch.jit.load(str(path), map_location="cpu")
    except DiagnosticError:
        raise
    except Exception as e:  # a corrupt file or another kind of model: bad input, not a bug
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DiagnosticError([Diagnostic(f"cannot load model '{path}' as {kind}: {reason}")]) from None

    def run(w: np.ndarray, h: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(torch.from_numpy(w), torch.from_numpy(h))
        return [t.numpy() for t in out]

    return run, "torch (cpu)"


def parity(model: RNNLM, path: str | Path, batches: Sequence[int] = (1, 8), lengths: Sequence[int] = (5, 17), *,
           seed: int = 0, provider: str = "auto"):  # fmt: skip
    """`nasir verify-export` of a language model: {batch size: the largest |exported - PyTorch eval| over both
    outputs (log-probabilities, next hidden state) and the sequence lengths}, as nasir.targets.export.Parity
    (with the `provider` that ran the file and the `nonfinite` outputs). The file is this module's ONNX
    (ONNX Runtime) or TorchScript; inputs are seeded random words of the model's vocabulary and a small
    random hidden state."""
    from nasir.diagnostics import Diagnostic, DiagnosticError
    from nasir.targets.export import Parity

    path = Path(path)
    run, ran_on = _runner(path, provider)
    g = torch.Generator().manual_seed(seed)
    out = Parity()
    out.provider = ran_on
    was = model.training
    model.eval()
    try:
        for b in batches:
            worst = 0.0
            for T in lengths:
                words = torch.randint(0, model.lm.tokens, (T, b), generator=g)
                hidden = 0.1 * torch.randn(b, model.lm.nhid, generator=g)
                with torch.no_grad():
                    ref = [t.cpu().numpy() for t in model(words, hidden)]
                try:
                    got = run(words.numpy(), hidden.numpy())
                except Exception as e:  # noqa: BLE001 - e.g. a file compiled for a smaller vocabulary or other sizes
                    reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    raise DiagnosticError([Diagnostic(f"'{path}' cannot run on the spec's words ({T}, {b}) and hidden state ({b}, {model.lm.nhid}): {reason}",
                                                      hint="verify against the spec (and --set values) the model was compiled from")]) from None  # fmt: skip
                for name, a, r in zip(OUTPUTS, got, ref):
                    if a.shape != r.shape:
                        raise DiagnosticError([Diagnostic(f"'{path}' returns {name} of shape {a.shape}, PyTorch {r.shape} (batch {b}, length {T})",
                                                          hint="verify against the spec (and --set values) the model was compiled from")])  # fmt: skip
                    bad = [who for who, x in (("the exported model", a), ("PyTorch", r)) if not np.isfinite(x).all()]
                    out.nonfinite += tuple(f"{who}'s {name} at batch {b}, length {T} holds NaN or inf" for who in bad)
                    worst = max(worst, float(np.abs(a - r).max()))
            out[b] = worst
    finally:
        model.train(was)
    return out


# ---- generated PyTorch source ----------------------------------------------------------------------------
_ACT_SRC = {"tanh": "torch.tanh({})", "relu": "torch.relu({})", "sigmoid": "torch.sigmoid({})", "identity": "{}"}


def torch_source(genotype: Genotype, tokens: int, ninp: int, nhid: int, class_name: str = "RecurrentLM") -> str:
    """A standalone PyTorch module (inference: no dropout) whose state_dict keys match `RNNLM`'s.

    Load trained weights with `model.load_state_dict(trained.state_dict())`.
    """
    n = genotype.nodes
    lines = [
        f'"""Generated by nasir from {genotype}. Inference graph of the language model (no dropout)."""',
        "",
        "import torch",
        "import torch.nn.functional as F",
        "from torch import nn",
        "",
        "",
        f"class {class_name}(nn.Module):",
        f"    tokens, ninp, nhid = {tokens}, {ninp}, {nhid}",
        "",
        "    def __init__(self):",
        "        super().__init__()",
        "        self.encoder = nn.Embedding(self.tokens, self.ninp)",
        "        self.cell = nn.Module()",
        "        self.cell.W0 = nn.Parameter(torch.empty(self.ninp + self.nhid, 2 * self.nhid).uniform_(-0.04, 0.04))",
        f"        self.cell.Ws = nn.ParameterList([nn.Parameter(torch.empty(self.nhid, 2 * self.nhid).uniform_(-0.04, 0.04)) for _ in range({n})])",
        "        self.decoder = nn.Linear(self.ninp, self.tokens)",
        "        self.decoder.weight = self.encoder.weight",
        "",
        "    def step(self, x, h):",
        "        c0, g0 = torch.split(torch.cat([x, h], dim=-1).mm(self.cell.W0), self.nhid, dim=-1)",
        "        s0 = h + torch.sigmoid(c0) * (torch.tanh(g0) - h)",
    ]
    for i, (op, p) in enumerate(genotype.recurrent, start=1):
        lines.append(f"        c, g = torch.split(s{p}.mm(self.cell.Ws[{i - 1}]), self.nhid, dim=-1)")
        lines.append(f"        s{i} = s{p} + torch.sigmoid(c) * ({_ACT_SRC[op].format('g')} - s{p})")
    lines += [
        f"        return ({' + '.join(f's{j}' for j in genotype.concat)}) / {len(genotype.concat)}",
        "",
        "    def forward(self, words, hidden):",
        '        """words [T, B] int64, hidden [B, nhid] -> log-probabilities [T, B, tokens], next hidden."""',
        "        emb = self.encoder(words)",
        "        outs = []",
        "        h = hidden",
        "        for t in range(words.size(0)):",
        "            h = self.step(emb[t], h)",
        "            outs.append(h)",
        "        return F.log_softmax(self.decoder(torch.stack(outs)), dim=-1), h",
        "",
    ]
    return "\n".join(lines)


def write_torch_source(model: RNNLM, path: str | Path) -> Path:
    cell = model.cell
    if not isinstance(cell, DerivedCell):
        raise TypeError("only a derived recurrent cell has a PyTorch source target")
    path = Path(path)
    atomic_write(path, torch_source(cell.genotype, model.lm.tokens, model.lm.ninp, model.lm.nhid))
    return path
