"""COCO box AP (nasir/coco_eval.py) on tiny sets whose AP is worked out by hand here.

COCO's AP (cocodataset.org/#detection-eval): at each IoU threshold t in 0.50, 0.55, ..., 0.95, the
precision interpolated at the 101 recall points 0, 0.01, ..., 1 (the best precision at any recall >= r)
is averaged; AP is the mean over the ten thresholds, AP50 / AP75 the value at one threshold, APS /
APM / APL the same over objects of area < 32^2, 32^2..96^2, > 96^2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from nasir.coco_eval import METRICS, coco_ap, evaluate_detector, format_ap
from nasir.data.coco import coco_dataset

THRESHOLDS = [0.5 + 0.05 * i for i in range(10)]


def iou_xywh(a, b) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def gt(boxes):
    """boxes: (image_id, category_id, [x, y, w, h]); images 256 x 256."""
    ids = sorted({i for i, _, _ in boxes})
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 256, "height": 256} for i in ids],
        "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                        for k, (i, c, b) in enumerate(boxes)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }  # fmt: skip


SMALL, MEDIUM, LARGE = [10, 10, 20, 20], [40, 40, 50, 50], [100, 100, 120, 120]  # areas 400, 2500, 14400


def test_perfect_boxes_give_ap_one_and_no_ap_for_an_empty_size_range():
    boxes = [(1, 1, SMALL), (1, 2, LARGE), (2, 1, MEDIUM), (3, 2, SMALL)]
    dets = [{"image_id": i, "category_id": c, "bbox": b, "score": 0.9} for i, c, b in boxes]
    assert coco_ap(gt(boxes), dets) == pytest.approx({m: 1.0 for m in METRICS}, abs=1e-12)
    only_small = [(1, 1, SMALL), (2, 2, SMALL)]
    r = coco_ap(gt(only_small), [{"image_id": i, "category_id": c, "bbox": b, "score": 0.5} for i, c, b in only_small])
    assert [r[m] for m in ("AP", "AP50", "AP75", "APS")] == pytest.approx([1.0] * 4, abs=1e-12)
    assert math.isnan(r["APM"]) and math.isnan(r["APL"])  # no ground truth of that size: COCOeval's -1
    # a wrong category is no detection of the right one
    wrong = [{"image_id": i, "category_id": 3 - c, "bbox": b, "score": 0.5} for i, c, b in only_small]
    assert coco_ap(gt(only_small), wrong)["AP"] == 0.0


def test_no_detections_give_zero_and_a_detection_on_an_unknown_image_is_refused():
    boxes = [(1, 1, MEDIUM)]
    r = coco_ap(gt(boxes), [])
    assert r["AP"] == r["AP50"] == r["APM"] == 0.0 and math.isnan(r["APS"])
    with pytest.raises(ValueError, match="image 9"):
        coco_ap(gt(boxes), [{"image_id": 9, "category_id": 1, "bbox": MEDIUM, "score": 1.0}])


@pytest.mark.parametrize("large_first", [True, False])
def test_shifted_boxes_give_the_hand_computed_ap(large_first):
    # Image 1: a large 200 x 200 box, detected 40 px to the right; image 2: a medium 40 x 40 box,
    # detected 5 px right and down. Same category.
    g1, g2 = [0, 0, 200, 200], [10, 10, 40, 40]
    d1, d2 = [40, 0, 200, 200], [15, 15, 40, 40]
    iou1 = (160 * 200) / (200 * 200 + 200 * 200 - 160 * 200)  # 2/3
    iou2 = (35 * 35) / (40 * 40 + 40 * 40 - 35 * 35)  # 1225 / 1975 = 0.6203
    assert iou1 == pytest.approx(iou_xywh(d1, g1)) and iou2 == pytest.approx(iou_xywh(d2, g2))
    s1, s2 = (0.9, 0.8) if large_first else (0.8, 0.9)
    dets = [{"image_id": 1, "category_id": 1, "bbox": d1, "score": s1},
            {"image_id": 2, "category_id": 1, "bbox": d2, "score": s2}]  # fmt: skip
    r = coco_ap(gt([(1, 1, g1), (2, 1, g2)]), dets)

    # By hand. At threshold t a detection is a true positive iff its IoU >= t.
    # Both match (t <= 0.60): precision 1 up to recall 1 -> AP_t = 1.
    # Only d1 matches (t = 0.65): recall reaches 1/2. If d1 ranks first its precision there is 1, else
    # 1/2 (an FP before it); interpolated precision at the 51 recall points 0..0.50 is that, 0 above.
    # Neither matches (t >= 0.70): 0.
    def ap_at(t: float) -> float:
        m1, m2 = iou1 >= t, iou2 >= t
        if m1 and m2:
            return 1.0
        if m1 or m2:
            first_is_tp = (m1 and s1 > s2) or (m2 and s2 > s1)
            return (1.0 if first_is_tp else 0.5) * 51 / 101
        return 0.0

    expected_ap = sum(ap_at(t) for t in THRESHOLDS) / 10
    assert expected_ap == pytest.approx((3 + (1.0 if large_first else 0.5) * 51 / 101) / 10)
    assert r["AP"] == pytest.approx(expected_ap, abs=1e-12)
    assert r["AP50"] == pytest.approx(1.0, abs=1e-12) and r["AP75"] == 0.0
    # one object per size range: AP is the fraction of thresholds its IoU clears
    assert r["APL"] == pytest.approx(sum(iou1 >= t for t in THRESHOLDS) / 10) == pytest.approx(0.4)
    assert r["APM"] == pytest.approx(sum(iou2 >= t for t in THRESHOLDS) / 10) == pytest.approx(0.3)
    assert math.isnan(r["APS"])
    assert format_ap(r).startswith(f"AP {100 * expected_ap:.1f}  AP50 100.0  AP75 0.0  APS n/a  APM 30.0  APL 40.0")


# ---- a detector over a COCO folder ---------------------------------------------------------------
def write_coco(root: Path, split: str, boxes_per_image: list[list[tuple[int, list[int]]]]) -> Path:
    """64 x 64 PNGs with filled boxes; categories 3 and 7 (sparse ids: labels 1 and 2 for the detector)."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for i, boxes in enumerate(boxes_per_image, start=1):
        img = torch.full((64, 64, 3), 90, dtype=torch.uint8)
        for cat, (x, y, w, h) in boxes:
            img[y : y + h, x : x + w] = torch.tensor([220, 30, 30] if cat == 3 else [30, 200, 40], dtype=torch.uint8)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(img.numpy()).save(root / split / f"{i:03d}.png")
        images.append({"id": i, "file_name": f"{i:03d}.png", "width": 64, "height": 64})
    data = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "square"}, {"id": 7, "name": "bar"}]}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


VAL = [[(3, [4, 4, 16, 16])], [(7, [20, 30, 24, 10]), (3, [40, 8, 16, 16])], [(7, [2, 50, 24, 10])]]


class Oracle(torch.nn.Module):
    """A 'detector' that answers each image with its boxes (xyxy) in contiguous labels 1..K, shifted by `dx`."""

    def __init__(self, per_image, labels_of, dx=0.0):
        super().__init__()
        self.answers = [
            {"boxes": torch.tensor([[x + dx, y, x + dx + w, y + h] for _, (x, y, w, h) in boxes], dtype=torch.float32),
             "scores": torch.linspace(0.9, 0.5, len(boxes)), "labels": torch.tensor([labels_of[c] for c, _ in boxes])}
            for boxes in per_image
        ]  # fmt: skip
        self.calls = 0

    def forward(self, images):
        out = self.answers[self.calls : self.calls + len(images)]
        self.calls += len(images)
        return out


def test_evaluate_detector_maps_labels_back_to_category_ids(tmp_path):

    ds = coco_dataset(write_coco(tmp_path / "coco", "val", VAL), "val")
    assert ds.labels_of == {3: 1, 7: 2}
    model = Oracle(VAL, ds.labels_of).train()
    r = evaluate_detector(model, ds, "cpu", batch_size=2)
    assert [r[m] for m in ("AP", "AP50", "AP75", "APS")] == pytest.approx([1.0] * 4, abs=1e-12)
    assert math.isnan(r["APM"]) and math.isnan(r["APL"])
    assert model.training  # the mode is restored
    # A 3 px shift on 16 px squares and 24 x 10 bars: IoU 13*16 / (2*256 - 208) = 0.684 and 21*10 / (2*240 - 210) = 0.778
    r = evaluate_detector(Oracle(VAL, ds.labels_of, dx=3.0), ds, "cpu")
    sq, bar = iou_xywh([4, 4, 16, 16], [7, 4, 16, 16]), iou_xywh([20, 30, 24, 10], [23, 30, 24, 10])
    assert sq == pytest.approx(208 / 304) and bar == pytest.approx(210 / 270)
    # Per category every box is found with the same IoU, so AP_t is 1 (IoU >= t) or 0; AP averages the
    # two categories: (4 + 6) / 10 / 2 -- the squares clear 0.50..0.65, the bars 0.50..0.75.
    per_cat = [sum(v >= t for t in THRESHOLDS) / 10 for v in (sq, bar)]
    assert per_cat == [0.4, 0.6]
    assert r["AP"] == pytest.approx(sum(per_cat) / 2, abs=1e-12)
    assert r["AP50"] == pytest.approx(1.0, abs=1e-12) and r["AP75"] == pytest.approx(0.5, abs=1e-12)


def test_eval_cli_reports_coco_ap_of_a_detector_checkpoint(tmp_path, capsys):
    from nasir.api import load
    from nasir.cli import main
    from nasir.coco_eval import eval_checkpoint
    from nasir.targets import detection

    data = tmp_path / "coco"
    write_coco(data, "train", VAL + VAL)
    write_coco(data, "val", VAL)
    spec_path = Path(__file__).resolve().parents[1] / "examples" / "darts_v2.cell"
    config = {"num_classes": 3, "network": None, "overrides": {"C": 4, "layers": 3}, "min_size": 64, "max_size": 64,
              "levels": [1, 2], "fpn_channels": 16}  # fmt: skip
    torch.manual_seed(0)
    model = detection.retinanet(load(spec_path), **config)
    torch.save({"format": detection.FORMAT, "config": config, "state_dict": model.state_dict()}, tmp_path / "best.pt")

    code = main(["eval", "--task", "detection", "--data", f"coco:{data}", "--weights", str(tmp_path / "best.pt"),
                 "--device", "cpu", str(spec_path)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    line = out.strip()
    assert line.endswith("on 3 images (val)"), line
    assert [w for w in line.split() if w in METRICS] == list(METRICS)
    # the numbers are those of the same detector scored directly on the val split
    ds = coco_dataset(data, "val")
    direct = evaluate_detector(detection.load_detector(load(spec_path), tmp_path / "best.pt")[0], ds, "cpu")
    assert line.startswith(format_ap(direct))
    metrics, n, split = eval_checkpoint(spec_path, tmp_path / "best.pt", f"coco:{data}", device="cpu")
    assert (n, split) == (3, "val") and format_ap(metrics) == format_ap(direct)
    # detection without --data: exit 2, a diagnostic
    assert main(["eval", "--task", "detection", "--weights", str(tmp_path / "best.pt"), str(spec_path)]) == 2
    assert "--task detection needs COCO-format data" in capsys.readouterr().err


def test_eval_without_a_val_split_scores_the_held_out_training_images(tmp_path):
    from nasir.api import load
    from nasir.coco_eval import eval_checkpoint
    from nasir.data.classification import holdout_split
    from nasir.targets import detection

    data = write_coco(tmp_path / "coco", "train", VAL + VAL + VAL[:1])  # 7 images, no val split
    spec_path = Path(__file__).resolve().parents[1] / "examples" / "darts_v2.cell"
    config = {"num_classes": 3, "network": None, "overrides": {"C": 4, "layers": 3}, "min_size": 64, "max_size": 64,
              "levels": [1, 2], "fpn_channels": 16}  # fmt: skip
    model = detection.retinanet(load(spec_path), seed=1, **config)
    torch.save({"format": detection.FORMAT, "config": config, "state_dict": model.state_dict()}, tmp_path / "best.pt")
    metrics, n, split = eval_checkpoint(spec_path, tmp_path / "best.pt", f"coco:{data}", device="cpu")
    # without provenance: nasir train's defaults, a fifth held out with seed 0 -> round(7 * 0.2) = 1 image
    assert (n, split) == (1, "held-out part of train")
    (held,) = holdout_split(7, 0.2, 0)[1].tolist()
    ds = coco_dataset(data, "train")
    direct = evaluate_detector(detection.load_detector(load(spec_path), tmp_path / "best.pt")[0], ds, "cpu", indices=[held])
    assert format_ap(metrics) == format_ap(direct)
