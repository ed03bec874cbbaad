"""Tests of nasir.targets.detection: feature levels from the IR, the RetinaNet on a nasir backbone
(training on synthetic boxes, torchvision's output format), its TorchScript and ONNX artefacts,
and the COCO-format loader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import EXAMPLES
from PIL import Image

from nasir.api import load
from nasir.data import coco
from nasir.diagnostics import DiagnosticError
from nasir.macro import plan
from nasir.targets import detection
from nasir.targets.network import build

SMALL = {"C": 8, "layers": 5}
SMALL_SET = ["C=8", "layers=5"]

NB201_DERIVED = """
cell nbcell {
  inputs x
  n1 = nor_conv_3x3(x)
  n2 = skip_connect(x) + nor_conv_1x1(n1)
  n3 = avg_pool_3x3(n2) + nor_conv_3x3(x)
  output n3
}
network nb201(C = 4, N = 2, classes = 10) {
  input (3, 32, 32)
  stem  conv3x3(C), bn
  stack N cells(C): nbcell
  residual(2 * C)
  stack N cells(2 * C): nbcell
  residual(4 * C)
  stack N cells(4 * C): nbcell
  head  bn, relu, global_avg_pool, linear(classes)
}
"""


@pytest.fixture(scope="module")
def darts():
    return load(EXAMPLES / "darts_v2.cell", overrides=SMALL_SET)


def _small_detector(spec, **kw):
    # levels (1, 2): the stride-2 and stride-4 levels; the stride-1 level would quadruple the head cost.
    kw = {"num_classes": 3, "overrides": SMALL, "min_size": 64, "max_size": 64, "levels": (1, 2),
          "fpn_channels": 32, "seed": 0, **kw}  # fmt: skip
    return detection.retinanet(spec, **kw)


# ---------------------------------------------------------------------------------------------
# Feature levels
# ---------------------------------------------------------------------------------------------


def test_darts_cifar_levels_are_cells_before_each_reduction_and_the_last_with_concat_channels(darts):
    # layers = 5: reduction cells at 5 // 3 = 1 and 2 * 5 // 3 = 3; C doubles at each (8, 16, 32);
    # a DARTS_V2 cell concatenates 4 nodes, so the levels after cells 0, 2, 4 are 32, 64, 128 wide.
    levels = detection.feature_levels(darts, plan(darts, overrides=SMALL))
    assert [(lv.name, lv.index, lv.channels, lv.stride) for lv in levels] == [
        ("0", 0, 32, 1), ("1", 2, 64, 2), ("2", 4, 128, 4)]  # fmt: skip


def test_imagenet_macro_levels_start_at_the_stems_stride_of_8():
    spec = load(EXAMPLES / "darts_v2_imagenet.cell", overrides=SMALL_SET)
    levels = detection.feature_levels(spec, plan(spec, overrides=SMALL))
    assert [(lv.index, lv.channels, lv.stride) for lv in levels] == [(0, 32, 8), (2, 64, 16), (4, 128, 32)]


def test_nb201_levels_end_the_stages_before_each_residual_block():
    spec = load(NB201_DERIVED, name="nb.cell")
    # body: cell, cell, residual(8), cell, cell, residual(16), cell, cell; single-node output -> C.
    levels = detection.feature_levels(spec, plan(spec))
    assert [(lv.index, lv.channels, lv.stride) for lv in levels] == [(1, 4, 1), (4, 8, 2), (7, 16, 4)]


@pytest.mark.parametrize(
    ("path", "overrides", "text"),
    [
        (EXAMPLES / "darts_v2.cell", SMALL, None),
        (EXAMPLES / "darts_v2_imagenet.cell", SMALL, None),
        (None, None, NB201_DERIVED),
    ],  # fmt: skip
    ids=["darts-cifar", "darts-imagenet", "nb201"],
)
def test_backbone_maps_equal_network_cell_outputs_with_ir_channels_and_strides(path, overrides, text):
    spec = load(path, overrides=[f"{k}={v}" for k, v in overrides.items()]) if path else load(text, name="nb.cell")
    p = plan(spec, overrides=overrides)
    levels = detection.feature_levels(spec, p)
    net = build(spec, p, seed=0).eval()
    backbone = detection.NasBackbone(net, levels).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = backbone(x)
        _, _, outs = net.features(x)
    assert list(maps) == [lv.name for lv in levels]
    for lv in levels:
        assert maps[lv.name].shape == (2, lv.channels, 64 // lv.stride, 64 // lv.stride)
        assert torch.equal(maps[lv.name], outs[lv.index])


def test_backbone_state_dict_names_are_the_networks(darts):
    net = build(darts, plan(darts, overrides=SMALL), seed=0)
    backbone = detection.NasBackbone(net, detection.feature_levels(darts, plan(darts, overrides=SMALL)))
    missing, unexpected = backbone.load_state_dict(net.state_dict(), strict=False)
    assert missing == []
    assert unexpected and all(k.startswith("classifier.") for k in unexpected)


def test_levels_outside_the_network_are_a_diagnostic(darts):
    with pytest.raises(DiagnosticError, match=r"levels \[3\] do not name .* 0\.\.2"):
        _small_detector(darts, levels=(3,))


# ---------------------------------------------------------------------------------------------
# Training and inference
# ---------------------------------------------------------------------------------------------


def _synthetic_boxes(n: int, seed: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """64 x 64 dark images with 1-2 bright rectangles; label 1 is drawn red, label 2 green."""
    g = torch.Generator().manual_seed(seed)

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=g))

    images, targets = [], []
    for _ in range(n):
        image = 0.05 * torch.rand(3, 64, 64, generator=g)
        boxes, labels = [], []
        for _ in range(randint(1, 3)):
            w, h = randint(12, 28), randint(12, 28)
            x, y, label = randint(0, 64 - w), randint(0, 64 - h), randint(1, 3)
            image[label - 1, y : y + h, x : x + w] = 1.0
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


@pytest.mark.slow
def test_retinanet_training_on_synthetic_boxes_lowers_the_loss_and_inference_has_torchvision_format(darts):
    torch.manual_seed(0)
    model = _small_detector(darts)
    images, targets = _synthetic_boxes(4, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    totals = []
    for _ in range(30):
        losses = model(images, targets)
        assert set(losses) == {"classification", "bbox_regression"}
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        # batch statistics of 4 images make a few steps spike; clipping keeps the run monotone enough
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        totals.append(total.item())
    # Seeds 0, 1, 2 end at 0.29, 0.37, 0.42 of the starting loss; 0.6 leaves a clear margin.
    first, last = np.mean(totals[:3]), np.mean(totals[-3:])
    assert last < 0.6 * first, totals

    model.eval()
    model.score_thresh = 0.0  # a 30-step model is not confident; the format is what is checked
    with torch.no_grad():
        out = model(images[:2])
    assert isinstance(out, list) and len(out) == 2
    for det in out:
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert n > 0
        assert det["boxes"].shape == (n, 4) and det["boxes"].dtype == torch.float32
        assert det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert det["labels"].dtype == torch.int64
        assert ((det["labels"] >= 0) & (det["labels"] < 3)).all()
        assert (det["boxes"][:, 2:] >= det["boxes"][:, :2]).all()
        assert (det["boxes"] >= 0).all() and (det["boxes"] <= 64).all()  # in input pixels
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


# ---------------------------------------------------------------------------------------------
# Artefacts: TorchScript, state_dict, ONNX
# ---------------------------------------------------------------------------------------------


def _sorted_rows(boxes, scores, labels) -> np.ndarray:
    rows = np.concatenate([np.asarray(boxes), np.asarray(scores)[:, None], np.asarray(labels)[:, None]], 1)
    return rows[np.lexsort(rows.T[::-1])].astype(np.float64)


def test_written_scripted_state_dict_and_onnx_detectors_match_the_eager_one(darts, tmp_path):
    model = _small_detector(darts, score_thresh=0.0, detections_per_img=40)
    # torchvision's head init (std 0.01 towers, prior bias) gives every anchor the same score, which
    # makes the top-k a tie-break; wider weights give distinct scores to compare.
    torch.manual_seed(1)
    for m in model.head.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    model.eval()
    written = detection.write_module(darts, tmp_path / "det.pt", num_classes=3, overrides=SMALL, min_size=64,
                                     max_size=64, levels=(1, 2), fpn_channels=32, model=model,
                                     onnx_path=tmp_path / "det.onnx")  # fmt: skip
    assert written == [tmp_path / "det.pt", tmp_path / "det.state_dict.pt", tmp_path / "det.onnx"]

    extra = {"nasir.json": ""}
    scripted = torch.jit.load(str(tmp_path / "det.pt"), _extra_files=extra)
    meta = json.loads(extra["nasir.json"])
    assert meta["format"] == detection.FORMAT and meta["config"]["levels"] == [1, 2]

    saved = torch.load(tmp_path / "det.state_dict.pt", weights_only=True)
    assert saved["config"]["score_thresh"] == 0.0 and saved["config"]["detections_per_img"] == 40
    rebuilt = detection.retinanet(darts, **saved["config"])
    rebuilt.load_state_dict(saved["state_dict"])
    rebuilt.eval()

    session = ort.InferenceSession(str(tmp_path / "det.onnx"))
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels"]
    torch.manual_seed(2)
    for shape in [(3, 64, 64), (3, 96, 128)]:  # the ONNX graph was traced at 64 x 64
        x = torch.rand(*shape)
        with torch.no_grad():
            ref = model([x])[0]
            _, script_out = scripted([x])
            again = rebuilt([x])[0]
        want = _sorted_rows(ref["boxes"], ref["scores"], ref["labels"])
        assert want.shape == (40, 6)
        for det in (script_out[0], again):
            np.testing.assert_allclose(_sorted_rows(det["boxes"], det["scores"], det["labels"]), want, atol=1e-4)
        boxes, scores, labels = session.run(None, {"image": x.numpy()})
        assert labels.dtype == np.int64
        np.testing.assert_allclose(_sorted_rows(boxes, scores, labels), want, atol=1e-3)


def test_write_module_refuses_a_model_built_with_other_settings(darts, tmp_path):
    model = _small_detector(darts)  # levels (1, 2)
    with pytest.raises(DiagnosticError, match="not built with these settings"):
        detection.write_module(darts, tmp_path / "det.pt", num_classes=3, overrides=SMALL, fpn_channels=32, model=model)
    assert list(tmp_path.iterdir()) == []


def test_onnx_exporter_failure_is_a_diagnostic_and_leaves_no_file(darts, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::foo' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(DiagnosticError, match=r"could not be exported to ONNX: RuntimeError: .*aten::foo"):
        detection.write_onnx(_small_detector(darts), tmp_path / "det.onnx")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# COCO-format data
# ---------------------------------------------------------------------------------------------


def _tiny_coco(root: Path, split: str = "val") -> None:
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    a = np.zeros((30, 40, 3), dtype=np.uint8)
    a[6, 5] = (255, 0, 0)  # row y = 6, column x = 5: the top-left corner of the first box
    Image.fromarray(a).save(root / split / "a.png")
    Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8)).save(root / split / "b.png")
    Image.fromarray(np.full((20, 24), 255, dtype=np.uint8)).save(root / split / "c.png")
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 3, "file_name": "b.png", "width": 32, "height": 32},
                   {"id": 9, "file_name": "c.png", "width": 24, "height": 20}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [5, 6, 10, 8], "area": 80, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [20.5, 10, 15, 12], "area": 180, "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 3, "bbox": [30, 20, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 5, "image_id": 9, "category_id": 3, "bbox": [2, 3, 0, 5], "area": 0, "iscrowd": 0},
            {"id": 6, "image_id": 9, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "square"}, {"id": 3, "name": "blob"}],
    }  # fmt: skip
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def test_coco_loader_converts_xywh_to_xyxy_and_maps_category_ids_to_contiguous_labels(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # the JSON reader, as here
    _tiny_coco(tmp_path)
    ds = coco.coco_dataset(tmp_path, "val")
    assert isinstance(ds, coco.CocoJson)
    assert len(ds) == 3 and ds.num_classes == 3 and ds.categories == {1: "square", 3: "blob"}
    assert ds.labels_of == {1: 1, 3: 2}  # sparse category ids -> contiguous labels (issue 14, item 14)
    by_id = {int(t["image_id"]): (im, t) for im, t in (ds[i] for i in range(len(ds)))}
    image, t = by_id[7]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert image[:, 6, 5].tolist() == [1.0, 0.0, 0.0] and float(image.sum()) == 1.0
    # crowd dropped; the box over the right/bottom edge clipped to the 40 x 30 image
    assert t["boxes"].tolist() == [[5, 6, 15, 14], [20.5, 10, 35.5, 22], [30, 20, 40, 30]]
    assert t["labels"].tolist() == [1, 2, 2] and t["labels"].dtype == torch.int64
    image, t = by_id[3]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    image, t = by_id[9]
    assert image.shape == (3, 20, 24)  # a grayscale PNG becomes RGB
    assert t["boxes"].tolist() == [[1, 2, 4, 6]] and t["labels"].tolist() == [1]  # zero-width box dropped


def test_coco_loader_uses_torchvision_cocodetection_with_the_same_items_when_pycocotools_is_there(tmp_path):
    pytest.importorskip("pycocotools")
    _tiny_coco(tmp_path)
    ds = coco.coco_dataset(tmp_path, "val")
    assert isinstance(ds, coco.CocoDetectionTargets)
    plain = coco.CocoJson(tmp_path / "val", tmp_path / "annotations" / "instances_val.json")
    for image_id in (3, 7, 9):
        (a, ta), (b, tb) = ds[ds.ids.index(image_id)], plain[plain.ids.index(image_id)]
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])


def test_coco_batches_train_the_detector(darts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    _tiny_coco(tmp_path)
    ds = coco.coco_dataset(tmp_path, "val")
    images, targets = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=coco.collate)))
    model = _small_detector(darts, num_classes=ds.num_classes).train()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_coco_loader_reports_missing_files_and_bad_json(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(DiagnosticError, match=r"instances_train\.json.* not found"):
        coco.coco_dataset(tmp_path, "train")
    (tmp_path / "train").mkdir()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text("{not json")
    with pytest.raises(DiagnosticError, match="not a COCO instances file"):
        coco.coco_dataset(tmp_path, "train")


# ---------------------------------------------------------------------------------------------
# A detector on another device (a model on `meta` stands for one on a GPU; no GPU here)
# ---------------------------------------------------------------------------------------------


class _CapturedError(Exception):
    pass


@pytest.mark.parametrize("what", ["torchscript", "onnx"])
def test_the_exporters_trace_a_device_model_on_an_example_on_its_device(darts, what, tmp_path, monkeypatch):
    seen = []

    def capture(model, args, *a, **k):
        seen.append(args[0][0] if what == "onnx" else args)  # write_onnx passes ([image],)
        raise _CapturedError

    monkeypatch.setattr(*((torch.onnx, "export") if what == "onnx" else (torch.jit, "trace")), capture)
    model = _small_detector(darts).to("meta")
    with pytest.raises(_CapturedError if what == "torchscript" else DiagnosticError):
        if what == "onnx":
            detection.write_onnx(model, tmp_path / "d.onnx")
        else:
            detection.script_eval(model)
    assert [x.device.type for x in seen] == ["meta"]
    assert tuple(seen[0].shape[-3:]) == (3, 64, 64)  # the image size follows the model's min_size (64)


@pytest.mark.parametrize("change, message, quoted", [
    (lambda d: d["images"][0].update(file_name="../../../etc/passwd"), "image file_name '../../../etc/passwd' leaves the image folder",
     '"file_name": "../../../etc/passwd"'),
    (lambda d: d["images"][0].update(file_name="/etc/passwd"), "image file_name '/etc/passwd' leaves the image folder", '"file_name": "/etc/passwd"'),
    (lambda d: d["annotations"][0].update(category_id=10**12), "category_id 1000000000000 is not one of the file's categories",
     '"category_id": 1000000000000'),
    (lambda d: d["annotations"][0].pop("category_id"), "category_id None is not one of the file's categories", None),
    (lambda d: d["annotations"][1].update(bbox="oops"), "bbox must be [x, y, width, height]", '"bbox": "oops"'),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, float("nan"), 4]), "bbox must be [x, y, width, height]", None),
    (lambda d: d.update(annotations=[]), "no annotations: a detector trained on it would learn from zero boxes", None),
])  # fmt: skip
def test_hostile_coco_annotations_are_diagnostics_pointing_into_the_json(tmp_path, monkeypatch, change, message, quoted):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    _tiny_coco(tmp_path)
    ann = tmp_path / "annotations" / "instances_val.json"
    data = json.loads(ann.read_text())
    change(data)
    ann.write_text(json.dumps(data, indent=1))
    with pytest.raises(DiagnosticError) as e:
        coco.coco_dataset(tmp_path, "val")
    d = e.value.diagnostics[0]
    assert message in d.message, d.message
    if quoted is not None:  # the caret is on that key and value, at its line in the file
        lines = ann.read_text().splitlines()
        assert d.span is not None and d.span.file == str(ann)
        assert lines[d.span.line - 1][d.span.col - 1 :].startswith(quoted.replace(": ", ": ").split(":")[0]), e.value.render()


def test_a_corrupt_coco_image_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    _tiny_coco(tmp_path)
    (tmp_path / "val" / "b.png").write_bytes(b"not a png")
    ds = coco.coco_dataset(tmp_path, "val")
    with pytest.raises(DiagnosticError, match=r"cannot read image '.*b\.png'"):
        for i in range(len(ds)):
            ds[i]
    # through a DataLoader worker process the message still names the file
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=coco.collate)
    with pytest.raises(DiagnosticError, match=r"cannot read image '.*b\.png'"):
        list(loader)
