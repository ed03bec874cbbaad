"""COCO-format detection data on disk (`--data coco:PATH`): the data sets, their checks, the collate.

Moved here from nasir/targets/detection.py (issue 11: data loaders in one place outside `targets/`);
`nasir.targets.detection` re-exports these names for the code that imports them from there.
Nothing is downloaded: `coco_dataset(path, split)` reads a set already on disk.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nasir.data.classification import _spec_error
from nasir.diagnostics import Diagnostic, DiagnosticError

__all__ = ["CocoDetectionTargets", "CocoJson", "ImageError", "check_coco", "check_images", "coco_dataset", "collate"]

def _target(anns: list[dict], width: int, height: int, image_id: int, labels_of: dict[int, int] | None = None) -> dict[str, Any]:
    """COCO annotations -> torchvision's detection target: xyxy boxes clipped to the image, labels
    = contiguous labels 1..K of the category ids (`labels_of`, from `check_coco`; 0 the background);
    crowd regions and empty boxes are dropped, as torchvision's reference detection scripts do."""
    boxes, labels = [], []
    for a in anns:
        if a.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x2 > x1 and y2 > y1:
            boxes.append([x1, y1, x2, y2])
            labels.append(labels_of[int(a["category_id"])] if labels_of is not None else int(a["category_id"]))
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), "image_id": image_id}  # fmt: skip


class CocoJson(torch.utils.data.Dataset):
    """A COCO-format detection set read without pycocotools: (image float [3, H, W] in [0, 1], target)."""

    def __init__(self, root: Path, ann_file: Path, transforms: Callable | None = None):
        try:
            text = ann_file.read_text(encoding="utf-8")
            data = json.loads(text)
            self.labels_of = check_coco(data, text, ann_file, root)
            images = {int(im["id"]): im for im in data["images"]}
            self.categories = {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories", [])}
            anns: dict[int, list[dict]] = {i: [] for i in images}
            for a in data.get("annotations", []):
                anns.setdefault(int(a["image_id"]), []).append(a)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise _bad_annotations(ann_file, e) from None
        self.root, self.transforms = root, transforms
        self.ids = sorted(images)
        self._images, self._anns = images, anns

    @property
    def num_classes(self) -> int:
        return len(self.labels_of) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        # PIL, as CocoDetection reads them (torchvision.io's decoders are deprecated since 0.29).
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        info = self._images[self.ids[i]]
        try:
            with Image.open(self.root / info["file_name"]) as pil:
                image = pil_to_tensor(pil.convert("RGB")).float() / 255
        except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated, corrupt or not an image
            raise ImageError(self.root / info["file_name"], e) from None
        h, w = image.shape[-2:]
        target = _target(self._anns.get(self.ids[i], []), w, h, self.ids[i], self.labels_of)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


class CocoDetectionTargets(torch.utils.data.Dataset):
    """torchvision's `CocoDetection` (needs pycocotools) with the same items as `CocoJson`; keeps
    the `coco` API object that COCO evaluation (pycocotools' COCOeval) needs."""

    def __init__(self, root: Path, ann_file: Path, transforms: Callable | None = None):
        from contextlib import redirect_stdout

        from torchvision.datasets import CocoDetection

        try:
            text = ann_file.read_text(encoding="utf-8")
            self.labels_of = check_coco(json.loads(text), text, ann_file, root)
            with redirect_stdout(io.StringIO()):  # pycocotools prints "loading annotations..."
                self.base = CocoDetection(str(root), str(ann_file))
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
            raise _bad_annotations(ann_file, e) from None
        self.coco, self.ids, self.transforms = self.base.coco, list(self.base.ids), transforms
        self.categories = {int(i): str(c.get("name", i)) for i, c in self.coco.cats.items()}

    @property
    def num_classes(self) -> int:
        return len(self.labels_of) + 1

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        from torchvision.transforms.functional import pil_to_tensor

        try:
            pil, anns = self.base[i]
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError(Path(self.base.root) / self.coco.imgs[self.ids[i]]["file_name"], e) from None
        image = pil_to_tensor(pil.convert("RGB")).float() / 255
        h, w = image.shape[-2:]
        target = _target(anns, w, h, int(self.ids[i]), self.labels_of)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


class ImageError(DiagnosticError):
    """An image that cannot be decoded, named. Constructible from one string too: a DataLoader worker's
    error is re-raised in the main process as `type(e)(message)`, and still says which file."""

    def __init__(self, path: Any, e: Exception | None = None):
        if e is None:  # re-raised from a worker: the message's last line is ours
            line = next((x for x in reversed(str(path).splitlines()) if "cannot read image" in x), str(path))
            message = line[line.index("cannot read image"):] if "cannot read image" in line else line
        else:
            message = f"cannot read image '{path}': {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        super().__init__([Diagnostic(message, hint="replace or remove the file (and its entry in the annotations)")])

    def __str__(self) -> str:
        return self.render()


MAX_PROBLEMS = 10  # a broken annotation file reports this many problems, then a count


def _locate(text: str, key: str, value: Any) -> tuple[int, int] | None:
    """Where `"key": value` is written in the JSON text (the first such place), for a caret."""
    import re

    m = re.search(rf'"{re.escape(key)}"\s*:\s*' + re.escape(json.dumps(value)).replace(r"\ ", r"\s*"), text)
    return (m.start(), m.end()) if m else None


def check_coco(data: Any, text: str, ann_file: Path, root: Path) -> dict[int, int]:
    """Check a COCO instances file before anything is read from it (issue 14, item 14); returns the
    category ids' contiguous labels {category id: 1..K}.

    Refused, as diagnostics pointing into the JSON: an image `file_name` that is absolute or leaves
    the image folder (`../../etc/passwd`; checked on the text of the path, so a symlinked image
    folder still works), an annotation of an unknown image or of a category the file does not
    define, a `bbox` that is not four finite numbers with w, h >= 0, and a file with no annotation
    at all (it would train "successfully" on zero boxes).
    """
    import os

    from nasir.source import SourceFile

    src = SourceFile(str(ann_file), text)
    problems: list[Diagnostic] = []

    def problem(message: str, key: str | None = None, value: Any = None) -> None:
        at = _locate(text, key, value) if key is not None and len(problems) < MAX_PROBLEMS else None
        problems.append(Diagnostic(message, src.span(*at) if at else None))

    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        what = "missing key 'images'" if not isinstance(data, dict) or "images" not in data else "'images' is not a list"
        raise DiagnosticError([Diagnostic(f"{ann_file}: not a COCO instances file ({what})",
                                          hint="expected {\"images\": [...], \"annotations\": [...], \"categories\": [...]}")])  # fmt: skip
    cats = data.get("categories", [])
    anns = data.get("annotations", [])
    if not isinstance(cats, list) or not isinstance(anns, list):
        raise DiagnosticError([Diagnostic(f"{ann_file}: \"categories\" and \"annotations\" must be lists")])
    ids: set[int] = set()
    for c in cats:
        cid = c.get("id") if isinstance(c, dict) else None
        if isinstance(cid, bool) or not isinstance(cid, int):
            problem(f"a category id must be a whole number, got {cid!r}", "id", cid)
        else:
            ids.add(cid)
    image_ids: set[int] = set()
    for im in data["images"]:
        name = im.get("file_name") if isinstance(im, dict) else None
        iid = im.get("id") if isinstance(im, dict) else None
        if isinstance(iid, bool) or not isinstance(iid, int):
            problem(f"an image id must be a whole number, got {iid!r}", "id", iid)
        else:
            image_ids.add(iid)
        if not isinstance(name, str) or not name:
            problem(f"an image's file_name must be a path, got {name!r}", "file_name", name)
            continue
        norm = os.path.normpath(name)
        if os.path.isabs(name) or norm == ".." or norm.startswith(".." + os.sep) or "\0" in name:
            problem(f"image file_name '{name}' leaves the image folder {root}", "file_name", name)
    for a in anns:
        if not isinstance(a, dict):
            problem(f"an annotation must be an object, got {a!r:.40}")
            continue
        if a.get("image_id") not in image_ids:
            problem(f"annotation of an unknown image id {a.get('image_id')!r}", "image_id", a.get("image_id"))
        cid = a.get("category_id")
        if isinstance(cid, bool) or cid not in ids:
            problem(f"category_id {cid!r} is not one of the file's categories", "category_id", cid)
        box = a.get("bbox")
        ok = (isinstance(box, list) and len(box) == 4
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
              and box[2] >= 0 and box[3] >= 0)  # fmt: skip
        if not ok:
            problem(f"bbox must be [x, y, width, height]: four finite numbers, width and height >= 0; got {box!r:.60}", "bbox", box)
    if not anns and not problems:
        problems.append(Diagnostic(f"{ann_file}: no annotations: a detector trained on it would learn from zero boxes",
                                   hint="check that the file is the instances file of the split (instances_train.json)"))  # fmt: skip
    if problems:
        extra = len(problems) - MAX_PROBLEMS
        shown = problems[:MAX_PROBLEMS]
        if extra > 0:
            shown.append(Diagnostic(f"{ann_file}: and {extra} more problem(s) in the annotations"))
        raise DiagnosticError(shown)
    return {cid: k + 1 for k, cid in enumerate(sorted(ids))}


def _bad_annotations(ann_file: Path, e: Exception) -> DiagnosticError:
    """A bad annotation file as a diagnostic; a JSON syntax error at its line and column (the line
    itself is not shown: COCO files are often one line of hundreds of megabytes)."""
    from nasir.source import Span

    if isinstance(e, json.JSONDecodeError):
        span = Span(str(ann_file), e.lineno, e.colno, e.lineno, e.colno + 1)
        return DiagnosticError([Diagnostic(f"not a COCO instances file: invalid JSON: {e.msg}", span)])
    detail = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
    return DiagnosticError([Diagnostic(f"{ann_file}: not a COCO instances file ({detail})",
                                       hint="expected {\"images\": [{\"id\", \"file_name\", ...}], \"annotations\": [...], \"categories\": [...]}")])  # fmt: skip


def check_images(ds: CocoJson | CocoDetectionTargets) -> None:
    """Every image the annotation file lists exists under the image folder (checked once, up front,
    so a missing file is a diagnostic rather than a failure in the middle of an epoch)."""
    if isinstance(ds, CocoJson):
        root, names = ds.root, [ds._images[i]["file_name"] for i in ds.ids]
    else:
        root, names = Path(ds.base.root), [ds.coco.imgs[i]["file_name"] for i in ds.ids]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DiagnosticError([Diagnostic(f"{len(missing)} image(s) the annotations list are not in {root}: {shown}")])


def coco_dataset(path: str | Path, split: str, transforms: Callable | None = None) -> torch.utils.data.Dataset:
    """`--data coco:PATH`: PATH/annotations/instances_{split}.json with images under PATH/{split}/.

    Items are (image, target) in torchvision's detection format: image a float [3, H, W] tensor in
    [0, 1]; target {"boxes": float [N, 4] xyxy, "labels": int64 [N], "image_id"}. Labels are the
    category ids mapped to 1..K in id order (`labels_of`; 0 is the background), as torchvision's
    reference scripts remap COCO's sparse ids; `num_classes` = K + 1, what `retinanet(num_classes=...)`
    wants. The annotation file is checked first (`check_coco`).
    With pycocotools installed this is torchvision's `CocoDetection` (`CocoDetectionTargets`, which
    keeps `.coco` for COCOeval); without it the JSON is read directly (`CocoJson`), same items.
    `transforms(image, target) -> (image, target)` runs last, if given.
    """
    path = Path(path)
    ann = path / "annotations" / f"instances_{split}.json"
    root = path / split
    missing = [p for p in (ann, root) if not p.exists()]
    if missing:
        raise DiagnosticError([Diagnostic(f"COCO data set at {path}: {', '.join(map(str, missing))} not found",
                                          hint=f"expected {path}/annotations/instances_{split}.json and {path}/{split}/")])  # fmt: skip
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        return CocoJson(root, ann, transforms)
    return CocoDetectionTargets(root, ann, transforms)


def collate(batch):
    """DataLoader collate for detection: images of different sizes stay a list, as RetinaNet takes them."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def coco_path(data: str) -> Path:
    """The PATH of `coco:PATH`, checked: PATH/annotations/instances_train.json and PATH/train/ exist.
    Errors point into the --data value, as the classification data specs' do."""
    layout = "expected PATH/annotations/instances_train.json and its images in PATH/train/ (nasir never downloads)"
    kind, colon, rest = data.partition(":")
    if kind != "coco" or not colon:
        raise _spec_error(data, "--task detection reads COCO-format data: coco:PATH", 0, len(kind), layout)
    if not rest:
        raise _spec_error(data, "'coco' needs a path: coco:PATH", 0, None, layout)
    path = Path(rest).expanduser()
    if not path.exists():
        raise _spec_error(data, f"data path '{rest}' does not exist", len(kind) + 1)
    missing = [q for q in ("annotations/instances_train.json", "train") if not (path / q).exists()]
    if missing:
        raise _spec_error(data, f"no COCO training split under '{rest}': {' and '.join(missing)} not found", len(kind) + 1, None, layout)
    return path
