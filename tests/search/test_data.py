"""Data specs and loaders of the search (docs/cli.md, "Data specs")."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from nasir.data import classification as D
from nasir.diagnostics import DiagnosticError


def test_data_specs_parse():
    assert D.parse_data_spec("digits") == D.DataSpec("digits", text="digits")
    assert D.parse_data_spec("synthetic").n == D.SYNTHETIC_DEFAULT
    assert D.parse_data_spec("synthetic:40").n == 40
    assert D.parse_data_spec("cifar10:/data/c10").path == "/data/c10"
    assert D.parse_data_spec("folder:imgs:x").path == "imgs:x"  # only the first colon separates


@pytest.mark.parametrize(("text", "message", "col"), [
    ("cifar", "unknown data set 'cifar'", 8),
    ("synthetic:ten", "needs a whole number N >= 2, got 'ten'", 18),
    ("cifar10:", "'cifar10' needs a path", 8),
    ("digits:3", "'digits' takes no argument", 14),
])  # fmt: skip
def test_bad_data_specs_point_into_the_flag(text, message, col):
    with pytest.raises(DiagnosticError, match=message) as info:
        D.parse_data_spec(text)
    d = info.value.diagnostics[0]
    assert (d.span.file, d.span.line, d.span.col) == ("<command line>", 1, col)
    if text == "cifar":
        assert d.hint == "did you mean 'cifar10'?"


@pytest.mark.parametrize("spec", ["cifar10:/no/such/dir", "folder:/no/such/dir"])
def test_a_missing_data_path_is_a_diagnostic(spec):
    with pytest.raises(DiagnosticError, match="does not exist") as info:
        D.load_data(spec, (3, 32, 32), 10)
    assert info.value.render().startswith("<command line>:1:")


def test_digits_is_the_embedded_set_normalised_and_reshaped_on_demand():
    d = D.load_data("digits", (1, 8, 8), 10)
    assert (len(d), d.classes, tuple(d.x.shape)) == (1797, 10, (1797, 1, 8, 8))
    assert abs(d.x.mean().item()) < 1e-5 and abs(d.x.std().item() - 1) < 1e-5
    assert torch.bincount(d.y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    big = D.load_data("digits", (3, 16, 16), 10)
    assert tuple(big.x.shape) == (1797, 3, 16, 16) and "8x8" in big.note
    with pytest.raises(DiagnosticError, match="10 classes but the network classifies 5"):
        D.load_data("digits", (1, 8, 8), 5)


def test_synthetic_is_the_same_set_every_time_and_learnable_by_prototype():
    a = D.load_data("synthetic:60", (1, 8, 8), 10)
    b = D.load_data("synthetic:60", (1, 8, 8), 10)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and tuple(a.x.shape) == (60, 1, 8, 8)
    # Nearest class mean recovers most labels: the set carries signal.
    means = torch.stack([a.x[a.y == k].mean(0) for k in range(10)])
    pred = torch.cdist(a.x.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == a.y).float().mean() > 0.8


def test_halves_partition_the_set_and_the_epoch_order_is_a_function_of_seed_and_epoch():
    w, a = D.split_halves(11, seed=2)
    assert len(w) == 5 and len(a) == 6 and sorted(torch.cat([w, a]).tolist()) == list(range(11))
    o1 = D.epoch_order(w, 2, 3, 0)
    assert torch.equal(o1, D.epoch_order(w, 2, 3, 0)) and sorted(o1.tolist()) == w.tolist()
    orders = {tuple(D.epoch_order(torch.arange(50), 2, e, s).tolist()) for e in range(3) for s in range(2)}
    assert len(orders) == 6


def test_crop_and_flip_match_a_per_image_loop():
    x = torch.arange(2 * 2 * 5 * 5, dtype=torch.float32).reshape(2, 2, 5, 5)
    out = D._crop_flip(x, 2, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    flip = torch.rand(2, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        want = padded[i, :, dy[i] : dy[i] + 5, dx[i] : dx[i] + 5]
        want = want.flip(-1) if flip[i] else want
        assert torch.equal(out[i], want)


def test_cifar10_reads_torchvisions_python_format(tmp_path, monkeypatch):
    import torchvision

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(range(4))}
        (root / name).write_bytes(pickle.dumps(batch))
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    # The fake files fail torchvision's md5 check; the format is what is under test.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    d = D.load_data(f"cifar10:{tmp_path}", (3, 32, 32), 10)
    assert (len(d), d.augment, tuple(d.x.shape)) == (20, True, (20, 3, 32, 32))
    raw = pickle.loads((root / "data_batch_1").read_bytes())["data"][0].reshape(3, 32, 32) / 255.0
    mean, std = torch.tensor(D.CIFAR_MEAN)[:, None, None], torch.tensor(D.CIFAR_STD)[:, None, None]
    torch.testing.assert_close(d.x[0], ((torch.tensor(raw) - mean) / std).float())
    x, y = d.batch(torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    assert tuple(x.shape) == (2, 3, 32, 32) and y.tolist() == [0, 1]
    # The folder itself works too; a folder without the batches is an error.
    assert len(D.load_data(f"cifar10:{root}", (3, 32, 32), 10)) == 20
    with pytest.raises(DiagnosticError, match="no CIFAR-10 under"):
        D.load_data(f"cifar10:{tmp_path / 'cifar-10-batches-py' / '..' / '..'}", (3, 32, 32), 10)


def test_image_folder_is_resized_to_the_network_input(tmp_path):
    from PIL import Image

    for k, cls in enumerate(("cat", "dog")):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((12, 10, 3), 40 * k + i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = D.load_data(f"folder:{tmp_path}", (1, 8, 8), 10)
    assert (len(d), d.classes) == (6, 2)
    x, y = d.batch(torch.tensor([0, 5]))
    assert tuple(x.shape) == (2, 1, 8, 8) and y.tolist() == [0, 1]
    torch.testing.assert_close(x[1], torch.full((1, 8, 8), (42 / 255 - 0.5) / 0.5))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DiagnosticError, match="no images under"):
        D.load_data(f"folder:{empty}", (1, 8, 8), 10)


def test_an_unreadable_image_in_a_folder_is_skipped_with_a_warning_that_names_it(tmp_path):
    from PIL import Image

    (tmp_path / "cat").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 10 * i, dtype=np.uint8)).save(tmp_path / "cat" / f"{i}.png")
    bad = tmp_path / "cat" / "1.png"
    bad.write_bytes(b"not a png at all")  # ImageFolder lists it (the suffix), PIL cannot read it
    d = D.load_data(f"folder:{tmp_path}", (3, 8, 8), 10)
    with pytest.warns(UserWarning, match=r"skipping an unreadable image '.*1\.png'"):
        x, y = d.batch(torch.tensor([0, 1, 2]))
    # The batch keeps its size; the unreadable image 1 is replaced by the next readable one, image 2 (value 20).
    assert tuple(x.shape) == (3, 3, 8, 8) and y.tolist() == [0, 0, 0]
    torch.testing.assert_close(x[1], x[2])
    torch.testing.assert_close(x[2], torch.full((3, 8, 8), (20 / 255 - 0.5) / 0.5))
