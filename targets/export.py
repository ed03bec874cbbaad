"""Serialised targets of a built network: TorchScript, torch.export (.pt2) and ONNX, and parity checks.

Every artifact is an inference graph: the model is exported in eval mode, so the auxiliary head
(training only) and drop-path (training only) are not in it, and BatchNorm uses its running
statistics. Files are written atomically (`nasir.io`): a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nasir.diagnostics import Diagnostic, DiagnosticError
from nasir.io import atomic_write, atomic_write_with

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
MIN_OPSET = 17


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the deprecation notices of torch.jit / the TorchScript ONNX exporter: they are the tools chosen here."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        yield


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; the CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block and restore every submodule's flag afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def to_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path, *, optimize: bool = True) -> Path:
    """Trace `model` (eval mode) and save it for `torch.jit.load`.

    Tracing suits these networks: their control flow depends on the architecture, never on tensor
    values. With `optimize` the trace is frozen: parameters become constants and BN is folded into
    the convolutions. (`torch.jit.optimize_for_inference` is faster still, but its MKL-DNN constants
    do not survive `torch.jit.save` / `load` in this torch version.) The example goes to the
    model's device.
    """
    example = example.to(model_device(model))
    with eval_mode(model), torch.no_grad(), _quiet():
        script = torch.jit.trace(model, example, check_trace=False)
        if optimize:
            script = torch.jit.freeze(script)

    def write(tmp: str) -> None:
        with _quiet():
            torch.jit.save(script, tmp)

    atomic_write_with(path, write)
    return Path(path)


def to_export(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """`torch.export` the model (eval mode, dynamic batch axis) and save the ExportedProgram as a .pt2 file."""
    # torch.export specialises a dimension whose example size is 1; show it a batch of 2.
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    example = example.to(model_device(model))
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with eval_mode(model), torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
    buf = io.BytesIO()  # torch.export.save wants a `.pt2` name or a buffer, not the temporary file's name
    torch.export.save(program, buf)
    atomic_write(path, buf.getvalue())
    return Path(path)


def to_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = MIN_OPSET,
            metadata: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Export to ONNX: input `image` and output `logits` with a dynamic batch axis, checked in full.

    `metadata`: key/value strings stored in the model's `metadata_props` (`read_metadata` reads them
    back), e.g. {"nasir.seed": "2", "nasir.weights": "untrained"}: what the file is and how to check it.

    Uses the TorchScript-based exporter (`dynamo=False`): it needs no onnxscript, which the pinned
    packages lack. BatchNorm is folded into the preceding convolutions (eval mode, constant folding).
    The example goes to the model's device (the graph itself names no device).
    """
    if opset < MIN_OPSET:
        raise ValueError(f"ONNX opset {opset} is too old; nasir emits opset {MIN_OPSET} or newer")
    import onnx

    example = example.to(model_device(model))

    def write(tmp: str) -> None:
        with eval_mode(model), torch.no_grad(), _quiet():
            torch.onnx.export(
                model, (example,), tmp, dynamo=False, export_params=True, opset_version=opset,
                do_constant_folding=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )  # fmt: skip
        if metadata:
            m = onnx.load(tmp)
            for k, v in metadata.items():
                entry = m.metadata_props.add()
                entry.key, entry.value = str(k), str(v)
            onnx.save(m, tmp)
        onnx.checker.check_model(tmp, full_check=True)

    atomic_write_with(path, write)
    return Path(path)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file ({} for other kinds or an unreadable file: its loader says why)."""
    p = Path(path)
    if _kind(p) != "onnx" or not p.is_file():
        return {}
    try:
        import onnx

        m = onnx.load(str(p), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX: load_runner reports it
        return {}
    return {e.key: e.value for e in m.metadata_props}


# ---- loading artifacts and parity ------------------------------------------------------------------
class Runner:
    """numpy in, numpy out; `provider` says what ran it: an ONNX Runtime execution provider
    (CUDAExecutionProvider, CPUExecutionProvider) or "torch (cpu)"."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], provider: str):
        self.fn, self.provider = fn, provider

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.fn(x)


class Parity(dict):
    """{batch size: max-abs difference}, the `provider` the exported model ran on, and `nonfinite`:
    which outputs held NaN or inf (a comparison with NaN is false, so a tolerance alone would pass them)."""

    provider: str = ""
    nonfinite: tuple[str, ...] = ()

    @property
    def finite(self) -> bool:
        return not self.nonfinite and all(np.isfinite(v) for v in self.values())


def onnxruntime():
    """The onnxruntime module (from the CPU or the GPU wheel: the `cpu` / `gpu` extras), or a diagnostic."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DiagnosticError([Diagnostic("ONNX Runtime is not installed",
                                          hint="pip install 'nasir[cpu]', or 'nasir[gpu]' for its CUDA provider (one of them, not both)")]) from None  # fmt: skip
    return ort


def onnx_providers(provider: str = "auto") -> list[str]:
    """ONNX Runtime providers to ask for: auto takes CUDA when this onnxruntime has it (the
    onnxruntime-gpu wheel, `pip install nasir[gpu]`), with the CPU as fallback; cpu or cuda force one."""
    ort = onnxruntime()

    if provider == "cpu":
        return ["CPUExecutionProvider"]
    have = ort.get_available_providers()
    if provider == "cuda" and "CUDAExecutionProvider" not in have:
        raise DiagnosticError([Diagnostic("ONNX Runtime has no CUDA execution provider here (providers: " + ", ".join(have) + ")",
                                          hint="install the GPU wheel in place of the CPU one: pip install 'nasir[gpu]' (see the README)")])  # fmt: skip
    if provider not in ("auto", "cuda"):
        raise ValueError(f"provider must be auto, cpu or cuda, got '{provider}'")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in have else ["CPUExecutionProvider"]


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt2":
        return "export"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith("/archive_format") or "/models/" in n for n in names) and not any("/code/" in n for n in names):
            return "export"
        return "torchscript"
    return "onnx"


def load_runner(path: str | Path, provider: str = "auto") -> tuple[str, Runner, tuple[int, ...] | None]:
    """Open an exported model: (kind, a numpy -> numpy runner, the input shape without batch if the file states it).

    ONNX runs in ONNX Runtime on the provider `onnx_providers(provider)` picks (the runner's
    `provider` is the one the session really uses: ORT falls back to the CPU when CUDA cannot start);
    TorchScript and .pt2 files run in torch on the CPU. Raises a DiagnosticError naming the file when it cannot be read as ONNX, TorchScript or .pt2.
    """
    path = Path(path)
    if not path.is_file():
        raise DiagnosticError([Diagnostic(f"cannot read '{path}': no such file")])
    kind = _kind(path)
    try:
        if kind == "onnx":
            ort = onnxruntime()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()  # follow torch's setting; ORT's default takes every core
            sess = ort.InferenceSession(str(path), opts, providers=onnx_providers(provider))
            inp = sess.get_inputs()[0]
            dims = inp.shape[1:]
            shape = tuple(dims) if all(isinstance(d, int) for d in dims) else None
            return kind, Runner(lambda x: sess.run(None, {inp.name: x})[0], sess.get_providers()[0]), shape
        with _quiet():
            module = torch.export.load(str(path)).module() if kind == "export" else torch.jit.load(str(path), map_location="cpu")
    except DiagnosticError:
        raise
    except Exception as e:  # the model file is corrupt or of another kind: bad input, not a bug
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DiagnosticError([Diagnostic(f"cannot load model '{path}' as {kind}: {reason}")]) from None

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).cpu().numpy()

    return kind, Runner(run, "torch (cpu)"), None


def parity(model: nn.Module, path: str | Path, batches: Sequence[int] = (1, 8), *,
           input_shape: Sequence[int] | None = None, seed: int = 0, provider: str = "auto") -> Parity:  # fmt: skip
    """Max-abs difference between the exported model and `model` in eval mode, per batch size, and
    the provider the exported model ran on (`.provider`). `model` may be on any device.

    Inputs are seeded standard-normal images (drawn on the CPU, so every device sees the same
    numbers); `input_shape` (C, H, W) is needed unless the file states it.
    """
    _, run, file_shape = load_runner(path, provider)
    shape = tuple(input_shape) if input_shape is not None else file_shape
    if file_shape is not None and input_shape is not None and tuple(file_shape) != tuple(input_shape):
        raise DiagnosticError([Diagnostic(f"'{path}' takes inputs of shape {tuple(file_shape)}, the spec's network {tuple(input_shape)}",
                                          hint="verify against the spec (and --set values) the model was compiled from")])  # fmt: skip
    if shape is None:
        raise ValueError(f"the input shape of '{path}' is not recorded in the file; pass input_shape")
    gen = torch.Generator().manual_seed(seed)
    out = Parity()
    out.provider = run.provider
    dev = model_device(model)
    with eval_mode(model), torch.no_grad():
        for b in batches:
            x = torch.randn(b, *shape, generator=gen)
            ref = model(x.to(dev)).cpu().numpy()
            try:
                got = run(x.numpy())
            except Exception as e:  # noqa: BLE001 - e.g. a TorchScript model for other input channels
                reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise DiagnosticError([Diagnostic(f"'{path}' cannot run on the spec's input {(b, *shape)}: {reason}",
                                                  hint="verify against the spec (and --set values) the model was compiled from")]) from None  # fmt: skip
            if got.shape != ref.shape:
                raise DiagnosticError([Diagnostic(f"'{path}' returns shape {got.shape}, PyTorch {ref.shape} at batch {b}")])
            bad = [who for who, a in (("the exported model", got), ("PyTorch", ref)) if not np.isfinite(a).all()]
            out.nonfinite += tuple(f"{who}'s output at batch {b} holds NaN or inf" for who in bad)
            out[b] = float(np.abs(got - ref).max())
    return out


def onnx_parity(model: nn.Module, path: str | Path, batches: Sequence[int] = (1, 8)) -> float:
    """ONNX Runtime vs PyTorch eval output: the max-abs difference over the batch sizes."""
    return max(parity(model, path, batches).values())
