"""SSD layers (weiliu89/caffe, branch ``ssd``): Permute, Normalize, PriorBox, DetectionOutput.

Semantics from the fork's CPU forwards: src/caffe/layers/{permute,normalize,prior_box,
detection_output}_layer.cpp and src/caffe/util/bbox_util.cpp. Traps a naive mapping misses:

- Normalize adds ``eps`` to the sum of squares inside the square root (not to the norm).
- PriorBox reads min/max sizes as ``int`` (Pelee's 21.28 is 21) and ``clip`` defaults to false
  (OpenCV reads float sizes and clips when the field is absent). Priors per cell: min box,
  sqrt(min*max) box, then the aspect ratios in setup order (1/ar right after ar).
- OpenCV's copy of DetectionOutputParameter adds ``clip`` (decoded boxes clamped to [0, 1]
  before NMS; opencv/opencv modules/dnn/src/layers/detection_output_layer.cpp) and
  ``normalized_bbox`` (false is refused here).
- RefineDet's DetectionOutput (sfzhang15/RefineDet detection_output_layer.cpp, bbox_util.cpp
  OSGetConfidenceScores / CasRegDecodeBBoxesAll) takes arm_conf (4th bottom: priors with
  objectness < objectness_score score 1 for class 0 and 0 elsewhere) and arm_loc (5th: the
  priors are decoded by it first, then the locations against them, same variances).
- DetectionOutput sorts candidates with ``std::stable_sort`` (equal scores keep prior order),
  keeps a box when its IoU with every kept box is ``<=`` the threshold, shrinks the threshold by
  ``eta`` after each keep while it is > 0.5, writes rows grouped by image then by ascending label,
  and writes one ``[i, -1, -1, -1, -1, -1, -1]`` row per image when the batch has no detection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.fx
from google.protobuf import message as pb_message
from torch import nn

from caffe_bridge import schema
from caffe_bridge.converters.registry import register
from caffe_bridge.errors import PrototxtError, UnsupportedLayerError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.numeric import FLT_MAX, f32, f32_tensor
from caffe_bridge.shapes import LayerShapes, Shape, ShapeRuleError

_CODE = schema.PriorBoxParameter
CORNER, CENTER_SIZE, CORNER_SIZE = _CODE.CORNER, _CODE.CENTER_SIZE, _CODE.CORNER_SIZE


# --------------------------------------------------------------------------- Permute

def permute_order(param: pb_message.Message, ndim: int) -> tuple[int, ...]:
    """The listed axes, then the unlisted ones in natural order (PermuteLayer::LayerSetUp)."""
    order: list[int] = []
    for o in param.permute_param.order:
        if o >= ndim:
            raise ShapeRuleError(f"Permute order {o} is not an axis of a {ndim}-D blob")
        if o in order:
            raise ShapeRuleError(f"Permute order repeats axis {o}")
        order.append(int(o))
    return tuple(order + [i for i in range(ndim) if i not in order])


def permute_shape(param: pb_message.Message, in_shapes: Sequence[Shape]) -> LayerShapes:
    x = in_shapes[0]
    return LayerShapes(tops=(tuple(x[i] for i in permute_order(param, len(x))),))


class CaffePermute(nn.Module):
    """``x.permute(order)``, made contiguous (SSD's Permute, the OCR forks' Transpose)."""

    def __init__(self, order: tuple[int, ...]) -> None:
        super().__init__()
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.order).contiguous()


def _batch_first(layer: Layer, net: Net) -> bool:
    return permute_order(layer.param, len(net.blobs[layer.bottoms[0]].shape))[0] == 0


@register("Permute", shape=permute_shape, fork="weiliu89/caffe (ssd)", per_sample=_batch_first)
def convert_permute(layer: Layer, net: Net) -> nn.Module:
    """Permute (SSD): reorder axes; unlisted axes follow in their original order."""
    return CaffePermute(permute_order(layer.param, len(net.blobs[layer.bottoms[0]].shape)))


# --------------------------------------------------------------------------- Normalize

def normalize_shape(param: pb_message.Message, in_shapes: Sequence[Shape]) -> LayerShapes:
    x = in_shapes[0]
    if len(x) < 2:
        raise ShapeRuleError("Normalize needs a blob with at least 2 axes")
    shared = param.norm_param.channel_shared
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


@register("Normalize", shape=normalize_shape, fork="weiliu89/caffe (ssd)", per_sample=True)
def convert_normalize(layer: Layer, net: Net) -> nn.Module:
    """Normalize (SSD): L2 normalisation (eps inside the root) times a learned scale."""
    p = layer.param.norm_param
    shape = net.blobs[layer.bottoms[0]].shape
    ndim = len(shape)
    if layer.blobs:
        scale = f32_tensor(layer.blobs[0]).reshape(-1)
    else:  # Caffe's scale_filler default: constant 1 (or the filler's constant value)
        filler = p.scale_filler
        value = filler.value if p.HasField("scale_filler") and filler.type == "constant" else 1.0
        scale = torch.full((1 if p.channel_shared else shape[1],), float(value))
    if not p.channel_shared:
        scale = scale.reshape((1, -1) + (1,) * (ndim - 2))
    elif scale.numel() != 1:
        raise PrototxtError("channel_shared Normalize needs a single scale value")
    return L2Normalize(scale, f32(p.eps), p.across_spatial, ndim)


# --------------------------------------------------------------------------- PriorBox

def _int_sizes(values: object, what: str) -> list[int]:
    """min_size/max_size as the forward reads them (``int``): NaN fails Caffe's CHECK_GT,
    an infinite size has no int value (undefined behaviour in the source): both refused."""
    out = []
    for v in values:
        if not math.isfinite(v):
            raise ShapeRuleError(f"PriorBox {what} must be a finite number, not {v}")
        out.append(int(v))
    return out


def _aspect_ratios(p: pb_message.Message) -> list[float]:
    """LayerSetUp's list: 1, then each new ratio (and 1/ratio with flip), as floats. A ratio
    is new unless within 1e-6 of one listed (so a NaN always is); 1/0 is inf, as in C++."""
    ars = [1.0]
    for ar in p.aspect_ratio:
        ar = f32(ar)
        if not any(abs(ar - e) < 1e-6 for e in ars):
            ars.append(ar)
            if p.flip:
                with np.errstate(divide="ignore"):
                    ars.append(float(np.float32(np.divide(1.0, ar))))
    return ars


def prior_setup(p: pb_message.Message) -> tuple[list[int], list[int], list[float], list[float]]:
    """min sizes and max sizes (int, as the forward reads them), aspect ratios, variances."""
    extra = [f for f in ("offset_h", "offset_w", "width", "height") if len(getattr(p, f))]
    if extra:
        raise ShapeRuleError(
            f"PriorBox {'/'.join(extra)} (OpenCV's explicit prior sizes) is not supported")
    if not p.min_size or not all(v > 0 for v in p.min_size):
        raise ShapeRuleError("PriorBox needs at least one min_size, each positive")
    mins = _int_sizes(p.min_size, "min_size")
    maxs = _int_sizes(p.max_size, "max_size")
    if maxs and len(maxs) != len(mins):
        raise ShapeRuleError("PriorBox needs as many max_size as min_size values")
    if maxs and not all(b > a for a, b in zip(p.min_size, p.max_size, strict=True)):
        raise ShapeRuleError("PriorBox max_size must be greater than min_size")
    var = [f32(v) for v in p.variance] or [0.1]
    if len(var) not in (1, 4) or not all(v > 0 for v in var):
        raise ShapeRuleError("PriorBox needs 1 or 4 positive variances")
    return mins, maxs, _aspect_ratios(p), var


def num_priors(p: pb_message.Message) -> int:
    mins, maxs, ars, _ = prior_setup(p)
    return len(mins) * len(ars) + len(maxs)


def prior_box_shape(param: pb_message.Message, in_shapes: Sequence[Shape]) -> LayerShapes:
    if len(in_shapes) != 2 or len(in_shapes[0]) != 4 or len(in_shapes[1]) != 4:
        raise ShapeRuleError("PriorBox takes a 4-D feature map and the 4-D image blob")
    h, w = in_shapes[0][2:]
    return LayerShapes(tops=((1, 2, h * w * num_priors(param.prior_box_param) * 4),))


def _img_step(p: pb_message.Message, fh: int, fw: int, img: tuple[int, int]
              ) -> tuple[int, int, float, float]:
    if p.HasField("img_h") or p.HasField("img_w"):
        if p.HasField("img_size"):
            raise PrototxtError("PriorBox: give img_size or img_h/img_w, not both")
        ih, iw = p.img_h, p.img_w
        if ih <= 0 or iw <= 0:
            raise PrototxtError("PriorBox img_h and img_w must both be positive")
    else:
        ih = iw = p.img_size if p.HasField("img_size") else 0
    if ih == 0 or iw == 0:
        ih, iw = img
    if p.HasField("step_h") or p.HasField("step_w"):
        if p.HasField("step"):
            raise PrototxtError("PriorBox: give step or step_h/step_w, not both")
        sh, sw = float(p.step_h), float(p.step_w)
        if sh <= 0 or sw <= 0:
            raise PrototxtError("PriorBox step_h and step_w must both be positive")
    else:
        sh = sw = float(p.step) if p.HasField("step") else 0.0
    if sh == 0 or sw == 0:
        sw = float(np.float32(iw) / np.float32(fw))
        sh = float(np.float32(ih) / np.float32(fh))
    return ih, iw, sh, sw


def prior_boxes(p: pb_message.Message, fh: int, fw: int, img: tuple[int, int]) -> np.ndarray:
    """PriorBoxLayer::Forward_cpu as a float32 array 1 x 2 x (fh*fw*num_priors*4)."""
    mins, maxs, ars, var = prior_setup(p)
    ih, iw, sh, sw = _img_step(p, fh, fw, img)
    single = np.float32  # float32 arithmetic, as the source's float members
    sizes = []  # (width, height) per prior of one cell, in the source's order
    for s, mn in enumerate(mins):
        sizes.append((float(mn), float(mn)))
        if maxs:
            side = f32(math.sqrt(mn * maxs[s]))
            sizes.append((side, side))
        for ar in ars:
            if not abs(ar - 1.0) < 1e-6:  # min_size_ * sqrt(ar) in float, as the source does
                with np.errstate(invalid="ignore", divide="ignore"):  # ar <= 0, inf, NaN
                    r = np.sqrt(single(ar))
                    sizes.append((float(single(mn) * r), float(single(mn) / r)))
    wh = np.asarray(sizes, np.float64)
    off = f32(p.offset)
    cx = ((np.arange(fw) + off).astype(single) * single(sw)).astype(np.float64)
    cy = ((np.arange(fh) + off).astype(single) * single(sh)).astype(np.float64)
    cx, cy = np.meshgrid(cx, cy)  # fh x fw, h outer
    cx, cy = cx[..., None], cy[..., None]
    boxes = np.stack([(cx - wh[:, 0] / 2) / iw, (cy - wh[:, 1] / 2) / ih,
                      (cx + wh[:, 0] / 2) / iw, (cy + wh[:, 1] / 2) / ih], -1).reshape(-1)
    if p.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    variances = np.tile(np.asarray(var * (4 // len(var)), np.float64), boxes.size // 4)
    return np.stack([boxes, variances])[None].astype(np.float32)


class PriorBoxes(nn.Module):
    """Returns its precomputed priors (they depend only on the blob shapes, not the values)."""

    def __init__(self, priors: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("priors", priors)

    def forward(self, feature: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.priors


@register("PriorBox", shape=prior_box_shape, fork="weiliu89/caffe (ssd)")
def convert_prior_box(layer: Layer, net: Net) -> nn.Module:
    """PriorBox (SSD): default boxes and variances, 1 x 2 x (H*W*priors*4), from the shapes."""
    feat = net.blobs[layer.bottoms[0]].shape
    img = net.blobs[layer.bottoms[1]].shape
    priors = prior_boxes(layer.param.prior_box_param, feat[2], feat[3], (img[2], img[3]))
    return PriorBoxes(torch.from_numpy(priors))


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


NMS_BLOCK = 32  # candidates settled together; blocks run in score order


@torch.fx.wrap
def greedy_nms(boxes: torch.Tensor, valid: torch.Tensor, thresholds: torch.Tensor,
               layer: str) -> torch.Tensor:
    """ApplyNMSFast on score-sorted candidates: which of ``boxes`` (B x K x 4) are kept.

    Candidate i is kept iff it is valid and overlaps no kept j < i by more than
    ``thresholds[#kept before i]`` (the eta schedule). Vectorised over classes and images;
    candidates are settled in blocks of ``NMS_BLOCK`` in score order (a loop over K / 32
    blocks, not over boxes): inside a block the keep mask is the unique fixed point of that
    rule given the earlier blocks, found by iterating the whole-block update (each pass
    settles at least one more candidate; in practice a few passes).
    """
    if _exporting():
        raise RuntimeError(  # plain torch/stdlib here: this code is copied by codegen
            f"DetectionOutput layer {layer} cannot be exported: its NMS keeps a data-dependent "
            "number of boxes (a traced graph would freeze one input's result). Export the net "
            "up to its bottoms (caffe_bridge.convert(net, outputs=[...])) and run "
            "DetectionOutput in PyTorch.")
    keep = valid.clone()
    k_used = int(valid.sum(1).max()) if valid.numel() else 0  # valid candidates come first
    if k_used == 0:
        return keep
    chunk = max(1, (1 << 24) // (k_used * k_used))
    for lo in range(0, valid.shape[0], chunk):
        bx, vl = boxes[lo:lo + chunk, :k_used], valid[lo:lo + chunk, :k_used]
        keep[lo:lo + chunk, :k_used] = _nms_blocks(bx, vl, thresholds)
    return keep


def _nms_blocks(boxes: torch.Tensor, valid: torch.Tensor, thresholds: torch.Tensor
                ) -> torch.Tensor:
    """Greedy keep mask of score-sorted ``boxes`` (B x K x 4), block by block; each block's
    overlaps are computed against itself and the kept boxes of the earlier blocks only."""
    b, k = valid.shape
    kept = torch.zeros_like(valid)
    n_kept = torch.zeros(b, dtype=torch.long, device=valid.device)
    last = thresholds.numel() - 1
    for lo in range(0, k, NMS_BLOCK):
        hi = min(lo + NMS_BLOCK, k)
        vl = valid[:, lo:hi]
        inner = pairwise_iou(boxes[:, lo:hi], boxes[:, lo:hi])
        cross, prev = _overlaps_with_kept(boxes, kept, lo, hi)
        before = torch.ones(hi - lo, hi - lo, dtype=torch.bool, device=valid.device).tril(-1)
        cur = vl.clone()
        while True:
            count = n_kept.unsqueeze(1) + cur.long().cumsum(1) - cur.long()
            thr = thresholds[count.clamp(max=last)].unsqueeze(-1)
            hit = ((cross > thr) & prev.unsqueeze(1)).any(-1)
            hit |= ((inner > thr) & before & cur.unsqueeze(-2)).any(-1)
            new = vl & ~hit
            if torch.equal(new, cur):
                break
            cur = new
        kept[:, lo:hi] = cur
        n_kept += cur.sum(1)
    return kept


def _overlaps_with_kept(boxes: torch.Tensor, kept: torch.Tensor, lo: int, hi: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU of candidates lo:hi with the boxes kept before lo (B x blk x M, M = most kept in
    any row; padded), and the mask of real (not padding) kept boxes (B x M)."""
    n = kept[:, :lo].sum(1)
    m = int(n.max()) if lo else 0
    order = torch.sort(kept[:, :lo].to(torch.uint8), dim=1, descending=True, stable=True)[1]
    idx = order[:, :m]
    prev = torch.arange(m, device=kept.device).unsqueeze(0) < n.unsqueeze(1)
    kept_boxes = boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
    return pairwise_iou(boxes[:, lo:hi], kept_boxes), prev


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
                 eta: float, top_k: int, keep_top_k: int, clip: bool = False,
                 objectness: float = 0.01) -> None:
        super().__init__()
        self.clip, self.objectness = clip, objectness
        self.layer, self.P, self.C = layer, num_priors, num_classes
        self.share, self.code, self.in_target = share_location, code, in_target
        self.conf_thr, self.keep_top_k = conf_thr, keep_top_k
        self.K = num_priors if top_k < 0 else min(top_k, num_priors)
        self.register_buffer("labels", torch.tensor(
            [c for c in range(num_classes) if c != background], dtype=torch.long))
        # threshold after m keeps, in float as the source computes it; constant once
        # eta == 1 or the threshold is <= 0.5 (counts past the end use the last entry)
        table = [torch.tensor(nms_thr, dtype=torch.float32)]
        while eta < 1 and float(table[-1]) > 0.5 and len(table) <= self.K:
            table.append(table[-1] * torch.tensor(eta, dtype=torch.float32))
        self.register_buffer("thresholds", torch.stack(table))

    def candidates(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor,
                   arm: tuple[torch.Tensor, ...] = ()
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per (image, class): top-K candidates by stable descending score: boxes, scores,
        validity (score > confidence_threshold). ``arm``: RefineDet's (arm_conf[, arm_loc])."""
        n_loc = 1 if self.share else self.C
        priors = prior[0, 0].reshape(self.P, 1, 4)
        var = prior[0, 1].reshape(self.P, 1, 4)
        if self.in_target:
            var = torch.ones_like(var)
        n = conf.shape[0]  # loc, conf and priors must agree: a wrong size fails here, loudly
        if len(arm) > 1:  # RefineDet: the ARM's offsets refine the priors first
            priors = decode_boxes(arm[1].reshape(n, self.P, 1, 4), priors, var, self.code)
        boxes = decode_boxes(loc.reshape(n, self.P, n_loc, 4), priors, var, self.code)
        if self.clip:  # OpenCV's fork field: clamp to [0, 1] before NMS
            boxes = boxes.clamp(0.0, 1.0)
        boxes = boxes.expand(-1, -1, self.C, -1) if self.share else boxes
        boxes = boxes.index_select(2, self.labels).transpose(1, 2)  # N x C' x P x 4
        conf = conf.reshape(n, self.P, self.C)
        if arm:  # RefineDet: low objectness -> scores (1, 0, 0, ...) for classes (0, 1, ...)
            easy = arm[0].reshape(n, self.P, 2)[..., 1:] < self.objectness
            background = (torch.arange(self.C, device=conf.device) == 0).to(conf.dtype)
            conf = torch.where(easy, background, conf)
        scores = conf.index_select(2, self.labels).transpose(1, 2)
        valid = scores > self.conf_thr
        key = torch.where(valid, scores, torch.full_like(scores, -math.inf))
        order = torch.sort(key, dim=-1, descending=True, stable=True)[1][..., :self.K]
        boxes = boxes.gather(2, order.unsqueeze(-1).expand(-1, -1, -1, 4))
        return boxes, scores.gather(2, order), valid.gather(2, order)

    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor,
                *arm: torch.Tensor) -> torch.Tensor:
        boxes, scores, valid = self.candidates(loc, conf, prior, arm)
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


def detection_output_shape(param: pb_message.Message, in_shapes: Sequence[Shape]) -> LayerShapes:
    """Caffe's Reshape: 1 x 1 x 1 x 7 (the forward resizes to the number of detections)."""
    if not 3 <= len(in_shapes) <= 5:
        raise ShapeRuleError(
            f"DetectionOutput with {len(in_shapes)} bottoms is neither SSD's (loc, conf, priors) "
            "nor RefineDet's (+ arm_conf [, arm_loc]); YOLO ports' variants are not supported")
    p = param.detection_output_param
    n_pri = in_shapes[2][-1] // 4
    n_loc = 1 if p.share_location else p.num_classes
    counts = [n_pri * n_loc * 4, n_pri * p.num_classes, None, n_pri * 2, n_pri * 4]
    names = ["locations", "confidences", "", "arm_conf (RefineDet)", "arm_loc (RefineDet)"]
    for i, shape in enumerate(in_shapes):
        if counts[i] is not None and math.prod(shape[1:]) != counts[i]:
            raise ShapeRuleError(
                f"DetectionOutput: {n_pri} priors do not match the {names[i]} {shape}")
    if len(in_shapes) == 5 and not p.share_location:
        raise ShapeRuleError("RefineDet's DetectionOutput (arm_loc) needs share_location")
    return LayerShapes(tops=((1, 1, 1, 7),))


def _top_k(p: pb_message.Message) -> int:
    """nms_param.top_k; else a ``top_k`` written beside nms_param (OpenCV reads it so)."""
    if p.nms_param.HasField("top_k"):
        return int(p.nms_param.top_k)
    return int(p.top_k) if p.HasField("top_k") else -1


@register("DetectionOutput", shape=detection_output_shape,
          fork="weiliu89/caffe (ssd); sfzhang15/RefineDet (4-5 bottoms)")
def convert_detection_output(layer: Layer, net: Net) -> nn.Module:
    """DetectionOutput (SSD): decode + per-class NMS; rows [image, label, score, box] x N."""
    p = layer.param.detection_output_param
    if not p.HasField("num_classes"):
        raise PrototxtError("DetectionOutput needs num_classes")
    if p.code_type not in (CORNER, CENTER_SIZE, CORNER_SIZE):
        raise PrototxtError(f"DetectionOutput: unknown code_type {p.code_type}")
    nms = p.nms_param
    if nms.nms_threshold < 0 or not 0 < nms.eta <= 1:
        raise PrototxtError("DetectionOutput needs nms_threshold >= 0 and 0 < eta <= 1")
    if not p.normalized_bbox:
        raise UnsupportedLayerError("DetectionOutput normalized_bbox: false (OpenCV's field: "
                                    "pixel boxes with +1 sizes) is not supported")
    if p.visualize:
        raise UnsupportedLayerError("DetectionOutput visualize: true draws with OpenCV windows; "
                                    "not supported (set it to false)")
    n_pri = net.blobs[layer.bottoms[2]].shape[-1] // 4
    conf_thr = f32(p.confidence_threshold) if p.HasField("confidence_threshold") \
        else -FLT_MAX
    where = f"{layer.name!r} (bottoms {', '.join(layer.caffe_bottoms)})"
    return SSDDetectionOutput(
        where, n_pri, p.num_classes, p.share_location, p.background_label_id, p.code_type,
        p.variance_encoded_in_target, conf_thr, f32(nms.nms_threshold),
        f32(nms.eta), _top_k(p), p.keep_top_k,
        p.clip, f32(p.objectness_score))

