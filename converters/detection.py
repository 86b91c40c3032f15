"""SSD layers (weiliu89/caffe, branch ``ssd``): Permute, Normalize, PriorBox, DetectionOutput.

Semantics from the fork's CPU forwards: src/caffe/layers/{permute,normalize,prior_box,
detection_output}_layer.cpp and src/caffe/util/bbox_util.cpp. Traps a naive mapping misses:

- Normalize adds ``eps`` to the sum of squares inside the square root (not to the norm).
- PriorBox reads min/max sizes as ``int`` (Pelee's 21.28 is 21), orders priors per cell as
  min box, sqrt(min*max) box, then the aspect ratios in setup order (1/ar right after ar).
- DetectionOutput sorts candidates with ``std::stable_sort`` (equal scores keep prior order),
  keeps a box when its IoU with every kept box is ``<=`` the threshold, shrinks the threshold by
  ``eta`` after each keep while it is > 0.5, writes rows grouped by image then by ascending label,
  and writes one ``[i, -1, -1, -1, -1, -1, -1]`` row per image when the batch has no detection.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.fx
from torch import nn

from caffe_bridge import shapes as _shapes
from caffe_bridge.converters import registry as _registry
from caffe_bridge.errors import PrototxtError, UnsupportedLayerError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.shapes import LayerShapes, ShapeRuleError

FLT_MAX = float(np.finfo(np.float32).max)
CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3


def register(type_: str, *, shape: object, fork: str):  # type: ignore[no-untyped-def]
    """The registry's ``register(type, shape=, fork=)``; until that API is merged, the old
    ``register(type)`` plus ``shapes.shape_rule`` (TODO: plain import after the merge)."""
    try:
        return _registry.register(type_, shape=shape, fork=fork)  # type: ignore[call-arg]
    except TypeError:
        _shapes.shape_rule(type_)(shape)  # type: ignore[arg-type]
        return _registry.register(type_)


def _has(msg: object, name: str) -> bool:
    return msg.HasField(name)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- Permute

def permute_order(param: object, ndim: int) -> tuple[int, ...]:
    """The listed axes, then the unlisted ones in natural order (PermuteLayer::LayerSetUp)."""
    order: list[int] = []
    for o in param.permute_param.order:  # type: ignore[attr-defined]
        if o >= ndim:
            raise ShapeRuleError(f"Permute order {o} is not an axis of a {ndim}-D blob")
        if o in order:
            raise ShapeRuleError(f"Permute order repeats axis {o}")
        order.append(int(o))
    return tuple(order + [i for i in range(ndim) if i not in order])


def permute_shape(param: object, in_shapes: list[tuple[int, ...]]) -> LayerShapes:
    x = in_shapes[0]
    return LayerShapes(tops=(tuple(x[i] for i in permute_order(param, len(x))),))


class CaffePermute(nn.Module):
    """``x.permute(order)`` with Caffe's completed axis order."""

    def __init__(self, order: tuple[int, ...]) -> None:
        super().__init__()
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.order).contiguous()


@register("Permute", shape=permute_shape, fork="weiliu89/caffe (ssd)")
def convert_permute(layer: Layer, net: Net) -> nn.Module:
    """Permute (SSD): reorder axes; unlisted axes follow in their original order."""
    try:
        order = permute_order(layer.param, len(net.blobs[layer.bottoms[0]].shape))
    except ShapeRuleError as err:
        raise PrototxtError(str(err)) from None
    return CaffePermute(order)


# --------------------------------------------------------------------------- Normalize

def normalize_shape(param: object, in_shapes: list[tuple[int, ...]]) -> LayerShapes:
    x = in_shapes[0]
    if len(x) < 2:
        raise ShapeRuleError("Normalize needs a blob with at least 2 axes")
    shared = param.norm_param.channel_shared  # type: ignore[attr-defined]
    return LayerShapes(tops=(x,), params=((1,) if shared else (x[1],),))


class L2Normalize(nn.Module):
    """x / sqrt(sum(x^2) + eps) * scale (SSD Normalize); the sum runs over C*H*W per sample
    (across_spatial) or over channels per position."""

    def __init__(self, scale: torch.Tensor, eps: float, across_spatial: bool, ndim: int) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.eps = eps
        self.dims = tuple(range(1, ndim)) if across_spatial else (1,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.sqrt(x.square().sum(self.dims, keepdim=True) + self.eps)
        return x / norm * self.scale


@register("Normalize", shape=normalize_shape, fork="weiliu89/caffe (ssd)")
def convert_normalize(layer: Layer, net: Net) -> nn.Module:
    """Normalize (SSD): L2 normalisation (eps inside the root) times a learned scale."""
    p = layer.param.norm_param
    shape = net.blobs[layer.bottoms[0]].shape
    ndim = len(shape)
    if layer.blobs:
        scale = torch.from_numpy(np.asarray(layer.blobs[0], np.float32).reshape(-1).copy())
    else:  # Caffe's scale_filler default: constant 1 (or the filler's constant value)
        filler = p.scale_filler
        value = filler.value if _has(p, "scale_filler") and filler.type == "constant" else 1.0
        scale = torch.full((1 if p.channel_shared else shape[1],), float(value))
    if not p.channel_shared:
        scale = scale.reshape((1, -1) + (1,) * (ndim - 2))
    elif scale.numel() != 1:
        raise PrototxtError("channel_shared Normalize needs a single scale value")
    return L2Normalize(scale, float(np.float32(p.eps)), p.across_spatial, ndim)


# --------------------------------------------------------------------------- PriorBox

def _int_sizes(values: object, what: str) -> list[int]:
    """min_size/max_size as the forward reads them (``int``): NaN fails Caffe's CHECK_GT,
    an infinite size has no int value (undefined behaviour in the source): both refused."""
    out = []
    for v in values:  # type: ignore[attr-defined]
        if not math.isfinite(v):
            raise ShapeRuleError(f"PriorBox {what} must be a finite number, not {v}")
        out.append(int(v))
    return out


def _aspect_ratios(p: object) -> list[float]:
    """LayerSetUp's list: 1, then each new ratio (and 1/ratio with flip), as floats. A ratio
    is new unless within 1e-6 of one listed (so a NaN always is); 1/0 is inf, as in C++."""
    ars = [1.0]
    for ar in p.aspect_ratio:  # type: ignore[attr-defined]
        ar = float(np.float32(ar))
        if not any(abs(ar - e) < 1e-6 for e in ars):
            ars.append(ar)
            if p.flip:  # type: ignore[attr-defined]
                with np.errstate(divide="ignore"):
                    ars.append(float(np.float32(np.divide(1.0, ar))))
    return ars


def prior_setup(p: object) -> tuple[list[int], list[int], list[float], list[float]]:
    """min sizes and max sizes (int, as the forward reads them), aspect ratios, variances."""
    if not p.min_size or not all(v > 0 for v in p.min_size):  # type: ignore[attr-defined]
        raise ShapeRuleError("PriorBox needs at least one min_size, each positive")
    mins = _int_sizes(p.min_size, "min_size")  # type: ignore[attr-defined]
    maxs = _int_sizes(p.max_size, "max_size")  # type: ignore[attr-defined]
    if maxs and len(maxs) != len(mins):
        raise ShapeRuleError("PriorBox needs as many max_size as min_size values")
    if maxs and not all(b > a for a, b in zip(p.min_size, p.max_size, strict=True)):  # type: ignore[attr-defined]
        raise ShapeRuleError("PriorBox max_size must be greater than min_size")
    var = [float(np.float32(v)) for v in p.variance] or [0.1]  # type: ignore[attr-defined]
    if len(var) not in (1, 4) or not all(v > 0 for v in var):
        raise ShapeRuleError("PriorBox needs 1 or 4 positive variances")
    return mins, maxs, _aspect_ratios(p), var


def num_priors(p: object) -> int:
    mins, maxs, ars, _ = prior_setup(p)
    return len(mins) * len(ars) + len(maxs)


def prior_box_shape(param: object, in_shapes: list[tuple[int, ...]]) -> LayerShapes:
    if len(in_shapes) != 2 or len(in_shapes[0]) != 4 or len(in_shapes[1]) != 4:
        raise ShapeRuleError("PriorBox takes a 4-D feature map and the 4-D image blob")
    h, w = in_shapes[0][2:]
    return LayerShapes(tops=((1, 2, h * w * num_priors(param.prior_box_param) * 4),))


def _img_step(p: object, fh: int, fw: int, img: tuple[int, int]
              ) -> tuple[int, int, float, float]:
    if _has(p, "img_h") or _has(p, "img_w"):
        if _has(p, "img_size"):
            raise PrototxtError("PriorBox: give img_size or img_h/img_w, not both")
        ih, iw = p.img_h, p.img_w  # type: ignore[attr-defined]
        if ih <= 0 or iw <= 0:
            raise PrototxtError("PriorBox img_h and img_w must both be positive")
    else:
        ih = iw = p.img_size if _has(p, "img_size") else 0  # type: ignore[attr-defined]
    if ih == 0 or iw == 0:
        ih, iw = img
    if _has(p, "step_h") or _has(p, "step_w"):
        if _has(p, "step"):
            raise PrototxtError("PriorBox: give step or step_h/step_w, not both")
        sh, sw = float(p.step_h), float(p.step_w)  # type: ignore[attr-defined]
        if sh <= 0 or sw <= 0:
            raise PrototxtError("PriorBox step_h and step_w must both be positive")
    else:
        sh = sw = float(p.step) if _has(p, "step") else 0.0  # type: ignore[attr-defined]
    if sh == 0 or sw == 0:
        sw = float(np.float32(iw) / np.float32(fw))
        sh = float(np.float32(ih) / np.float32(fh))
    return ih, iw, sh, sw


def prior_boxes(p: object, fh: int, fw: int, img: tuple[int, int]) -> np.ndarray:
    """PriorBoxLayer::Forward_cpu as a float32 array 1 x 2 x (fh*fw*num_priors*4)."""
    mins, maxs, ars, var = prior_setup(p)
    ih, iw, sh, sw = _img_step(p, fh, fw, img)
    f32 = np.float32
    sizes = []  # (width, height) per prior of one cell, in the source's order
    for s, mn in enumerate(mins):
        sizes.append((float(mn), float(mn)))
        if maxs:
            side = float(f32(math.sqrt(mn * maxs[s])))
            sizes.append((side, side))
        for ar in ars:
            if not abs(ar - 1.0) < 1e-6:  # min_size_ * sqrt(ar) in float, as the source does
                with np.errstate(invalid="ignore", divide="ignore"):  # ar <= 0, inf, NaN
                    r = np.sqrt(f32(ar))
                    sizes.append((float(f32(mn) * r), float(f32(mn) / r)))
    wh = np.asarray(sizes, np.float64)
    off = float(f32(p.offset))  # type: ignore[attr-defined]
    cx = ((np.arange(fw) + off).astype(f32) * f32(sw)).astype(np.float64)
    cy = ((np.arange(fh) + off).astype(f32) * f32(sh)).astype(np.float64)
    cx, cy = np.meshgrid(cx, cy)  # fh x fw, h outer
    cx, cy = cx[..., None], cy[..., None]
    boxes = np.stack([(cx - wh[:, 0] / 2) / iw, (cy - wh[:, 1] / 2) / ih,
                      (cx + wh[:, 0] / 2) / iw, (cy + wh[:, 1] / 2) / ih], -1).reshape(-1)
    if p.clip:  # type: ignore[attr-defined]
        boxes = np.clip(boxes, 0.0, 1.0)
    variances = np.tile(np.asarray(var * (4 // len(var)), np.float64), boxes.size // 4)
    return np.stack([boxes, variances])[None].astype(np.float32)


class PriorBoxes(nn.Module):
    """Returns its precomputed priors (they depend only on the blob shapes, not the values)."""

    def __init__(self, priors: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("priors", torch.from_numpy(priors))

    def forward(self, feature: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.priors


@register("PriorBox", shape=prior_box_shape, fork="weiliu89/caffe (ssd)")
def convert_prior_box(layer: Layer, net: Net) -> nn.Module:
    """PriorBox (SSD): default boxes and variances, 1 x 2 x (H*W*priors*4), from the shapes."""
    feat = net.blobs[layer.bottoms[0]].shape
    img = net.blobs[layer.bottoms[1]].shape
    try:
        priors = prior_boxes(layer.param.prior_box_param, feat[2], feat[3], (img[2], img[3]))
    except ShapeRuleError as err:
        raise PrototxtError(str(err)) from None
    return PriorBoxes(priors)


# --------------------------------------------------------------------------- DetectionOutput

def _exporting() -> bool:
    compiling = getattr(torch.compiler, "is_compiling", lambda: False)()
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or compiling)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """JaccardOverlap (normalized) of every a[..., i] with b[..., j], in the boxes' dtype.

    BBoxSize: an inverted box has size 0; a pair whose intersection has no positive width and
    height overlaps 0.
    """
    a, b = a.unsqueeze(-2), b.unsqueeze(-3)
    iw = torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])
    ih = torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])
    inter = iw * ih
    union = box_size(a) + box_size(b) - inter
    return torch.where((iw > 0) & (ih > 0), inter / union, torch.zeros_like(inter))


def box_size(b: torch.Tensor) -> torch.Tensor:
    """BBoxSize(normalized=true): width * height, 0 when xmax < xmin or ymax < ymin."""
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)


@torch.fx.wrap
def greedy_nms(boxes: torch.Tensor, valid: torch.Tensor, thresholds: torch.Tensor,
               layer: str) -> torch.Tensor:
    """ApplyNMSFast on score-sorted candidates: which of ``boxes`` (B x K x 4) are kept.

    ``thresholds[m]`` is the overlap threshold after m keeps (eta schedule). Vectorised as a
    fixed-point iteration over the keep mask (no loop over boxes): candidate i is kept iff it
    is valid and overlaps no kept j < i by more than ``thresholds[#kept before i]``. The
    greedy result is the unique fixed point; each pass settles at least one more candidate,
    and in practice a handful of passes (the depth of suppression chains) suffice.
    Classes are processed in chunks so the K x K overlap matrices stay small.
    """
    if _exporting():
        raise UnsupportedLayerError(
            f"DetectionOutput layer {layer!r} cannot be exported: its NMS keeps a "
            "data-dependent number of boxes (a traced graph would freeze one input's result). "
            "Export the net up to DetectionOutput's bottoms and run DetectionOutput in PyTorch.")
    b, k = valid.shape
    keep = valid.clone()
    if b == 0 or k == 0:
        return keep
    k_used = int(valid.sum(1).max())  # valid candidates come first (sorted)
    if k_used == 0:
        return keep
    before = torch.ones(k_used, k_used, dtype=torch.bool, device=valid.device).tril(-1)
    chunk = max(1, (1 << 24) // (k_used * k_used))
    for lo in range(0, b, chunk):
        bx, vl = boxes[lo:lo + chunk, :k_used], valid[lo:lo + chunk, :k_used]
        iou = pairwise_iou(bx, bx)  # [i, j]
        cur = vl.clone()
        while True:
            n_before = cur.long().cumsum(1) - cur.long()
            thr = thresholds[n_before]
            hit = (iou > thr.unsqueeze(-1)) & before & cur.unsqueeze(-2)
            new = vl & ~hit.any(-1)
            if torch.equal(new, cur):
                break
            cur = new
        keep[lo:lo + chunk, :k_used] = cur
    return keep


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, var: torch.Tensor, code: int
                 ) -> torch.Tensor:
    """DecodeBBox in float, operation order as in bbox_util.cpp (var is 1 when encoded in
    the target). loc: ... x 4, priors/var broadcastable."""
    x1, y1, x2, y2 = priors.unbind(-1)
    v = var.unbind(-1)
    lx1, ly1, lx2, ly2 = loc.unbind(-1)
    if code == CORNER:
        out = (x1 + v[0] * lx1, y1 + v[1] * ly1, x2 + v[2] * lx2, y2 + v[3] * ly2)
    elif code == CORNER_SIZE:
        pw, ph = x2 - x1, y2 - y1
        out = (x1 + v[0] * lx1 * pw, y1 + v[1] * ly1 * ph, x2 + v[2] * lx2 * pw,
               y2 + v[3] * ly2 * ph)
    else:
        pw, ph = x2 - x1, y2 - y1
        cx = v[0] * lx1 * pw + (x1 + x2) / 2
        cy = v[1] * ly1 * ph + (y1 + y2) / 2
        w, h = torch.exp(v[2] * lx2) * pw, torch.exp(v[3] * ly2) * ph
        out = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    return torch.stack(out, -1)


class SSDDetectionOutput(nn.Module):
    """SSD DetectionOutput: decode, per-class NMS, keep_top_k; rows 1 x 1 x N x 7.

    Each row is [image, label, score, xmin, ymin, xmax, ymax] (normalised, unclipped boxes),
    ordered by image, then ascending label, then NMS order (descending score). The number of
    rows depends on the data; with no detection in the batch, one [i, -1, ...] row per image.
    """

    def __init__(self, layer: str, num_priors: int, num_classes: int, share_location: bool,
                 background: int, code: int, in_target: bool, conf_thr: float, nms_thr: float,
                 eta: float, top_k: int, keep_top_k: int) -> None:
        super().__init__()
        self.layer, self.P, self.C = layer, num_priors, num_classes
        self.share, self.code, self.in_target = share_location, code, in_target
        self.conf_thr, self.keep_top_k = conf_thr, keep_top_k
        self.K = num_priors if top_k < 0 else min(top_k, num_priors)
        self.register_buffer("labels", torch.tensor(
            [c for c in range(num_classes) if c != background], dtype=torch.long))
        thr, table = np.float32(nms_thr), []
        for _ in range(self.K + 1):
            table.append(thr)
            if eta < 1 and thr > 0.5:
                thr = np.float32(thr * np.float32(eta))
        self.register_buffer("thresholds", torch.tensor(np.asarray(table, np.float32)))

    def candidates(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per (image, class): top-K candidates by stable descending score: boxes, scores,
        validity (score > confidence_threshold)."""
        n_loc = 1 if self.share else self.C
        priors = prior[0, 0].reshape(self.P, 1, 4)
        var = prior[0, 1].reshape(self.P, 1, 4)
        if self.in_target:
            var = torch.ones_like(var)
        boxes = decode_boxes(loc.reshape(-1, self.P, n_loc, 4), priors, var, self.code)
        boxes = boxes.expand(-1, -1, self.C, -1) if self.share else boxes
        boxes = boxes.index_select(2, self.labels).transpose(1, 2)  # N x C' x P x 4
        scores = conf.reshape(-1, self.P, self.C).index_select(2, self.labels).transpose(1, 2)
        valid = scores > self.conf_thr
        key = torch.where(valid, scores, torch.full_like(scores, -math.inf))
        order = torch.sort(key, dim=-1, descending=True, stable=True)[1][..., :self.K]
        boxes = boxes.gather(2, order.unsqueeze(-1).expand(-1, -1, -1, 4))
        return boxes, scores.gather(2, order), valid.gather(2, order)

    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor
                ) -> torch.Tensor:
        boxes, scores, valid = self.candidates(loc, conf, prior)
        n, c, k = valid.shape
        keep = greedy_nms(boxes.reshape(n * c, k, 4), valid.reshape(n * c, k),
                          self.thresholds, self.layer).reshape(n, c, k)
        if self.keep_top_k > -1:
            key = torch.where(keep, scores, torch.full_like(scores, -math.inf)).reshape(n, -1)
            order = torch.sort(key, dim=-1, descending=True, stable=True)[1]
            rank = torch.argsort(order, dim=-1).reshape(n, c, k)
            keep = keep & (rank < self.keep_top_k)
        image = torch.arange(n, device=loc.device, dtype=loc.dtype).reshape(n, 1, 1, 1)
        label = self.labels.to(loc.dtype).reshape(1, c, 1, 1)
        rows = torch.cat([image.expand(n, c, k, 1), label.expand(n, c, k, 1),
                          scores.unsqueeze(-1), boxes], -1)[keep]
        none = torch.cat([image.reshape(n, 1), torch.full((n, 6), -1.0, dtype=loc.dtype,
                                                          device=loc.device)], 1)
        empty = (keep.sum() == 0).expand(n)
        return torch.cat([rows, none[empty]], 0).reshape(1, 1, -1, 7)


def detection_output_shape(param: object, in_shapes: list[tuple[int, ...]]) -> LayerShapes:
    """Caffe's Reshape: 1 x 1 x 1 x 7 (the forward resizes to the number of detections)."""
    if len(in_shapes) != 3:
        raise ShapeRuleError(
            f"DetectionOutput with {len(in_shapes)} bottoms is not the SSD layer (loc, conf, "
            "priors); forks with extra inputs (RefineDet's ARM, YOLO ports) are not supported")
    p = param.detection_output_param
    n_pri = in_shapes[2][-1] // 4
    n_loc = 1 if p.share_location else p.num_classes
    if _count(in_shapes[0][1:]) != n_pri * n_loc * 4:
        raise ShapeRuleError("DetectionOutput: number of priors does not match the locations")
    if _count(in_shapes[1][1:]) != n_pri * p.num_classes:
        raise ShapeRuleError("DetectionOutput: number of priors does not match the confidences")
    return LayerShapes(tops=((1, 1, 1, 7),))


def _count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


@register("DetectionOutput", shape=detection_output_shape, fork="weiliu89/caffe (ssd)")
def convert_detection_output(layer: Layer, net: Net) -> nn.Module:
    """DetectionOutput (SSD): decode + per-class NMS; rows [image, label, score, box] x N."""
    p = layer.param.detection_output_param
    if not _has(p, "num_classes"):
        raise PrototxtError("DetectionOutput needs num_classes")
    if p.code_type not in (CORNER, CENTER_SIZE, CORNER_SIZE):
        raise PrototxtError(f"DetectionOutput: unknown code_type {p.code_type}")
    nms = p.nms_param
    if nms.nms_threshold < 0 or not 0 < nms.eta <= 1:
        raise PrototxtError("DetectionOutput needs nms_threshold >= 0 and 0 < eta <= 1")
    if p.visualize:
        raise UnsupportedLayerError("DetectionOutput visualize: true draws with OpenCV windows; "
                                    "not supported (set it to false)")
    n_pri = net.blobs[layer.bottoms[2]].shape[-1] // 4
    conf_thr = float(np.float32(p.confidence_threshold)) if _has(p, "confidence_threshold") \
        else -FLT_MAX
    return SSDDetectionOutput(
        layer.name, n_pri, p.num_classes, p.share_location, p.background_label_id, p.code_type,
        p.variance_encoded_in_target, conf_thr, float(np.float32(nms.nms_threshold)),
        float(np.float32(nms.eta)), nms.top_k if _has(nms, "top_k") else -1, p.keep_top_k)
