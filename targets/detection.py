"""The detection target: any derived nasir network as the backbone of a torchvision RetinaNet.

`NasBackbone` runs the stems and cells of a built `Network` (not its head or auxiliary head) and
returns, as torchvision backbones do, an ordered dict of feature maps: the output of the last cell
before each reduction (a reduction cell, or NAS-Bench-201's residual block) and of the last cell.
`feature_levels` computes the index, channel count and stride of every level from the Plan and
the IR alone, so the FPN is sized before anything runs. The detector follows torchvision's
`retinanet_resnet50_fpn` (Lin et al., 2017, "Focal Loss for Dense Object Detection"): an FPN on
the levels with `LastLevelP6P7` extra blocks, one anchor size per level (4 x its stride, in three
octave scales, aspect ratios 0.5, 1, 2), and torchvision's RetinaNet heads and losses.

What `nasir compile --target retinanet` writes (`write_module`), and why:
- `OUT` (.pt): a TorchScript eval-mode detector. torchvision's RetinaNet scripts, but a nasir
  network does not (`torch.jit.script` stops at CellModule.forward: "Expected a value of type
  'Tensor' for argument 'x' but instead found type 'Optional[Tensor]'"; its ModuleList indexing
  by loop variables would be next). So the backbone is traced (in eval mode; it has no data-dependent
  control flow, so the trace holds for any input size the strides allow) and the rest of the
  detector is scripted around it. Because BatchNorm and drop-path are traced in eval mode, the
  artefact is for inference only. Call it as torchvision documents for scripted detectors:
  `losses, detections = m([image])`, `image` a float [3, H, W] tensor in [0, 1].
- `OUT` with `.state_dict.pt` for its suffix (det.pt -> det.state_dict.pt): the weights and the
  detector's settings ({"format", "spec", "config", "state_dict"}; loads with `torch.load(...,
  weights_only=True)`), for training: rebuild with `retinanet(spec, **config)`, `load_state_dict`.
- ONNX (`write_onnx`): see its docstring for what the pinned torch/torchvision allow.

Cost: a CIFAR macro keeps full resolution up to its first reduction, so its first level has
stride 1; at torchvision's 800-pixel images the heads on that level dominate. `levels=(1, 2)` or a
smaller `min_size` is the usual choice there.

The COCO data sets (`coco_dataset`, `check_images`, `collate`, ...) live in nasir/data/coco.py.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from nasir import ir
from nasir.diagnostics import Diagnostic, DiagnosticError
from nasir.io import atomic_write, atomic_write_with
from nasir.macro import CellPlan, Plan, parse_overrides
from nasir.macro import plan as make_plan
from nasir.targets.network import Network, build, cell_call

__all__ = [
    "FeatureLevel",
    "NasBackbone",
    "NasBackboneWithFPN",
    "default_levels",
    "feature_levels",
    "load_backbone",
    "load_detector",
    "losses",
    "random_hflip",
    "require_rgb",
    "retinanet",
    "script_eval",
    "write_module",
    "write_onnx",
]


FORMAT = "nasir.retinanet/1"


@attrs.frozen
class FeatureLevel:
    """One feature map the backbone returns: after body block `index`, `channels` wide, at `stride`."""

    name: str
    index: int
    channels: int
    stride: int


def feature_levels(spec: ir.Spec, plan: Plan) -> list[FeatureLevel]:
    """The detection levels of a network, from the Plan alone (nothing is built or run).

    A level is the output of the last body block before each reduction and of the last block. The
    Plan records every block's output channels (a cell's output multiplier times its C, docs/ops.md "A
    DARTS cell"; a residual block's C_out), its stride (2 for a cell with `stride 2 from inputs` and
    for a residual block) and the total downsampling `scale` after it (stem strides included), so
    this is a walk over `plan.body` (nasir/macro.py).
    """
    body = plan.body
    for b in body:
        if isinstance(b, CellPlan) and spec.cell(b.cell) is None:
            raise DiagnosticError([Diagnostic(f"unknown cell '{b.cell}'")])
    if not body:
        raise DiagnosticError([Diagnostic(f"network '{plan.network}' has no cells to take detection features from")])
    indices = [i - 1 for i, b in enumerate(body) if b.stride > 1 and i > 0]
    indices.append(len(body) - 1)
    indices = sorted(set(indices))
    return [FeatureLevel(str(k), i, body[i].C_out, body[i].scale) for k, i in enumerate(indices)]


class NasBackbone(nn.Module):
    """The stems and cells of a nasir `Network` returning an OrderedDict of the chosen feature levels.

    Submodule names are the `Network`'s (`stem` or `stem0`/`stem1`, `cells.i`), so the state_dict
    of a classification network trained by nasir loads with `load_state_dict(sd, strict=False)`
    (the head and auxiliary head are the unexpected keys). Cells after the last chosen level are
    not kept, so they cost nothing.
    """

    def __init__(self, network: Network, levels: Sequence[FeatureLevel]):
        super().__init__()
        if not levels:
            raise ValueError("NasBackbone needs at least one feature level")
        if hasattr(network, "stem0"):
            self.stem0, self.stem1 = network.stem0, network.stem1
        else:
            self.stem = network.stem
        last = max(lv.index for lv in levels)
        self.cells = nn.ModuleList(list(network.cells)[: last + 1])
        self.levels = tuple(levels)
        self._names = {lv.index: lv.name for lv in levels}
        self.out_channels_list = [lv.channels for lv in levels]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if hasattr(self, "stem0"):
            s0 = self.stem0(x)
            history = [s0, self.stem1(s0)]
        else:
            history = [self.stem(x)] * 2
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        # The same schedule as Network.features: an n-input cell reads the n previous states.
        for i, m in enumerate(self.cells):
            history.append(cell_call(m, history))
            if i in self._names:
                out[self._names[i]] = history[-1]
        return out


class NasBackboneWithFPN(nn.Module):
    """torchvision's `BackboneWithFPN` for a non-sequential body (its IntermediateLayerGetter needs
    a sequential model; a DARTS cell reads the two previous states). Provides `out_channels`."""

    def __init__(self, body: nn.Module, in_channels_list: list[int], out_channels: int, extra_blocks=None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def _select(all_levels: list[FeatureLevel], levels: Sequence[int] | None) -> list[FeatureLevel]:
    if levels is None:
        return all_levels
    chosen = sorted(set(int(i) for i in levels))
    bad = [i for i in chosen if not -len(all_levels) <= i < len(all_levels)]
    if bad or not chosen:
        raise DiagnosticError([Diagnostic(
            f"levels {list(levels)} do not name the network's detection levels 0..{len(all_levels) - 1}",
            hint="levels: " + ", ".join(f"{lv.name} (stride {lv.stride}, {lv.channels} channels)" for lv in all_levels))])  # fmt: skip
    picked = sorted({all_levels[i].index: all_levels[i] for i in chosen}.values(), key=lambda lv: lv.index)
    return [attrs.evolve(lv, name=str(k)) for k, lv in enumerate(picked)]


def retinanet(spec: ir.Spec, *, num_classes: int, network: str | None = None,
              overrides: dict[str, Any] | list[str] | None = None, min_size: int = 800, max_size: int = 1333,
              levels: Sequence[int] | None = None, fpn_channels: int = 256, seed: int | None = None,
              **kwargs: Any) -> RetinaNet:  # fmt: skip
    """A torchvision RetinaNet on the derived network of `spec` (see the module docstring).

    `overrides` are network parameters (a dict or `--set`-style strings), `seed` seeds the
    initialisation. `levels` picks feature levels by position (default all; `feature_levels` lists
    them), e.g. (1, 2) drops the stride-1 level of a CIFAR macro, whose heads cost the most. `fpn_channels` is the FPN and head width (256 in
    torchvision). Other keyword arguments go to `torchvision.models.detection.RetinaNet`
    (score_thresh, nms_thresh, detections_per_img, image_mean, ...). `num_classes` counts the
    background index 0 as torchvision does (91 for COCO category ids).
    """
    plan = make_plan(spec, network, _overrides(overrides))
    chosen = _select(feature_levels(spec, plan), levels)
    net = build(spec, plan, seed=seed)
    body = NasBackbone(net, chosen)
    backbone = NasBackboneWithFPN(body, body.out_channels_list, fpn_channels,
                                  LastLevelP6P7(fpn_channels, fpn_channels))  # fmt: skip
    last = chosen[-1].stride
    # Anchors as retinanet_resnet50_fpn: base size 4 x stride (32 at stride 8), three octave scales.
    strides = [lv.stride for lv in chosen] + [2 * last, 4 * last]  # P6 and P7 halve P-last twice
    sizes = tuple((4 * s, int(4 * s * 2 ** (1 / 3)), int(4 * s * 2 ** (2 / 3))) for s in strides)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes)
    # A reduction cell halves with FactorizedReduce, whose two halves disagree on odd sizes, so
    # the batch is padded to a multiple of the deepest stride (torchvision pads to 32 by default).
    kwargs.setdefault("size_divisible", max(32, last))
    return RetinaNet(backbone, num_classes, min_size=min_size, max_size=max_size,
                     anchor_generator=anchors, head=head, **kwargs)  # fmt: skip


def _overrides(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    if isinstance(overrides, list):
        return parse_overrides(overrides)[0]
    return dict(overrides or {})


def script_eval(model: RetinaNet, example_size: tuple[int, int] | None = None) -> torch.jit.ScriptModule:
    """The eval-mode detector as TorchScript: the nasir backbone traced, torchvision's parts scripted.

    Scripting the whole detector fails on the nasir cells (module docstring), hence the trace of
    the body; the trace is made in eval mode on a zero image on the model's device. The model is
    copied, not changed.
    """
    model = copy.deepcopy(model).eval()
    body = model.backbone.body
    if not isinstance(body, NasBackbone):
        raise TypeError("script_eval expects a detector built by nasir.targets.detection.retinanet")
    side = max(64, 2 * body.levels[-1].stride)
    h, w = example_size or (side, side)
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit is deprecated in torch 2.14 but still the only way to a Python-free detector here.
        warnings.simplefilter("ignore")
        example = torch.zeros(1, 3, h, w, device=_device_of(model))
        model.backbone.body = torch.jit.trace(body, example, strict=False, check_trace=False)
        return torch.jit.script(model)


def write_module(spec: ir.Spec, out: str | Path, *, num_classes: int = 91, network: str | None = None,
                 overrides: dict[str, Any] | list[str] | None = None, min_size: int = 800, max_size: int = 1333,
                 levels: Sequence[int] | None = None, fpn_channels: int = 256, seed: int | None = 0,
                 model: RetinaNet | None = None, onnx_path: str | Path | None = None) -> list[Path]:  # fmt: skip
    """`nasir compile SPEC --target retinanet -o OUT`: the scripted eval-mode detector at OUT, the
    weights and settings at OUT.state_dict.pt, and the ONNX detector at `onnx_path` if given (see the
    module docstring). `num_classes` defaults to torchvision's COCO count (91, background included).
    Pass a trained `model` to write it instead of a freshly initialised one (the settings must be
    the ones it was built with). Returns the paths written.
    """
    out = Path(out)
    overrides = _overrides(overrides)
    config = {"num_classes": num_classes, "network": network, "overrides": overrides, "min_size": min_size,
              "max_size": max_size, "levels": None if levels is None else [int(i) for i in levels],
              "fpn_channels": fpn_channels}  # fmt: skip
    fresh = retinanet(spec, seed=seed, **config)
    if model is None:
        model = fresh
    else:
        want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} != want:
            raise DiagnosticError([Diagnostic(
                "the detector passed to write_module was not built with these settings",
                hint="pass the num_classes, overrides, levels and fpn_channels it was built with")])  # fmt: skip
    # Inference settings travel with the weights, so `retinanet(spec, **config)` rebuilds this detector.
    config.update(score_thresh=float(model.score_thresh), nms_thresh=float(model.nms_thresh),
                  detections_per_img=int(model.detections_per_img), topk_candidates=int(model.topk_candidates))  # fmt: skip
    meta = {"format": FORMAT, "spec": str(spec.file), "config": config}
    try:
        scripted = script_eval(model)
    except Exception as e:  # any scripting failure is a diagnostic, not a traceback
        raise _export_error("TorchScript", e) from None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice (see script_eval)
        torch.jit.save(scripted, buf, _extra_files={"nasir.json": json.dumps(meta)})
    atomic_write(out, buf.getvalue())
    weights = out.with_name(out.stem + ".state_dict.pt")
    payload = {**meta, "state_dict": model.state_dict()}
    atomic_write_with(weights, lambda tmp: torch.save(payload, tmp))
    written = [out, weights]
    if onnx_path is not None:
        written.append(write_onnx(model, onnx_path))
    return written


def write_onnx(model: RetinaNet, out: str | Path, *, image_size: tuple[int, int] | None = None) -> Path:
    """ONNX (opset 17) of the eval-mode detector: input `image` float [3, H, W] in [0, 1], H and W
    dynamic; outputs `boxes` [N, 4] (xyxy, input pixels), `scores` [N], `labels` [N] int64.

    With the pinned torch 2.14.1 / torchvision 0.29.1 this works through the TorchScript-based
    exporter (`dynamo=False`), which traces the eager model: torchvision's detection code has
    tracing paths for ONNX (resizing, anchors, top-k, batched NMS), and the nasir backbone has no
    data-dependent control flow. Limits, all torchvision's: one image per call (the graph is traced
    with a list of one image), and eval mode only (training-mode losses are not exported). Not
    used, and why: exporting the scripted detector fails ("args contained 1 None's after
    flattening. When exporting a ScriptModule or ScriptFunction, no args may be None"; RetinaNet's
    forward has the optional `targets`); the torch.export-based exporter (`dynamo=True`, torch's
    default) needs the `onnxscript` package, which nasir does not depend on.
    Any exporter failure (another torch version, an op without a symbolic) is a DiagnosticError.
    """
    out = Path(out)
    model = copy.deepcopy(model).eval()
    h, w = image_size or (int(model.transform.min_size[0]),) * 2
    example = ([torch.rand(3, h, w, device=_device_of(model))],)  # the exporter traces on the model's device
    axes = {"image": {1: "height", 2: "width"}, "boxes": {0: "detections"}, "scores": {0: "detections"},
            "labels": {0: "detections"}}  # fmt: skip

    def export(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            # Tracer and deprecation warnings about torchvision internals; the result is checked
            # against the eager detector in tests/targets/test_detection.py.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, example, tmp, dynamo=False, opset_version=17, input_names=["image"],
                              output_names=["boxes", "scores", "labels"], dynamic_axes=axes)  # fmt: skip

    try:
        atomic_write_with(out, export)
    except Exception as e:  # exporter failures are a diagnostic, not a traceback
        raise _export_error("ONNX", e) from None
    return out


def _device_of(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


def _export_error(what: str, e: Exception) -> DiagnosticError:
    first = (str(e).strip().splitlines() or [""])[0]
    return DiagnosticError([Diagnostic(
        f"the RetinaNet detector could not be exported to {what}: {type(e).__name__}: {first}",
        hint="the torch.save'd state_dict (and `nasir.targets.detection.retinanet`) still work; "
             "see the docstring of nasir.targets.detection.write_onnx for what the pinned versions support")])  # fmt: skip



def default_levels(spec: ir.Spec, plan: Plan) -> list[int]:
    """The levels `nasir train --task detection` uses unless told: every level of stride 2 or more
    (all when none is). A stride-1 level (a CIFAR macro before its first reduction) has 4x the
    anchors of the next one, and its heads dominate the cost (module docstring)."""
    all_levels = feature_levels(spec, plan)
    strided = [k for k, lv in enumerate(all_levels) if lv.stride > 1]
    return strided or list(range(len(all_levels)))


def require_rgb(spec: ir.Spec, plan: Plan) -> None:
    """RetinaNet reads RGB images: the network must take 3 input channels."""
    if plan.input[0] != 3:
        from nasir.diagnostics import error_at

        net = spec.network(plan.network) if plan.network else spec.network()
        raise error_at(net.span if net else None, f"a RetinaNet detector reads RGB images, but network '{plan.network}' takes {plan.input[0]} channel(s)",
                       "declare 'input (3, H, W)' for a detection backbone")  # fmt: skip


def losses(
    model: RetinaNet, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """RetinaNet's training losses ({"classification", "bbox_regression"}) in whatever mode the
    model is in. torchvision's forward returns losses only in training mode, where BatchNorm uses
    (and updates) batch statistics; this runs the same steps (transform, backbone, head, anchors,
    compute_loss) without that switch, so held-out losses in eval mode use the running statistics."""
    image_list, targets = model.transform(images, targets)
    features = list(model.backbone(image_list.tensors).values())
    head_outputs = model.head(features)
    anchors = model.anchor_generator(image_list, features)
    return model.compute_loss(targets, head_outputs, anchors)


def random_hflip(images: list[torch.Tensor], targets: list[dict[str, Any]], p: float,
                 generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:  # fmt: skip
    """Flip each image (and its xyxy boxes) left-right with probability `p`; one draw per image from
    `generator`, whatever `p` is. Inputs are not changed."""
    flips = torch.rand(len(images), generator=generator) < p
    out_images, out_targets = [], []
    for image, target, flip in zip(images, targets, flips.tolist()):
        if flip:
            w = image.shape[-1]
            boxes = target["boxes"]
            target = {
                **target,
                "boxes": torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1),
            }
            image = image.flip(-1)
        out_images.append(image)
        out_targets.append(target)
    return out_images, out_targets


def load_backbone(model: RetinaNet, state_dict: dict[str, torch.Tensor], name: str | Path = "checkpoint") -> None:
    """Start the detector's backbone from a classification network's state_dict (what `nasir train`
    writes under "model"): every backbone weight must be there with its shape; the classifier and
    auxiliary head are ignored."""
    body = model.backbone.body
    want = body.state_dict()
    missing = [k for k in want if k not in state_dict]
    wrong = [k for k in want if k in state_dict and tuple(state_dict[k].shape) != tuple(want[k].shape)]
    if missing or wrong:
        what = (
            f"{len(missing)} backbone weights missing" if missing else f"{len(wrong)} backbone weights of another shape"
        )
        raise DiagnosticError([Diagnostic(f"'{name}' does not fit the backbone: {what} (e.g. {(missing or wrong)[0]})",
                                          hint="was it trained with other network parameters? pass the same --set values")])  # fmt: skip
    body.load_state_dict({k: state_dict[k] for k in want})


SETTINGS = ("num_classes", "network", "overrides", "min_size", "max_size", "levels", "fpn_channels")


def load_detector(
    spec: ir.Spec, path: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[RetinaNet, dict[str, Any]]:
    """A trained detector from a checkpoint that carries its settings (best.pt or last.pt of
    `nasir train --task detection`, or the .state_dict.pt `write_module` writes): rebuilt with
    `retinanet(spec, **config)`, weights loaded. Returns it and the settings `write_module` takes.
    `overrides`, if given, must be the network parameters it was trained with."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DiagnosticError([Diagnostic(f"cannot read checkpoint '{path}': no such file")]) from None
    except Exception as e:  # corrupt or foreign: a diagnostic, no traceback
        raise DiagnosticError(
            [Diagnostic(f"cannot load checkpoint '{path}': {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")]
        ) from None
    config = ck.get("config") if isinstance(ck, dict) else None
    weights = ck.get("state_dict", ck.get("model")) if isinstance(ck, dict) else None
    if not isinstance(config, dict) or "num_classes" not in config or not isinstance(weights, dict):
        raise DiagnosticError([Diagnostic(f"'{path}' is not a RetinaNet checkpoint (it has no detector settings)",
                                          hint="train a detector with `nasir train --task detection`; a classification "
                                               "checkpoint can start one's backbone (--backbone-weights)")])  # fmt: skip
    trained = dict(config.get("overrides") or {})
    if overrides and dict(overrides) != trained:
        shown = " ".join(f"--set {k}={v}" for k, v in trained.items()) or "no --set"
        raise DiagnosticError([Diagnostic(f"'{path}' was trained with other network parameters ({shown})",
                                          hint="pass the --set values it was trained with, or none")])  # fmt: skip
    model = retinanet(spec, **config)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise DiagnosticError(
            [Diagnostic(f"'{path}' does not fit the detector of this spec: {str(e).strip().splitlines()[0]}")]
        ) from None
    return model.eval(), {k: config.get(k) for k in SETTINGS}
