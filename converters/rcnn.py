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
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.fx
from torch import nn

from caffe_bridge.converters.registry import register
from caffe_bridge.errors import PrototxtError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.shapes import LayerShapes, Shape, ShapeRuleError, shape_rule

FLT_MAX = float(np.finfo(np.float32).max)


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


def _max_table(x: torch.Tensor) -> torch.Tensor:
    """Sparse table (LW, LH, N, H, W, C): entry [b, a, n, h, w] = max of x[n, :, h:h+2^a,
    w:w+2^b] (entries whose window overhangs the map are never read)."""
    h, w = x.shape[-2:]

    def doubling(t: torch.Tensor, dim: int, size: int) -> list[torch.Tensor]:
        levels = [t]
        step = 1
        while 2 * step <= size:
            prev = levels[-1]
            nxt = prev.clone()
            nxt.narrow(dim, 0, size - step).copy_(torch.maximum(
                prev.narrow(dim, 0, size - step), prev.narrow(dim, step, size - step)))
            levels.append(nxt)
            step *= 2
        return levels

    cols = doubling(x.permute(0, 2, 3, 1), 2, w)
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
    table = _max_table(x)
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
    if len(shape) < 2 or int(np.prod(shape[1:])) != 5:
        raise ShapeRuleError(f"rois must be R x 5 (C x H x W == 5), got {tuple(shape)}")
    return shape[0]


@shape_rule("ROIPooling")
def roi_pooling_shape(p: object, ins: Sequence[Shape]) -> LayerShapes:
    if len(ins) != 2 or len(ins[0]) != 4:
        raise ShapeRuleError("ROIPooling needs a 4-D feature map and the rois")
    rp = p.roi_pooling_param
    if rp.pooled_h <= 0 or rp.pooled_w <= 0:
        raise ShapeRuleError("roi_pooling_param: pooled_h and pooled_w must be > 0")
    return LayerShapes(tops=((_rois_count(ins[1]), ins[0][1], rp.pooled_h, rp.pooled_w),))


@register("ROIPooling")
def convert_roi_pooling(layer: Layer, net: Net) -> nn.Module:
    """ROIPooling (Fast R-CNN): rounded rois, floor/ceil bins, max; empty bins 0."""
    rp = layer.param.roi_pooling_param
    return CaffeROIPool(rp.pooled_h, rp.pooled_w, rp.spatial_scale)
