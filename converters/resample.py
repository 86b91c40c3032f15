"""Resampling layers of the segmentation forks: ``Interp`` and both meanings of ``Upsample``.

``Interp`` (DeepLab v2 / hszhao/PSPNet interp_layer.cpp): crop by the non-positive pads, then
bilinear with corner alignment, which is ``F.interpolate(align_corners=True)``; the output size
follows the fork's formulas (zoom: ``H + (H - 1)(z - 1)``, not ``H * z``).
``Upsample`` with two bottoms (alexgkendall/caffe-segnet, TimoSaemann/caffe-enet) scatters its
first bottom to the flat indices of a pooling mask; with one bottom (YOLO ports) it repeats
each pixel ``scale`` times (nearest).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from google.protobuf import message as pb_message
from torch import nn

from caffe_bridge.converters.registry import register
from caffe_bridge.errors import UnsupportedLayerError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.shapes import LayerShapes, Shape, ShapeRuleError


def interp_geometry(p: pb_message.Message, h: int, w: int) -> tuple[int, int, int, int, int]:
    """(crop start, effective h, w, output h, w) as InterpLayer::Reshape computes them."""
    ip = p.interp_param
    beg, end = ip.pad_beg, ip.pad_end
    if beg > 0 or end > 0:
        raise ShapeRuleError("Interp supports only non-positive pad_beg/pad_end (cropping)")
    he, we = h + beg + end, w + beg + end
    shrink, zoom = ip.HasField("shrink_factor"), ip.HasField("zoom_factor")
    if (shrink and ip.shrink_factor < 1) or (zoom and ip.zoom_factor < 1):
        raise ShapeRuleError("Interp shrink_factor and zoom_factor must be >= 1")
    if shrink:
        oh, ow = (he - 1) // ip.shrink_factor + 1, (we - 1) // ip.shrink_factor + 1
    if zoom:
        base = (oh, ow) if shrink else (he, we)
        oh, ow = (n + (n - 1) * (ip.zoom_factor - 1) for n in base)
    if not (shrink or zoom):
        if not (ip.HasField("height") and ip.HasField("width")):
            raise ShapeRuleError("Interp needs zoom_factor, shrink_factor or height and width")
        oh, ow = ip.height, ip.width
    if min(he, we, oh, ow) <= 0:
        raise ShapeRuleError(f"Interp sizes must be positive: input {(he, we)} after the "
                             f"pads, output {(oh, ow)}")
    return -beg, he, we, oh, ow


def interp_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    if len(ins) != 1 or len(ins[0]) != 4:
        raise ShapeRuleError(f"Interp takes one 4-D bottom, got {list(ins)}")
    n, c, h, w = ins[0]
    *_, oh, ow = interp_geometry(p, h, w)
    return LayerShapes(tops=((n, c, oh, ow),))


class CaffeInterp(nn.Module):
    """Crop ``[start:start + size]`` on both spatial axes, then align-corners bilinear."""

    def __init__(self, start: int, size: tuple[int, int], out: tuple[int, int]) -> None:
        super().__init__()
        self.start, self.size, self.out = start, size, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, (h, w) = self.start, self.size
        x = x[:, :, s:s + h, s:s + w]
        return F.interpolate(x, size=self.out, mode="bilinear", align_corners=True)


@register("Interp", shape=interp_shape, fork="DeepLab v2 / hszhao/PSPNet", per_sample=True)
def convert_interp(layer: Layer, net: Net) -> nn.Module:
    """Interp (DeepLab/PSPNet): crop by pads, bilinear with corner alignment."""
    _, _, h, w = net.blobs[layer.bottoms[0]].shape
    start, he, we, oh, ow = interp_geometry(layer.param, h, w)
    return CaffeInterp(start, (he, we), (oh, ow))


def unpool_size(up: pb_message.Message, h: int, w: int) -> tuple[int, int]:
    """SegNet/ENet Upsample output size (UpsampleLayer::LayerSetUp / Reshape)."""
    if up.HasField("upsample_h") and up.HasField("upsample_w"):
        if up.upsample_h <= 1 or up.upsample_w <= 1:
            raise ShapeRuleError("upsample_h and upsample_w must be > 1")
        return up.upsample_h, up.upsample_w
    if up.HasField("scale_h") and up.HasField("scale_w") and not up.HasField("scale"):
        sh, sw = up.scale_h, up.scale_w
    elif not up.HasField("scale_h") and not up.HasField("scale_w"):
        sh = sw = up.scale if up.HasField("scale") else 2  # the fork's default
    else:
        raise ShapeRuleError("Upsample needs upsample_h and upsample_w, or scale, or scale_h "
                             "and scale_w (not with scale)")
    if sh <= 1 or sw <= 1:
        raise ShapeRuleError(f"Upsample scales must be > 1, got {(sh, sw)}")
    if (up.pad_out_h and sh != 2) or (up.pad_out_w and sw != 2):
        raise ShapeRuleError("pad_out_h / pad_out_w need scale 2")
    return h * sh - int(up.pad_out_h), w * sw - int(up.pad_out_w)


def nearest_scale(up: pb_message.Message) -> int:
    """The YOLO ports' ``scale`` (default 1 there); unpooling-only fields are refused."""
    extra = [f for f in ("scale_h", "scale_w", "pad_out_h", "pad_out_w", "upsample_h",
                         "upsample_w") if up.HasField(f)]
    if extra:
        raise ShapeRuleError(f"one-bottom (nearest) Upsample has no {extra}; the unpooling "
                             "Upsample needs the pooling mask as its second bottom")
    scale = up.scale if up.HasField("scale") else 1
    if scale < 1:
        raise ShapeRuleError(f"Upsample scale must be >= 1, got {scale}")
    return scale


def upsample_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    up = p.upsample_param
    if len(ins) == 1:
        x = ins[0]
        if len(x) < 2:
            raise ShapeRuleError(f"Upsample needs a bottom of 2+ axes, got {x}")
        s = nearest_scale(up)
        return LayerShapes(tops=((*x[:-2], x[-2] * s, x[-1] * s),))
    if len(ins) != 2:
        raise ShapeRuleError(f"Upsample takes 1 bottom (nearest) or 2 (data, mask), got {len(ins)}")
    x, mask = ins
    if len(x) != 4 or mask != x:
        raise ShapeRuleError(f"unpooling Upsample needs a 4-D bottom and a mask of the same "
                             f"shape, got {x} and {mask}")
    return LayerShapes(tops=((*x[:2], *unpool_size(up, x[2], x[3])),))


class MaskUnpool2d(nn.Module):
    """``top[mask[i]] = bottom[i]`` per channel, in order i = 0, 1, ...: where two inputs share
    an index the later one wins (as in Caffe's loop; ``max_unpool2d`` leaves that undefined).
    The mask is float and truncated to an integer, as Caffe's ``static_cast<int>``."""

    def __init__(self, out: tuple[int, int]) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        idx = mask.flatten(2).to(torch.int64)
        order = torch.ones_like(idx).cumsum(2) - 1
        winner = torch.full_like(idx[:, :, :1], -1).expand(
            -1, -1, self.out[0] * self.out[1]).contiguous()
        winner = winner.scatter_reduce(2, idx, order, reduce="amax")
        vals = x.flatten(2).gather(2, winner.clamp(min=0))
        y = torch.where(winner >= 0, vals, torch.zeros_like(vals))
        return y.unflatten(2, self.out)


@register("Upsample", shape=upsample_shape,
          fork="alexgkendall/caffe-segnet, TimoSaemann/caffe-enet (mask); "
               "eric612/MobileNet-YOLO (nearest)", per_sample=True)
def convert_upsample(layer: Layer, net: Net) -> nn.Module:
    """Upsample: max-unpooling by a mask bottom (SegNet/ENet) or nearest by scale (YOLO ports)."""
    x = net.blobs[layer.bottoms[0]].shape
    top = upsample_shape(layer.param, [net.blobs[b].shape for b in layer.bottoms]).tops[0]
    if len(layer.bottoms) == 2:
        return MaskUnpool2d((top[2], top[3]))
    s = top[-1] // x[-1]
    if len(x) != 4:
        raise UnsupportedLayerError(f"nearest Upsample is converted for 4-D bottoms, got {x}")
    return nn.Identity() if s == 1 else nn.Upsample(scale_factor=s, mode="nearest")
