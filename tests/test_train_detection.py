"""`nasir train --task detection`: a RetinaNet on a derived backbone trained on COCO-format data on disk.

A tiny set made here (64 x 64 images, red squares and green bars), the DARTS_V2 cells at C = 4 with
three layers, 64-pixel inputs and a 16-wide FPN: a couple of seconds per epoch on one CPU thread.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import EXAMPLES
from PIL import Image

import nasir.train as tr
from nasir.api import load
from nasir.cli import main
from nasir.diagnostics import DiagnosticError
from nasir.targets import detection
from nasir.train import TrainConfig, load_checkpoint, train

SETS = ["C=4", "layers=3"]
SPEC = EXAMPLES / "darts_v2.cell"
SMALL = ["--set", "C=4", "--set", "layers=3", "--min-size", "64", "--max-size", "64", "--fpn-channels", "16"]


def make_coco(root: Path, n: int = 8, split: str = "train", seed: int = 0) -> Path:
    """`n` 64 x 64 PNGs on a grey background, each with one or two boxes: category 1 a red square,
    category 2 a green bar; a COCO instances file for them."""
    g = torch.Generator().manual_seed(seed)
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img = torch.full((64, 64, 3), 96, dtype=torch.uint8)
        for k in range(1 + i % 2):
            cat = 1 + (i + k) % 2
            w, h = (16, 16) if cat == 1 else (24, 10)
            x, y = (int(v) for v in torch.randint(0, 64 - 24, (2,), generator=g))
            img[y : y + h, x : x + w] = torch.tensor([220, 30, 30] if cat == 1 else [30, 200, 40], dtype=torch.uint8)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})  # fmt: skip
        Image.fromarray(img.numpy()).save(root / split / f"{i:03d}.png")
        images.append({"id": i + 1, "file_name": f"{i:03d}.png", "width": 64, "height": 64})
    data = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "bar"}],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, lr=0.01, momentum=0.9, weight_decay=1e-4, grad_clip=10.0, seed=5, set=tuple(SETS),
                min_size=64, max_size=64, fpn_channels=16)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def spec():
    return load(SPEC, overrides=SETS)


def test_cli_trains_two_epochs_with_loss_terms_in_metrics_and_checkpoints(tmp_path, capsys):
    data = make_coco(tmp_path / "coco")
    code, _, err = run(capsys, "train", SPEC, "--task", "detection", "--data", f"coco:{data}", "--out", tmp_path / "run",
                       "--epochs", "2", "--batch-size", "4", "--device", "cpu", *SMALL)  # fmt: skip
    assert code == 0, err
    assert "valid loss" in err and "Traceback" not in err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        for split in ("train", "valid"):
            terms = [r[f"{split}_{k}"] for k in ("loss", "classification", "bbox_regression")]
            assert all(math.isfinite(v) and v > 0 for v in terms), r
            assert terms[0] == pytest.approx(terms[1] + terms[2])
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["task"] == "detection" and ck["state"]["epoch"] == 2
    assert ck["config"]["levels"] == [1, 2]  # the default drops the stride-1 level of the CIFAR macro

    # best.pt carries the detector's settings: it rebuilds, and `nasir compile --target retinanet` exports it.
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["format"] == detection.FORMAT and best["config"]["num_classes"] == 3
    assert best["valid_loss"] == min(r["valid_loss"] for r in records)
    model, _ = detection.load_detector(load(SPEC), tmp_path / "run" / "best.pt")
    with torch.no_grad():
        (det,) = model([torch.rand(3, 64, 64)])
    assert set(det) == {"boxes", "scores", "labels"}


def test_resume_after_an_interruption_equals_the_uninterrupted_run(spec, tmp_path):
    data = f"coco:{make_coco(tmp_path / 'coco')}"  # 8 images: 6 train (2 steps per epoch), 2 held out
    train(spec, data, tmp_path / "a", cfg(), task="detection", device="cpu", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(
            spec, data, tmp_path / "b", cfg(), task="detection", device="cpu", progress=False, stop_after_steps=3
        )  # mid epoch 2
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 1
    train(spec, data, tmp_path / "b", cfg(), task="detection", device="cpu", progress=False, resume=True)
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def metrics(run):
        return [
            {k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        ]

    assert metrics("a") == metrics("b")

    # Another seed is another run (the same seed twice is the comparison above).
    train(
        spec,
        data,
        tmp_path / "c",
        cfg(seed=6, epochs=1, limit_batches=1),
        task="detection",
        device="cpu",
        progress=False,
    )
    c = load_checkpoint(tmp_path / "c" / "last.pt")["model"]
    assert not torch.equal(
        a["head.classification_head.cls_logits.weight"], c["head.classification_head.cls_logits.weight"]
    )


def test_a_val_split_is_the_held_out_set_and_resuming_another_task_is_refused(spec, tmp_path):
    root = make_coco(tmp_path / "coco", n=4)
    make_coco(root, n=2, split="val", seed=1)
    last = train(spec, f"coco:{root}", tmp_path / "run", cfg(epochs=1), task="detection", device="cpu", progress=False)
    assert math.isfinite(last["valid_loss"]) and last["best_valid_loss"] == last["valid_loss"]
    with pytest.raises(DiagnosticError, match="is from a detection run, not classification"):
        train(
            spec,
            "synthetic:16",
            tmp_path / "run",
            cfg(epochs=1, set=("C=4", "layers=3")),
            device="cpu",
            progress=False,
            resume=True,
        )


def test_backbone_starts_from_a_classification_checkpoint(spec, tmp_path):
    from nasir.lower import build

    net = build(spec, overrides=SETS, seed=11)
    torch.save({"model": net.state_dict()}, tmp_path / "cls.pt")
    data = f"coco:{make_coco(tmp_path / 'coco', n=3)}"
    train(
        spec,
        data,
        tmp_path / "run",
        cfg(epochs=0),
        task="detection",
        device="cpu",
        progress=False,
        backbone_weights=tmp_path / "cls.pt",
    )
    got = tr._LAST_MODEL_STATE
    for k, v in net.state_dict().items():
        if k.startswith(("stem.", "cells.0.")):
            assert torch.equal(got["backbone.body." + k], v), k
    other = build(load(SPEC, overrides=["C=8", "layers=3"]), overrides=["C=8", "layers=3"], seed=0)
    torch.save({"model": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(DiagnosticError, match="does not fit the backbone"):
        train(
            spec,
            data,
            tmp_path / "run2",
            cfg(epochs=0),
            task="detection",
            device="cpu",
            progress=False,
            backbone_weights=tmp_path / "other.pt",
        )


# ---- bad data: diagnostics, exit code 2, no traceback --------------------------------------------
def _train_cli(capsys, tmp_path, data, *extra):
    return run(
        capsys,
        "train",
        SPEC,
        "--task",
        "detection",
        "--data",
        data,
        "--out",
        tmp_path / "run",
        "--device",
        "cpu",
        *SMALL,
        *extra,
    )


def test_a_missing_data_path_points_into_the_data_flag(capsys, tmp_path):
    code, _, err = _train_cli(capsys, tmp_path, f"coco:{tmp_path / 'nowhere'}")
    assert code == 2
    assert "<command line>:1:13: error: data path" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_folder_without_the_coco_layout_says_what_it_expects(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = _train_cli(capsys, tmp_path, f"coco:{tmp_path / 'empty'}")
    assert code == 2 and "no COCO training split" in err and "annotations/instances_train.json" in err


def test_bad_annotation_json_reports_its_line_and_column(capsys, tmp_path):
    root = make_coco(tmp_path / "coco", n=2)
    (root / "annotations" / "instances_train.json").write_text('{"images": [\n  {"id": 1,, "file_name": "000.png"}]}')
    code, _, err = _train_cli(capsys, tmp_path, f"coco:{root}")
    assert code == 2 and "Traceback" not in err
    assert (
        f"{root / 'annotations' / 'instances_train.json'}:2:12: error: not a COCO instances file: invalid JSON" in err
    )
    (root / "annotations" / "instances_train.json").write_text('{"annotations": []}')
    code, _, err = _train_cli(capsys, tmp_path, f"coco:{root}")
    assert code == 2 and "not a COCO instances file (missing key 'images')" in err


def test_images_missing_from_the_folder_are_reported_up_front(capsys, tmp_path):
    root = make_coco(tmp_path / "coco", n=3)
    (root / "train" / "001.png").unlink()
    code, _, err = _train_cli(capsys, tmp_path, f"coco:{root}")
    assert code == 2 and "1 image(s) the annotations list are not in" in err and "001.png" in err


def test_data_and_task_must_agree(capsys, tmp_path):
    code, _, err = _train_cli(capsys, tmp_path, "digits")
    assert code == 2 and "--task detection reads COCO-format data" in err
    code, _, err = run(capsys, "train", SPEC, "--task", "detection", "--out", tmp_path / "run")
    assert code == 2 and "--task detection needs COCO-format data" in err
    code, _, err = run(capsys, "train", SPEC, "--data", f"coco:{tmp_path}", "--out", tmp_path / "run")
    assert code == 2 and "coco:PATH holds detection data" in err and "--task detection" in err
    digits = EXAMPLES / "digits.cell"
    root = make_coco(tmp_path / "coco", n=2)
    code, _, err = run(
        capsys, "train", digits, "--task", "detection", "--data", f"coco:{root}", "--out", tmp_path / "run"
    )
    assert code == 2 and "reads RGB images" in err


# ---- the pieces --------------------------------------------------------------------------------
def test_hflip_mirrors_images_and_boxes():
    image = torch.zeros(3, 4, 10)
    image[0, 1, 2] = 1.0
    target = {"boxes": torch.tensor([[2.0, 1.0, 5.0, 3.0]]), "labels": torch.tensor([1])}
    (out,), (t,) = detection.random_hflip([image], [target], 1.0)
    assert out[0, 1, 7] == 1.0 and t["boxes"].tolist() == [[5.0, 1.0, 8.0, 3.0]] and t["labels"].tolist() == [1]
    assert target["boxes"].tolist() == [[2.0, 1.0, 5.0, 3.0]]  # the input is untouched
    (same,), _ = detection.random_hflip([image], [target], 0.0)
    assert torch.equal(same, image)


def test_losses_helper_matches_torchvisions_training_forward(spec):
    model = detection.retinanet(spec, num_classes=3, overrides={"C": 4, "layers": 3}, min_size=64, max_size=64, levels=(1, 2),
                                fpn_channels=16, seed=0).train()  # fmt: skip
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 10.0, 20.0, 30.0], [0.0, 0.0, 64.0, 48.0]]), "labels": torch.tensor([2, 1])}]  # fmt: skip
    want = model(images, targets)
    got = detection.losses(model, images, targets)
    for k in ("classification", "bbox_regression"):
        assert torch.allclose(got[k], want[k]), k


def test_detection_preset_and_default_levels(spec):
    p = TrainConfig.from_preset("detection")
    assert (p.batch_size, p.lr, p.weight_decay, p.min_size, p.fpn_channels) == (8, 0.01, 1e-4, 320, 64)
    from nasir.macro import plan

    assert detection.default_levels(spec, plan(spec, overrides={"C": 4, "layers": 3})) == [1, 2]
    imagenet = load(EXAMPLES / "darts_v2_imagenet.cell", overrides=SETS)
    assert detection.default_levels(imagenet, plan(imagenet, overrides={"C": 4, "layers": 3})) == [0, 1, 2]


def test_compile_retinanet_with_trained_weights_writes_that_detector(spec, tmp_path, capsys, monkeypatch):
    data = f"coco:{make_coco(tmp_path / 'coco', n=3)}"
    train(spec, data, tmp_path / "run", cfg(epochs=1), task="detection", device="cpu", progress=False)
    written = {}
    monkeypatch.setattr(
        detection, "write_module", lambda spec, out, **kw: written.update(kw)
    )  # the export itself is tested elsewhere
    code, _, err = run(
        capsys,
        "compile",
        SPEC,
        "--target",
        "retinanet",
        "--weights",
        tmp_path / "run" / "best.pt",
        "-o",
        tmp_path / "det.pt",
    )
    assert code == 0, err
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert {k: written[k] for k in ("num_classes", "levels", "fpn_channels", "min_size")} == {
        "num_classes": 3,
        "levels": [1, 2],
        "fpn_channels": 16,
        "min_size": 64,
    }
    for k, v in written["model"].state_dict().items():
        assert torch.equal(v, best["state_dict"][k]), k
    code, _, err = run(
        capsys,
        "compile",
        SPEC,
        "--target",
        "retinanet",
        "--weights",
        tmp_path / "run" / "best.pt",
        "-o",
        tmp_path / "d.pt",
        "--set",
        "C=8",
    )
    assert code == 2 and "trained with other network parameters (--set C=4 --set layers=3)" in err


def test_eval_ap_logs_coco_ap_per_epoch_equal_to_nasir_eval_of_the_checkpoint(spec, tmp_path):
    """--eval-ap: every epoch's record carries AP .. APL of the held-out images; the last one equals what
    `nasir eval --task detection` computes from best.pt (one epoch: best = last) on the same split."""
    from nasir.coco_eval import METRICS, eval_checkpoint

    data = make_coco(tmp_path / "coco")
    train(spec, f"coco:{data}", tmp_path / "run", cfg(epochs=1, eval_ap=True), task="detection", device="cpu", progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {m: record[f"valid_{m}"] for m in METRICS}
    assert all(v is None or 0.0 <= v <= 1.0 for v in logged.values()), logged
    metrics, n, _ = eval_checkpoint(SPEC, tmp_path / "run" / "best.pt", f"coco:{data}", overrides=SETS, device="cpu")
    assert n == 2  # 8 images, holdout 0.2 -> 2 held out
    assert logged == {m: None if math.isnan(v) else pytest.approx(v) for m, v in metrics.items()}
    # without the flag the records carry no AP
    train(spec, f"coco:{data}", tmp_path / "plain", cfg(epochs=1), task="detection", device="cpu", progress=False)
    assert not any(k.endswith("AP") for k in json.loads((tmp_path / "plain" / "metrics.jsonl").read_text()))
