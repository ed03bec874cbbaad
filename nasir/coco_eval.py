"""COCO box AP of a detector: the numbers detection papers report (e.g. OStr-DARTS, Table VII).

`coco_ap(gt, detections)` is pycocotools' COCOeval on boxes (Lin et al., 2014, "Microsoft COCO";
docs/coco_ap.md has the definition and the worked examples the tests check): AP averaged over the IoU thresholds
0.50:0.05:0.95, AP50 and AP75 at one threshold, APS / APM / APL over objects of area < 32^2,
32^2..96^2 and > 96^2 pixels, each the 101-point interpolated precision averaged over categories,
at most 100 detections per image. A size range without ground truth has no AP: NaN (COCOeval's -1).
Values are fractions (the papers print them x 100).

`evaluate_detector(model, dataset, device)` runs a torchvision-style detector (nasir's RetinaNet,
targets/detection.py) over a COCO data set (`coco_dataset`) and scores it; `eval_checkpoint` is
`nasir eval --task detection`. Nothing here trains; `nasir train --task detection` can call
`evaluate_detector` on its held-out split once per epoch.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nasir.diagnostics import Diagnostic, DiagnosticError

METRICS = ("AP", "AP50", "AP75", "APS", "APM", "APL")  # COCOeval.stats[0:6], in this order


def _normalized_gt(gt: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of COCO ground truth with what COCOeval reads but a minimal file may omit: annotation
    ids, `area` (the box's w * h, as for detections; COCO's own files give the mask area), `iscrowd`."""
    anns = []
    for k, a in enumerate(gt.get("annotations", []), start=1):
        a = dict(a)
        a.setdefault("id", k)
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
        anns.append(a)
    cats = gt.get("categories") or [{"id": c} for c in sorted({int(a["category_id"]) for a in anns})]
    return {"images": list(gt.get("images", [])), "annotations": anns, "categories": list(cats)}


def _coco(dataset: dict[str, Any]):
    from pycocotools.coco import COCO

    c = COCO()
    c.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # "creating index..."
        c.createIndex()
    return c


def coco_ap(gt_json: Mapping[str, Any] | str | Path, detections: Iterable[Mapping[str, Any]],
            image_ids: Sequence[int] | None = None) -> dict[str, float]:  # fmt: skip
    """COCO box AP of `detections` against `gt_json` (a COCO instances dict or its file).

    detections: {"image_id", "category_id", "bbox": [x, y, w, h] in pixels, "score"}, as COCO's
    results format. `image_ids`: the images evaluated (default: every image of the ground truth).
    Returns {"AP", "AP50", "AP75", "APS", "APM", "APL"} as fractions; NaN where no ground truth exists.
    """
    import json

    import numpy as np
    from pycocotools.cocoeval import COCOeval

    if not isinstance(gt_json, Mapping):
        gt_json = json.loads(Path(gt_json).read_text(encoding="utf-8"))
    gt = _coco(_normalized_gt(gt_json))
    known = set(gt.getImgIds())
    dts = []
    for k, d in enumerate(detections, start=1):
        x, y, w, h = (float(v) for v in d["bbox"])
        if int(d["image_id"]) not in known:
            raise ValueError(f"detection {k} is on image {d['image_id']}, which the ground truth does not have")
        # what COCO.loadRes adds to box results (it refuses an empty list, hence done here)
        dts.append({"id": k, "image_id": int(d["image_id"]), "category_id": int(d["category_id"]),
                    "bbox": [x, y, w, h], "area": w * h, "score": float(d["score"]), "iscrowd": 0})  # fmt: skip
    res = _coco({"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": dts})
    ev = COCOeval(gt, res, iouType="bbox")
    if image_ids is not None:
        ev.params.imgIds = sorted(int(i) for i in image_ids)
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and the table
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.asarray(ev.stats[: len(METRICS)], dtype=float)
    return {m: (math.nan if v < 0 else float(v)) for m, v in zip(METRICS, stats)}


def ground_truth(dataset: Any) -> dict[str, Any]:
    """The COCO instances dict behind a `coco_dataset` (pycocotools' `.coco`, or the JSON `CocoJson` read)."""
    coco = getattr(dataset, "coco", None)
    if coco is not None:
        return coco.dataset
    return {"images": list(dataset._images.values()),
            "annotations": [a for anns in dataset._anns.values() for a in anns],
            "categories": [{"id": i, "name": n} for i, n in dataset.categories.items()]}  # fmt: skip


def detections(model: torch.nn.Module, dataset: Any, device: torch.device | str, *, indices: Sequence[int] | None = None,
               batch_size: int = 4) -> tuple[list[dict[str, Any]], list[int]]:  # fmt: skip
    """The detector's boxes on `dataset[indices]` in COCO's results format, and the image ids seen.

    The detector answers in contiguous labels 1..K (`dataset.labels_of` maps category id -> label,
    targets/detection.py); they go back to category ids here. Boxes are xyxy in the original image
    (torchvision rescales them), written as xywh."""
    device = torch.device(device)
    category_of = {label: cat for cat, label in (getattr(dataset, "labels_of", None) or {}).items()}
    order = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    out: list[dict[str, Any]] = []
    seen: list[int] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for a in range(0, len(order), batch_size):
                items = [dataset[i] for i in order[a : a + batch_size]]
                images = [im.to(device) for im, _ in items]
                for (_, target), det in zip(items, model(images)):
                    image_id = int(target["image_id"])
                    seen.append(image_id)
                    boxes, scores, labels = (det[k].detach().cpu() for k in ("boxes", "scores", "labels"))
                    for (x1, y1, x2, y2), s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
                        out.append({"image_id": image_id, "category_id": category_of.get(int(lab), int(lab)),
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})  # fmt: skip
    finally:
        model.train(was_training)
    return out, seen


def evaluate_detector(model: torch.nn.Module, dataset: Any, device: torch.device | str, *,
                      indices: Sequence[int] | None = None, batch_size: int = 4) -> dict[str, float]:  # fmt: skip
    """COCO AP, AP50, AP75, APS, APM, APL of `model` on `dataset` (a `coco_dataset`), or on its images
    `indices` (a held-out part of the training split). The model's train/eval mode is restored."""
    dets, seen = detections(model, dataset, device, indices=indices, batch_size=batch_size)
    return coco_ap(ground_truth(dataset), dets, image_ids=seen)


def format_ap(metrics: Mapping[str, float]) -> str:
    """'AP 31.2  AP50 52.0 ...' in percent as the papers print them; 'n/a' for a size range without objects."""
    return "  ".join(f"{m} {'n/a' if math.isnan(metrics[m]) else format(100 * metrics[m], '.1f')}" for m in METRICS)


def eval_checkpoint(spec_path: str | Path, weights: str | Path, data: str | None, *, overrides: Sequence[str] | None = None,
                    device: str = "auto", seed: int | None = None) -> tuple[dict[str, float], int, str]:  # fmt: skip
    """`nasir eval --task detection`: (metrics, images, which split) of a detector checkpoint.

    The held-out images are those `nasir train --task detection` held out: PATH/val when it has
    annotations, else the fraction of PATH/train drawn with the split seed the checkpoint records
    (`seed` overrides it)."""
    from nasir import device as dv
    from nasir import provenance as prov
    from nasir.api import load
    from nasir.data import coco as data_coco
    from nasir.data.classification import holdout_split
    from nasir.data.coco import coco_path
    from nasir.macro import parse_overrides
    from nasir.targets import detection

    if data is None:
        raise DiagnosticError([Diagnostic("--task detection needs COCO-format data: --data coco:PATH", hint="see 'nasir eval --help'")])
    path = coco_path(data)
    spec = load(spec_path, overrides=list(overrides or []))
    values = dict(parse_overrides(list(overrides))[0]) if overrides else None
    model, _ = detection.load_detector(spec, weights, values)
    if (path / "annotations" / "instances_val.json").exists() and (path / "val").is_dir():
        dataset, indices, split = data_coco.coco_dataset(path, "val"), None, "val"
    else:
        dataset = data_coco.coco_dataset(path, "train")
        recorded = ((prov.read(weights) or {}).get("split")) or {}
        split_seed = seed if seed is not None else int(recorded.get("seed", 0))
        _, held = holdout_split(len(dataset), float(recorded.get("holdout", 0.2)), split_seed)
        indices, split = held.tolist(), "held-out part of train"
    data_coco.check_images(dataset)
    dev = dv.select_device(device)
    metrics = evaluate_detector(model.to(dev), dataset, dev, indices=indices)
    return metrics, len(dataset) if indices is None else len(indices), split
