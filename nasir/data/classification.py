"""Classification data for search and training: `digits`, `synthetic[:N]`, `cifar10:PATH`, `folder:PATH`.

- `digits`: scikit-learn's embedded digits (1797 grey 8 x 8 images, 10 classes); no download.
- `synthetic[:N]`: N (default 512) images of the network's input shape, drawn around one random
  prototype per class; a fixed generator makes the set the same in every run. For tests.
- `cifar10:PATH`: CIFAR-10's training set in torchvision's python format under PATH (the folder
  holding `cifar-10-batches-py`, or that folder itself); never downloads. As the DARTS search, batches
  are augmented by a random 32 x 32 crop of the 4-pixel zero-padded image and a horizontal flip.
- `folder:PATH`: a torchvision ImageFolder (one sub-folder per class), resized to the network input.

Images are brought to the network's input shape: grey to colour by repetition, colour to grey by the
channel mean, other sizes by bilinear resizing; the result says what was done (`Data.note`).
Every set is indexable by a tensor of indices; the search draws the order and the augmentation from
generators seeded by (seed, epoch, step), so a resumed run sees the same batches.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F

from nasir.diagnostics import Diagnostic, DiagnosticError
from nasir.source import SourceFile

KINDS = ("digits", "synthetic", "cifar10", "folder")
SYNTHETIC_DEFAULT = 512
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@attrs.frozen
class DataSpec:
    kind: str
    path: str | None = None
    n: int | None = None
    text: str = ""


def _spec_error(text: str, message: str, start: int = 0, end: int | None = None, hint: str | None = None) -> DiagnosticError:
    src = SourceFile("<command line>", f"--data {text}")
    return DiagnosticError([Diagnostic(message, src.span(7 + start, 7 + (len(text) if end is None else end)), hint)])


def parse_data_spec(text: str) -> DataSpec:
    """`digits` | `synthetic[:N]` | `cifar10:PATH` | `folder:PATH`; errors point into the flag's text."""
    hint = "data specs: digits, synthetic[:N], cifar10:PATH, folder:PATH"
    kind, colon, rest = text.partition(":")
    if kind == "digits" and not colon:
        return DataSpec("digits", text=text)
    if kind == "synthetic":
        if not colon:
            return DataSpec("synthetic", n=SYNTHETIC_DEFAULT, text=text)
        if not re.fullmatch(r"[0-9]+", rest) or int(rest) < 2:
            raise _spec_error(text, f"synthetic[:N] needs a whole number N >= 2, got '{rest}'", len(kind) + 1)
        return DataSpec("synthetic", n=int(rest), text=text)
    if kind in ("cifar10", "folder"):
        if not rest:
            raise _spec_error(text, f"'{kind}' needs a path: {kind}:PATH", 0, None, hint)
        return DataSpec(kind, path=rest, text=text)
    if kind == "digits":
        raise _spec_error(text, "'digits' takes no argument", len(kind))
    from nasir.diagnostics import did_you_mean

    raise _spec_error(text, f"unknown data set '{kind}'", 0, len(kind), did_you_mean(kind, KINDS) or hint)


@attrs.define
class Data:
    """A labelled image set, indexable by index tensors: `batch(idx, generator) -> (x, y)`."""

    name: str
    classes: int
    shape: tuple[int, int, int]
    x: torch.Tensor | None = None  # (N, C, H, W), float, normalised
    y: torch.Tensor | None = None
    dataset: object = None  # a lazily read torchvision dataset (ImageFolder)
    augment: bool = False  # CIFAR-style crop with padding 4 and horizontal flip
    note: str = ""

    def __len__(self) -> int:
        return len(self.y) if self.y is not None else len(self.dataset)  # type: ignore[arg-type]

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None, *, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels at `idx`; augmented (if the set augments) only when `train`."""
        if self.x is not None:
            x, y = self.x[idx], self.y[idx]  # type: ignore[index]
        else:
            items = [_readable_item(self.dataset, int(i)) for i in idx]
            x = torch.stack([_fit(t.unsqueeze(0), self.shape)[0] for t, _ in items])
            y = torch.tensor([int(c) for _, c in items])
        if self.augment and train:
            x = _crop_flip(x, 4, generator)
        return x, y


def _readable_item(dataset, i: int):
    """dataset[i], or, when that image cannot be read (a corrupt or truncated file), a warning that names
    the file and the next readable image in index order in its place: the batch keeps its size and a
    resumed run sees the same substitute."""
    n = len(dataset)
    for k in range(n):
        j = (i + k) % n
        try:
            return dataset[j]
        except (OSError, ValueError) as e:  # PIL: UnidentifiedImageError is an OSError; truncated data too
            path = dataset.samples[j][0] if hasattr(dataset, "samples") else f"item {j}"
            if path not in _UNREADABLE:
                _UNREADABLE.add(path)
                warnings.warn(f"skipping an unreadable image '{path}': {type(e).__name__}: {e}", stacklevel=2)
    raise DiagnosticError([Diagnostic("no image of the data set can be read", None, "check the files under the data folder")])


_UNREADABLE: set[str] = set()


def _fit(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Bring (N, C, H, W) to the network's (C, H, W): repeat grey, average colour, resize bilinearly."""
    c, h, w = shape
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif c == 1:
            x = x.mean(1, keepdim=True)
        else:
            raise DiagnosticError([Diagnostic(f"cannot turn {x.shape[1]}-channel images into the network's {c} channels")])
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x.contiguous()


def _crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop of the zero-padded image at its original size, then a random horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


def _note(what: str, src: tuple[int, ...], shape: tuple[int, int, int]) -> str:
    if tuple(src) == tuple(shape):
        return ""
    return f"{what}: {'x'.join(map(str, src))} images brought to the network's {'x'.join(map(str, shape))}"


def _check_classes(name: str, found: int, classes: int) -> None:
    if classes and found > classes:
        raise DiagnosticError([Diagnostic(f"the data '{name}' has {found} classes but the network classifies {classes}",
                                          hint="set the network's class count, e.g. --set classes=" + str(found))])  # fmt: skip


def digits(shape: tuple[int, int, int], classes: int) -> Data:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.long)
    _check_classes("digits", 10, classes)
    return Data("digits", 10, shape, _fit(x, shape), y, note=_note("digits", (1, 8, 8), shape))


def synthetic(n: int, shape: tuple[int, int, int], classes: int) -> Data:
    """Prototype-plus-noise images: learnable, and identical in every run (fixed generator)."""
    k = max(2, classes or 10)
    g = torch.Generator().manual_seed(20240611)
    protos = torch.randn(k, *shape, generator=g)
    y = torch.arange(n) % k
    y = y[torch.randperm(n, generator=g)]
    x = protos[y] + 0.8 * torch.randn(n, *shape, generator=g)
    return Data(f"synthetic:{n}", k, shape, x, y)


def _missing(spec: DataSpec, message: str, hint: str | None = None) -> DiagnosticError:
    return _spec_error(spec.text, message, len(spec.kind) + 1, None, hint)


def cifar10(spec: DataSpec, shape: tuple[int, int, int], classes: int) -> Data:
    import torchvision

    root = Path(spec.path).expanduser()  # type: ignore[arg-type]
    if not root.exists():
        raise _missing(spec, f"data path '{spec.path}' does not exist")
    if root.name == "cifar-10-batches-py":
        root = root.parent
    if not (root / "cifar-10-batches-py").is_dir():
        raise _missing(spec, f"no CIFAR-10 under '{spec.path}'",
                       "expected the python version: PATH/cifar-10-batches-py/data_batch_1 .. 5 (nasir never downloads)")  # fmt: skip
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=True, download=False)
    except (RuntimeError, OSError) as e:
        raise _missing(spec, f"cannot read CIFAR-10 under '{spec.path}': {e}") from None
    _check_classes("cifar10", 10, classes)
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255.0)
    mean, std = torch.tensor(CIFAR_MEAN)[:, None, None], torch.tensor(CIFAR_STD)[:, None, None]
    x = (x - mean) / std
    y = torch.tensor(ds.targets, dtype=torch.long)
    return Data("cifar10", 10, shape, _fit(x, shape), y, augment=True, note=_note("cifar10", (3, 32, 32), shape))


def folder(spec: DataSpec, shape: tuple[int, int, int], classes: int) -> Data:
    import torchvision
    from torchvision import transforms

    root = Path(spec.path).expanduser()  # type: ignore[arg-type]
    if not root.is_dir():
        raise _missing(spec, f"data folder '{spec.path}' does not exist" if not root.exists() else f"'{spec.path}' is not a folder")
    tf = transforms.Compose([transforms.Resize(shape[1:]), transforms.ToTensor(), transforms.Normalize(0.5, 0.5)])
    try:
        ds = torchvision.datasets.ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise _missing(spec, f"no images under '{spec.path}': {e}", "expected PATH/CLASS/IMAGE files (torchvision ImageFolder)") from None
    _check_classes(spec.text, len(ds.classes), classes)
    return Data(f"folder:{spec.path}", len(ds.classes), shape, dataset=ds)


def load_data(text: str | DataSpec, shape: tuple[int, int, int], classes: int = 0) -> Data:
    """The data named by a data spec, shaped for a network with input `shape` and `classes` outputs."""
    spec = parse_data_spec(text) if isinstance(text, str) else text
    if spec.kind == "digits":
        return digits(shape, classes)
    if spec.kind == "synthetic":
        return synthetic(spec.n or SYNTHETIC_DEFAULT, shape, classes)
    if spec.kind == "cifar10":
        return cifar10(spec, shape, classes)
    return folder(spec, shape, classes)


def split_halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The search's two halves of the training set: weights, then architecture (DARTS train_portion 0.5)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    half = n // 2
    return perm[:half].sort().values, perm[half:].sort().values


def epoch_order(indices: torch.Tensor, seed: int, epoch: int, stream: int) -> torch.Tensor:
    """The order of one epoch: a function of (seed, epoch, stream) alone, so a resumed run repeats it."""
    g = torch.Generator().manual_seed(_mix(seed, epoch, stream))
    return indices[torch.randperm(len(indices), generator=g)]


def batch_generator(seed: int, epoch: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(seed, epoch, step, stream, 7))


def _mix(*xs: int) -> int:
    h = 1469598103934665603
    for x in xs:
        h = ((h ^ (x & 0xFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) indices of `n` items: a seeded `fraction` held out (at least one), both sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    k = max(1, int(round(n * fraction)))
    return perm[k:].sort().values, perm[:k].sort().values
