"""R-CNN family: ROIPooling (Fast R-CNN), PSROIPooling (R-FCN) and the RPN proposal layer.

Sources: rbgirshick/caffe-fast-rcnn src/caffe/layers/roi_pooling_layer.cpp; daijifeng001/
caffe-rfcn src/caffe/layers/psroi_pooling_layer.cu (its .cpp forward is NOT_IMPLEMENTED);
rbgirshick/py-faster-rcnn lib/rpn/proposal_layer.py, generate_anchors.py, lib/nms/py_cpu_nms.py
and lib/fast_rcnn/config.py (TEST: pre-NMS 6000, post-NMS 300, NMS 0.7, min size 16).

Traps a naive port falls into: C's ``round`` sends halves away from zero (torch.round sends
them to even); ROIPooling's bins are floor/ceil of float32 products, overlap, and an empty bin
gives 0 (not -inf); py-faster-rcnn sorts twice with ``argsort()[::-1]``, so tied scores come
out highest-index first from the first sort and lowest-index first into NMS.

The data-dependent cores are ``torch.fx.wrap``-ed functions: a re-traced graph calls them as
single nodes. The proposal layer returns as many rows as survive NMS, as Caffe does (the IR's
shape is the upper bound ``post_nms_topn``); NMS is greedy over kept boxes only: a loop of at
most ``post_nms_topn`` vectorised steps, each suppressing against one kept box.

NMS follows lib/nms/py_cpu_nms.py (areas with +1; a box survives IoU <= thresh), as does the
GPU kernel py-faster-rcnn uses by default; its Cython cpu_nms.pyx would also drop IoU == thresh.
Tie order: numpy's default argsort is only stable on short arrays (<= 16 items); beyond that its
tie order is unspecified, and we take the stable one. Batches (py-faster-rcnn takes one image)
give each image's proposals in turn, with the image index in column 0. The bbox decoding
follows bbox_transform_inv literally: zero deltas on the anchor (0, 0, 15, 15) give
(0, 0, 16, 16).

OpenCV's ``Proposal`` type is read with the same semantics. OpenCV itself differs: it skips the
min-size filter and pads rois/scores with zero rows up to ``post_nms_topn``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.fx
from google.protobuf import message as pb_message
from torch import nn

from caffe_bridge.converters.python_param import yaml_dict
from caffe_bridge.converters.registry import refuse, register
from caffe_bridge.errors import PrototxtError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.numeric import FLT_MAX
from caffe_bridge.shapes import LayerShapes, Shape, ShapeRuleError


def c_round(x: torch.Tensor) -> torch.Tensor:
    """C's round(): halves away from zero (exact: the fraction x - trunc(x) is exact)."""
    t = torch.trunc(x)
    return torch.where((x - t).abs() == 0.5, t + torch.sign(x), torch.round(x))


def _floor_log2(n: torch.Tensor, limit: int) -> torch.Tensor:
    """floor(log2(n)) for integer n in [1, limit], by comparisons (exact)."""
    k = torch.zeros_like(n)
    for e in range(1, max(limit, 1).bit_length()):
        k = k + (n >= (1 << e)).to(n.dtype)
    return k


# --- ROIPooling -----------------------------------------------------------------------------


def _roi_bins(rois: torch.Tensor, scale: float, pooled: tuple[int, int], hw: tuple[int, int]
              ) -> tuple[torch.Tensor, ...]:
    """Batch index (R,) and clipped bin edges hs, he (R, PH) and ws, we (R, PW), as Caffe."""
    x1, y1, x2, y2 = c_round(rois[:, 1:5] * rois.new_tensor(scale)).long().unbind(1)
    edges = []
    for lo, hi, p, size in ((y1, y2, pooled[0], hw[0]), (x1, x2, pooled[1], hw[1])):
        bin_size = (hi - lo + 1).clamp_min(1).to(rois.dtype) / p
        i = torch.arange(p, device=rois.device, dtype=rois.dtype)
        start = torch.floor(i * bin_size[:, None]).long() + lo[:, None]
        end = torch.ceil((i + 1) * bin_size[:, None]).long() + lo[:, None]
        edges += [start.clamp(0, size), end.clamp(0, size)]
    return (rois[:, 0].long(), *edges)


def _max_table(x: torch.Tensor, max_h: int, max_w: int) -> torch.Tensor:
    """Sparse table (LW, LH, N, H, W, C): entry [b, a, n, h, w] = max of x[n, :, h:h+2^a,
    w:w+2^b] for 2^a <= max_h, 2^b <= max_w (entries whose window overhangs the map are
    never read)."""
    h, w = x.shape[-2:]

    def doubling(t: torch.Tensor, dim: int, size: int) -> list[torch.Tensor]:
        levels = [t]
        step = 1
        limit = min(size, max_h if dim == 1 else max_w)
        while 2 * step <= limit:
            prev = levels[-1]
            nxt = prev.clone()
            nxt.narrow(dim, 0, size - step).copy_(torch.maximum(
                prev.narrow(dim, 0, size - step), prev.narrow(dim, step, size - step)))
            levels.append(nxt)
            step *= 2
        return levels

    cols = doubling(x.permute(0, 2, 3, 1).contiguous(), 2, w)
    return torch.stack([torch.stack(doubling(t, 1, h)) for t in cols])


@torch.fx.wrap
def roi_max_pool(x: torch.Tensor, rois: torch.Tensor, pooled_h: int, pooled_w: int,
                 scale: float) -> torch.Tensor:
    """Fast R-CNN ROIPooling forward (rois R x 5, any leading shape) -> (R, C, PH, PW)."""
    n, c, h, w = x.shape
    rois = rois.reshape(-1, 5)
    b, hs, he, ws, we = _roi_bins(rois, scale, (pooled_h, pooled_w), (h, w))
    empty = (he <= hs)[:, :, None] | (we <= ws)[:, None, :]  # (R, PH, PW)
    lh, lw = (he - hs).clamp_min(1), (we - ws).clamp_min(1)
    kh, kw = _floor_log2(lh, h), _floor_log2(lw, w)
    # Only the levels the longest bins need (a data-dependent size: this function is wrapped).
    longest = (int(lh.max()), int(lw.max())) if lh.numel() else (1, 1)
    table = _max_table(x, *longest)
    n_lh = table.shape[1]
    flat = table.reshape(-1, c)
    hs2, ws2 = (he - (1 << kh)).clamp_min(0), (we - (1 << kw)).clamp_min(0)
    level = (kw[:, None, :] * n_lh + kh[:, :, None]) * n + b[:, None, None]  # (R, PH, PW)
    out = None
    for hh in (hs, hs2):
        for ww in (ws, ws2):
            idx = (level * h + hh[:, :, None].clamp(max=h - 1)) * w \
                + ww[:, None, :].clamp(max=w - 1)
            v = flat.index_select(0, idx.reshape(-1))
            out = v if out is None else torch.maximum(out, v)
    out = out.reshape(*empty.shape, c).clamp_min(-FLT_MAX)
    out = out.masked_fill(empty[..., None], 0.0)
    return out.permute(0, 3, 1, 2).contiguous()


class CaffeROIPool(nn.Module):
    """Fast R-CNN's ROIPooling: max over rounded, floor/ceil bins; empty bins give 0."""

    def __init__(self, pooled_h: int, pooled_w: int, spatial_scale: float) -> None:
        super().__init__()
        self.pooled_h, self.pooled_w, self.spatial_scale = pooled_h, pooled_w, spatial_scale

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return roi_max_pool(x, rois, self.pooled_h, self.pooled_w, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"pooled=({self.pooled_h}, {self.pooled_w}), spatial_scale={self.spatial_scale}"


def _rois_count(shape: Shape) -> int:
    if len(shape) < 2 or math.prod(shape[1:]) != 5:
        raise ShapeRuleError(f"rois must be R x 5 (C x H x W == 5), got {tuple(shape)}")
    return shape[0]


def roi_pooling_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    if len(ins) != 2 or len(ins[0]) != 4:
        raise ShapeRuleError("ROIPooling needs a 4-D feature map and the rois")
    rp = p.roi_pooling_param
    if rp.pooled_h <= 0 or rp.pooled_w <= 0:
        raise ShapeRuleError("roi_pooling_param: pooled_h and pooled_w must be > 0")
    return LayerShapes(tops=((_rois_count(ins[1]), ins[0][1], rp.pooled_h, rp.pooled_w),))


@register("ROIPooling", shape=roi_pooling_shape,
          fork="rbgirshick/caffe-fast-rcnn")
def convert_roi_pooling(layer: Layer, net: Net) -> nn.Module:
    """ROIPooling (Fast R-CNN): rounded rois, floor/ceil bins, max; empty bins 0."""
    rp = layer.param.roi_pooling_param
    return CaffeROIPool(rp.pooled_h, rp.pooled_w, rp.spatial_scale)


# --- PSROIPooling ---------------------------------------------------------------------------


def _psroi_bins(rois: torch.Tensor, scale: float, g: int, hw: tuple[int, int]
                ) -> tuple[torch.Tensor, ...]:
    """R-FCN's bins: corners round(coord) * scale, end + 1, size max(end - start, 0.1)."""
    x1, y1, x2, y2 = c_round(rois[:, 1:5]).unbind(1)
    s = rois.new_tensor(scale)
    i = torch.arange(g, device=rois.device, dtype=rois.dtype)
    edges = []
    for lo, hi, size in ((y1, y2, hw[0]), (x1, x2, hw[1])):
        start, end = lo * s, (hi + 1) * s
        bin_size = (end - start).clamp_min(rois.new_tensor(0.1)) / g
        first = torch.floor(i * bin_size[:, None] + start[:, None]).long()
        last = torch.ceil((i + 1) * bin_size[:, None] + start[:, None]).long()
        edges += [first.clamp(0, size), last.clamp(0, size)]
    return (rois[:, 0].long(), *edges)


@torch.fx.wrap
def psroi_avg_pool(x: torch.Tensor, rois: torch.Tensor, output_dim: int, group: int,
                   scale: float) -> torch.Tensor:
    """R-FCN PSROIPooling forward -> (R, output_dim, G, G), bin means from a float64 integral
    image (Caffe sums in float32; the difference is rounding, ~1e-7 relative)."""
    n, c, h, w = x.shape
    rois = rois.reshape(-1, 5)
    b, hs, he, ws, we = _psroi_bins(rois, scale, group, (h, w))
    integral = torch.nn.functional.pad(x.double().cumsum(2).cumsum(3), (1, 0, 1, 0)).reshape(-1)
    chan = (torch.arange(output_dim, device=x.device)[:, None, None] * group
            + torch.arange(group, device=x.device)[:, None]) * group \
        + torch.arange(group, device=x.device)  # (D, G, G)
    plane = (b[:, None, None, None] * c + chan) * (h + 1)  # (R, D, G, G)

    def at(hh: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
        idx = (plane + hh[:, None, :, None]) * (w + 1) + ww[:, None, None, :]
        return integral.index_select(0, idx.reshape(-1)).reshape(idx.shape)

    total = at(he, we) - at(hs, we) - at(he, ws) + at(hs, ws)
    area = ((he - hs)[:, :, None] * (we - ws)[:, None, :])[:, None]  # (R, 1, G, G)
    out = torch.where(area > 0, total / area.clamp_min(1), torch.zeros_like(total))
    return out.to(x.dtype)


class CaffePSROIPool(nn.Module):
    """R-FCN's PSROIPooling: bin (i, j) of output channel k averages input channel
    (k * G + i) * G + j over the bin; empty bins give 0."""

    def __init__(self, output_dim: int, group_size: int, spatial_scale: float) -> None:
        super().__init__()
        self.output_dim, self.group_size = output_dim, group_size
        self.spatial_scale = spatial_scale

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return psroi_avg_pool(x, rois, self.output_dim, self.group_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return (f"output_dim={self.output_dim}, group_size={self.group_size}, "
                f"spatial_scale={self.spatial_scale}")


def _psroi_param(p: pb_message.Message) -> tuple[float, int, int]:
    pp = p.psroi_pooling_param
    missing = [f for f in ("spatial_scale", "output_dim", "group_size") if not pp.HasField(f)]
    if missing:
        raise ShapeRuleError(f"psroi_pooling_param needs {', '.join(missing)} (required fields)")
    if pp.output_dim <= 0 or pp.group_size <= 0:
        raise ShapeRuleError("psroi_pooling_param: output_dim and group_size must be > 0")
    return pp.spatial_scale, pp.output_dim, pp.group_size


def psroi_pooling_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    if len(ins) != 2 or len(ins[0]) != 4:
        raise ShapeRuleError("PSROIPooling needs a 4-D feature map and the rois")
    _, dim, g = _psroi_param(p)
    if ins[0][1] != dim * g * g:
        raise ShapeRuleError(f"input channels {ins[0][1]} != output_dim {dim} * group_size "
                             f"{g}^2 (R-FCN checks this)")
    return LayerShapes(tops=((_rois_count(ins[1]), dim, g, g),))


@register("PSROIPooling", shape=psroi_pooling_shape,
          fork="daijifeng001/caffe-rfcn")
def convert_psroi_pooling(layer: Layer, net: Net) -> nn.Module:
    """PSROIPooling (R-FCN): position-sensitive average pooling of rounded rois."""
    scale, dim, g = _psroi_param(layer.param)
    return CaffePSROIPool(dim, g, scale)


# --- RPN proposals --------------------------------------------------------------------------


def generate_anchors(base_size: float = 16, ratios: Sequence[float] = (0.5, 1, 2),
                     scales: Sequence[float] = (8, 16, 32)) -> np.ndarray:
    """py-faster-rcnn's anchors (A x 4, ratio-major): sizes with the +1 convention,
    ws = round-half-even(sqrt(base^2 / ratio)), hs = round-half-even(ws * ratio)."""
    half = (float(base_size) - 1) / 2
    rows = []
    for ratio in ratios:
        ws = np.round(np.sqrt(float(base_size) ** 2 / ratio))
        hs = np.round(ws * ratio)
        for s in scales:
            dw, dh = (ws * s - 1) / 2, (hs * s - 1) / 2
            rows.append([half - dw, half - dh, half + dw, half + dh])
    return np.array(rows, np.float64)


def _sort_desc(scores: torch.Tensor, highest_index_first: bool) -> torch.Tensor:
    """Indices sorting each row by score, descending; ties by index in the given direction."""
    if not highest_index_first:
        return torch.sort(scores, dim=1, descending=True, stable=True).indices
    n = scores.shape[1]
    return (n - 1) - torch.sort(scores.flip(1), dim=1, descending=True, stable=True).indices


def _valid_first(order: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``order`` with the valid entries moved to the front, each group keeping its order."""
    v = valid.gather(1, order).to(torch.uint8)
    return order.gather(1, torch.sort(v, dim=1, descending=True, stable=True).indices)


def _decode(anchors: torch.Tensor, deltas: torch.Tensor, im_info: torch.Tensor
            ) -> torch.Tensor:
    """bbox_transform_inv (+1 widths) and clip_boxes to (im_w - 1, im_h - 1), float32."""
    widths = anchors[..., 2] - anchors[..., 0] + 1
    heights = anchors[..., 3] - anchors[..., 1] + 1
    cx, cy = anchors[..., 0] + 0.5 * widths, anchors[..., 1] + 0.5 * heights
    pcx, pcy = deltas[..., 0] * widths + cx, deltas[..., 1] * heights + cy
    pw, ph = torch.exp(deltas[..., 2]) * widths, torch.exp(deltas[..., 3]) * heights
    boxes = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], -1)
    lim = torch.stack([im_info[:, 1], im_info[:, 0], im_info[:, 1], im_info[:, 0]], -1) - 1
    return torch.maximum(torch.minimum(boxes, lim[:, None, :]), torch.zeros_like(boxes))


def _greedy_nms(boxes: torch.Tensor, alive: torch.Tensor, thresh: float, steps: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """py_cpu_nms over rows already in processing order: ``steps`` rounds, each keeping the
    first alive box and killing those with IoU > thresh (areas with +1). Returns the kept
    positions (B, steps) and whether each is real (B, steps)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    pos = torch.arange(boxes.shape[1], device=boxes.device)
    t = boxes.new_tensor(thresh)
    kept, real = [], []
    for _ in range(steps):
        i = alive.to(torch.uint8).argmax(dim=1, keepdim=True)  # first alive (argmax: first max)
        real.append(alive.gather(1, i))
        kept.append(i)
        ww = (torch.minimum(x2.gather(1, i), x2) - torch.maximum(x1.gather(1, i), x1) + 1)
        hh = (torch.minimum(y2.gather(1, i), y2) - torch.maximum(y1.gather(1, i), y1) + 1)
        inter = ww.clamp_min(0) * hh.clamp_min(0)
        ovr = inter / (areas.gather(1, i) + areas - inter)
        alive = alive & (ovr <= t) & (pos != i)
    return torch.cat(kept, 1), torch.cat(real, 1)


@torch.fx.wrap
def rpn_proposals(scores: torch.Tensor, deltas: torch.Tensor, im_info: torch.Tensor,
                  anchors: torch.Tensor, feat_stride: float, pre_nms: int, post_nms: int,
                  nms_thresh: float, min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """py-faster-rcnn's ProposalLayer.forward for each image -> rois (R, 5), scores (R, 1)."""
    bsz, _, h, w = scores.shape
    a = anchors.shape[0]
    dt = deltas.dtype
    fg = scores[:, a:].permute(0, 2, 3, 1).reshape(bsz, -1)            # rows (h, w, a)
    d = deltas.permute(0, 2, 3, 1).reshape(bsz, -1, 4)
    sy, sx = torch.meshgrid(torch.arange(h, device=scores.device) * feat_stride,
                            torch.arange(w, device=scores.device) * feat_stride, indexing="ij")
    shifts = torch.stack([sx, sy, sx, sy], -1).reshape(-1, 1, 4).to(dt)
    anc = (anchors.to(dt)[None] + shifts).reshape(1, -1, 4)
    info = im_info.reshape(bsz, -1).to(dt)
    boxes = _decode(anc, d, info)
    ms = (min_size * info[:, 2])[:, None]
    valid = (boxes[..., 2] - boxes[..., 0] + 1 >= ms) & (boxes[..., 3] - boxes[..., 1] + 1 >= ms)
    # argsort()[::-1] of the filtered scores: ties highest index first; keep pre_nms.
    n_pre = fg.shape[1] if pre_nms <= 0 else min(pre_nms, fg.shape[1])
    order = _valid_first(_sort_desc(fg, True), valid)[:, :n_pre]
    # NMS re-sorts the sorted list with argsort()[::-1]: ties now lowest original index first.
    s1, v1 = fg.gather(1, order), valid.gather(1, order)
    order = order.gather(1, _valid_first(_sort_desc(s1, True), v1))
    sel_boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    steps = n_pre if post_nms <= 0 else min(post_nms, n_pre)
    kept, real = _greedy_nms(sel_boxes, valid.gather(1, order), nms_thresh, steps)
    out_boxes = sel_boxes.gather(1, kept[..., None].expand(-1, -1, 4))
    out_scores = fg.gather(1, order.gather(1, kept))
    batch = torch.arange(bsz, device=scores.device, dtype=dt)[:, None, None].expand(-1, steps, 1)
    rois = torch.cat([batch, out_boxes], -1)[real]
    return rois, out_scores[real][:, None]


class RPNProposal(nn.Module):
    """py-faster-rcnn's RPN proposal layer: bottoms (cls_prob, bbox_pred, im_info); tops rois
    (R x 5: batch index, x1, y1, x2, y2) and optionally scores (R x 1), R data-dependent."""

    def __init__(self, anchors: torch.Tensor, feat_stride: float, pre_nms: int, post_nms: int,
                 nms_thresh: float, min_size: float, n_tops: int) -> None:
        super().__init__()
        self.register_buffer("anchors", anchors.to(torch.float32))
        self.feat_stride, self.pre_nms, self.post_nms = feat_stride, pre_nms, post_nms
        self.nms_thresh, self.min_size, self.n_tops = nms_thresh, min_size, n_tops

    def forward(self, scores: torch.Tensor, deltas: torch.Tensor, im_info: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        rois, sc = rpn_proposals(scores, deltas, im_info, self.anchors, self.feat_stride,
                                 self.pre_nms, self.post_nms, self.nms_thresh, self.min_size)
        return (rois, sc) if self.n_tops == 2 else rois

    def extra_repr(self) -> str:
        return (f"anchors={tuple(self.anchors.shape)}, feat_stride={self.feat_stride}, "
                f"pre_nms={self.pre_nms}, post_nms={self.post_nms}, nms={self.nms_thresh}, "
                f"min_size={self.min_size}")


# py-faster-rcnn lib/fast_rcnn/config.py, the TEST configuration the deployed layer runs with.
TEST_PRE_NMS, TEST_POST_NMS, TEST_NMS_THRESH, TEST_MIN_SIZE = 6000, 300, 0.7, 16


def _python_proposal_cfg(p: pb_message.Message) -> dict[str, object]:
    cfg = yaml_dict(p.python_param.param_str)
    if "feat_stride" not in cfg:
        raise PrototxtError("the proposal layer's param_str needs 'feat_stride'")
    anchors = generate_anchors(scales=tuple(cfg.get("scales", (8, 16, 32))))
    return {"anchors": torch.from_numpy(anchors),
            "feat_stride": float(cfg["feat_stride"]), "pre_nms": TEST_PRE_NMS,
            "post_nms": TEST_POST_NMS, "nms_thresh": TEST_NMS_THRESH, "min_size": TEST_MIN_SIZE}


def _opencv_proposal_cfg(p: pb_message.Message) -> dict[str, object]:
    pp = p.proposal_param
    anchors = generate_anchors(pp.base_size, tuple(pp.ratio) or (0.5, 1, 2),
                               tuple(pp.scale) or (8, 16, 32))
    return {"anchors": torch.from_numpy(anchors), "feat_stride": float(pp.feat_stride),
            "pre_nms": pp.pre_nms_topn, "post_nms": pp.post_nms_topn,
            "nms_thresh": pp.nms_thresh, "min_size": pp.min_size}


def _proposal_shapes(cfg: dict[str, object], p: pb_message.Message, ins: Sequence[Shape]
                     ) -> LayerShapes:
    if len(ins) != 3 or len(ins[0]) != 4 or len(ins[1]) != 4:
        raise ShapeRuleError("the proposal layer needs bottoms (cls_prob, bbox_pred, im_info)")
    a = len(cfg["anchors"])
    if ins[0][1] != 2 * a or ins[1][1] != 4 * a or ins[0][2:] != ins[1][2:]:
        raise ShapeRuleError(f"{a} anchors need 2A = {2 * a} score and 4A = {4 * a} delta "
                             f"channels on the same map, got {ins[0]} and {ins[1]}")
    if len(p.top) not in (1, 2):
        raise ShapeRuleError("the proposal layer has tops rois and optionally scores")
    pre = ins[0][2] * ins[0][3] * a
    pre = pre if cfg["pre_nms"] <= 0 else min(pre, cfg["pre_nms"])
    rows = ins[0][0] * (pre if cfg["post_nms"] <= 0 else min(pre, cfg["post_nms"]))
    return LayerShapes(tops=((rows, 5), (rows, 1))[:len(p.top)])


def python_proposal_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """At most post_nms_topn rows per image (the count is data-dependent, as in Caffe)."""
    return _proposal_shapes(_python_proposal_cfg(p), p, ins)


def proposal_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    return _proposal_shapes(_opencv_proposal_cfg(p), p, ins)


@register("Python:rpn.proposal_layer.ProposalLayer", shape=python_proposal_shape,
          fork="rbgirshick/py-faster-rcnn")
def convert_python_proposal_layer(layer: Layer, net: Net) -> nn.Module:
    """py-faster-rcnn's RPN proposal layer (TEST config: 6000 / 300 / NMS 0.7 / min 16)."""
    return RPNProposal(**_python_proposal_cfg(layer.param), n_tops=len(layer.tops))


@register("Proposal", shape=proposal_shape, fork="opencv/opencv")
def convert_proposal(layer: Layer, net: Net) -> nn.Module:
    """Proposal (OpenCV's type): py-faster-rcnn's RPN proposals from proposal_param."""
    return RPNProposal(**_opencv_proposal_cfg(layer.param), n_tops=len(layer.tops))


for _training_only in ("rpn.anchor_target_layer.AnchorTargetLayer",
                       "rpn.proposal_target_layer.ProposalTargetLayer"):
    refuse(f"Python:{_training_only}",
           f"py-faster-rcnn's {_training_only} is a training layer: it samples anchors or rois "
           f"against the ground-truth boxes for the losses; convert the test definition "
           f"(test.prototxt), whose proposal layer converts")
