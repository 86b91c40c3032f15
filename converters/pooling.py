"""Pooling: MAX and AVE with Caffe's output size, clip rule and AVE divisor.

``shapes.pool_geometry`` gives Caffe's output size. A native ``nn.MaxPool2d``/``nn.AvgPool2d``
is used when one of its rounding modes yields that size with the same window starts and its
padding limit (``pad <= k/2``) holds: PyTorch's ``count_include_pad=True`` divisor,
``(min(start + k, H + p) - start)`` per axis, is Caffe's. Otherwise the input is padded
explicitly (``-FLT_MAX`` for MAX, as Caffe's running maximum starts there; zeros for AVE, with
Caffe's divisor stored as a buffer) and pooled without implicit padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from caffe_bridge import schema, shapes
from caffe_bridge.converters.registry import register
from caffe_bridge.errors import ShapeError, UnsupportedLayerError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.numeric import FLT_MAX, f32_tensor

MAX, AVE, STOCHASTIC = (schema.PoolingParameter.MAX, schema.PoolingParameter.AVE,
                        schema.PoolingParameter.STOCHASTIC)


def torch_pooled_size(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's pooled size (``pooling_output_shape``): its ceil clip applies even with p == 0."""
    span = size + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def native_ceil_mode(geo: shapes.PoolGeometry, hw: tuple[int, int]) -> bool | None:
    """The ``ceil_mode`` flag with which torch pooling reproduces Caffe's windows, or None."""
    if any(2 * p > k for p, k in zip(geo.pad, geo.kernel, strict=True)):
        return None  # PyTorch rejects pad > kernel / 2
    for ceil in (geo.ceil, not geo.ceil):
        got = tuple(torch_pooled_size(n, k, s, p, ceil) for n, k, s, p in
                    zip(hw, geo.kernel, geo.stride, geo.pad, strict=True))
        if got == geo.out:
            return ceil
    return None


def pad_amounts(sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                pad: Sequence[int], out: Sequence[int]) -> tuple[int, ...]:
    """F.pad amounts (last axis first: before, after, ...) after which unpadded pooling gives
    exactly the ``out`` windows; a negative amount crops input no window reaches."""
    amounts = [(p, (o - 1) * s + k - n - p)
               for n, k, s, p, o in zip(sizes, kernel, stride, pad, out, strict=True)]
    return tuple(v for pair in reversed(amounts) for v in pair)


def explicit_pads(geo: shapes.PoolGeometry, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) after which unpadded floor pooling gives
    exactly Caffe's windows; a negative amount crops input no window reaches."""
    left, right, top, bottom = pad_amounts(hw, geo.kernel, geo.stride, geo.pad, geo.out)
    return left, right, top, bottom


def window_sizes(n: int, k: int, s: int, p: int, o: int) -> np.ndarray:
    """Caffe's AVE divisor along one axis of size ``n``: the ``o`` windows' extents, padding
    counted, overhang past ``n + p`` not."""
    start = np.arange(o) * s - p
    return np.minimum(start + k, n + p) - start


def ave_divisor(geo: shapes.PoolGeometry, hw: tuple[int, int]) -> np.ndarray:
    """Caffe's AVE pool_size per output: padding counts, overhang past ``H + p`` does not."""
    sizes = [window_sizes(*a) for a in zip(hw, geo.kernel, geo.stride, geo.pad, geo.out,
                                            strict=True)]
    return np.outer(sizes[0], sizes[1]).astype(np.float64)


class PaddedMaxPool2d(nn.Module):
    """MAX pooling over an explicitly padded input (pad values never win over image values).

    ``extra`` (right, bottom): trailing windows that see padding only (a stride far larger
    than the image), appended as the pad value instead of padding the input that far.
    """

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int],
                 pads: tuple[int, int, int, int], extra: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        self.kernel, self.stride, self.pads, self.extra = kernel, stride, pads, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pads, value=-FLT_MAX)
        y = F.max_pool2d(x, self.kernel, self.stride)
        if self.extra != (0, 0):
            y = F.pad(y, (0, self.extra[0], 0, self.extra[1]), value=-FLT_MAX)
        return y


class PaddedAvgPool2d(nn.Module):
    """AVE pooling over a zero-padded input, rescaled to Caffe's divisor (buffer ``scale``).

    ``extra`` as for :class:`PaddedMaxPool2d` (those windows average zeros).
    """

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int],
                 pads: tuple[int, int, int, int], scale: torch.Tensor,
                 extra: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        self.kernel, self.stride, self.pads, self.extra = kernel, stride, pads, extra
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pads)
        y = F.avg_pool2d(x, self.kernel, self.stride)
        if self.extra != (0, 0):
            y = F.pad(y, (0, self.extra[0], 0, self.extra[1]))
        return y * self.scale


class MaxPoolMask2d(nn.Module):
    """MAX pooling that also returns Caffe's mask top: the flat index ``h * W + w`` of each
    window's first strict maximum (row-major scan, as Caffe's and PyTorch's CPU loops), as
    floats. ``pads``/``extra`` as for :class:`PaddedMaxPool2d`; indices into the explicitly
    padded input are mapped back to the input (-1 for appended all-padding windows).
    Caffe never picks padding; here a padding value could win only if every image value in
    its window were <= -FLT_MAX.
    """

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int],
                 ceil: bool, width: int, pads: tuple[int, int, int, int] = (0, 0, 0, 0),
                 extra: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        self.kernel, self.stride, self.pad, self.ceil = kernel, stride, pad, ceil
        self.width, self.pads, self.extra = width, pads, extra

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pads != (0, 0, 0, 0):
            x = F.pad(x, self.pads, value=-FLT_MAX)
        y, idx = F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil,
                              return_indices=True)
        if self.pads != (0, 0, 0, 0):
            wp = self.width + self.pads[0] + self.pads[1]
            idx = (torch.div(idx, wp, rounding_mode="floor") - self.pads[2]) * self.width \
                + torch.remainder(idx, wp) - self.pads[0]
        mask = idx.to(y.dtype)
        if self.extra != (0, 0):
            y = F.pad(y, (0, self.extra[0], 0, self.extra[1]), value=-FLT_MAX)
            mask = F.pad(mask, (0, self.extra[0], 0, self.extra[1]), value=-1.0)
        return y, mask


@register("Pooling", shape=shapes.pooling_shapes, per_sample=True)
def convert_pooling(layer: Layer, net: Net) -> nn.Module:
    """Pooling MAX/AVE (global, CEIL/FLOOR, pad up to kernel-1, stride default 1, MAX mask top)."""
    pp = layer.param.pooling_param
    x = net.blobs[layer.bottoms[0]].shape
    if len(x) != 4:
        raise ShapeError(f"Pooling needs a 4-D bottom, got {x}")
    if pp.pool == STOCHASTIC:
        raise UnsupportedLayerError("STOCHASTIC pooling samples at random in training and has "
                                    "no CPU test-phase path in Caffe; it is not converted")
    if pp.pool not in (MAX, AVE):
        raise UnsupportedLayerError(f"unknown pooling method {pp.pool}")
    hw = (x[2], x[3])
    geo = shapes.pool_geometry(pp, hw)
    with_mask = len(layer.tops) == 2
    if with_mask and pp.pool != MAX:
        raise UnsupportedLayerError("only MAX pooling has a mask top")
    if geo.global_pooling and with_mask:
        return MaxPoolMask2d(geo.kernel, (1, 1), (0, 0), False, hw[1])
    if geo.global_pooling:
        return nn.AdaptiveMaxPool2d(1) if pp.pool == MAX else nn.AdaptiveAvgPool2d(1)
    ceil = native_ceil_mode(geo, hw)
    if ceil is not None:
        if with_mask:
            return MaxPoolMask2d(geo.kernel, geo.stride, geo.pad, ceil, hw[1])
        if pp.pool == MAX:
            return nn.MaxPool2d(geo.kernel, geo.stride, geo.pad, ceil_mode=ceil)
        return nn.AvgPool2d(geo.kernel, geo.stride, geo.pad, ceil_mode=ceil,
                            count_include_pad=True)
    pads = explicit_pads(geo, hw)
    # Windows starting at or past the bottom/right padding see padding only (a stride larger
    # than the image): pool up to the last window that reaches the image, append the rest.
    reach = tuple(min(o, (n + p - 1) // s + 1) for n, p, s, o in
                  zip(hw, geo.pad, geo.stride, geo.out, strict=True))
    extra = (geo.out[1] - reach[1], geo.out[0] - reach[0])
    if extra != (0, 0):
        pads = (pads[0], pads[1] - extra[0] * geo.stride[1], pads[2],
                pads[3] - extra[1] * geo.stride[0])
    padded = (hw[0] + pads[2] + pads[3], hw[1] + pads[0] + pads[1])
    got = tuple((n - k) // s + 1 + e for n, k, s, e in
                zip(padded, geo.kernel, geo.stride, extra[::-1], strict=True))
    if got != geo.out:  # by construction never; a wrong size must not pass silently
        raise ShapeError(f"explicit padding {pads} gives {got}, Caffe {geo.out}")
    if with_mask:
        return MaxPoolMask2d(geo.kernel, geo.stride, (0, 0), False, hw[1], pads, extra)
    if pp.pool == MAX:
        return PaddedMaxPool2d(geo.kernel, geo.stride, pads, extra)
    with np.errstate(divide="ignore"):  # an empty window: 0/0 is NaN in Caffe too
        scale = (geo.kernel[0] * geo.kernel[1]) / ave_divisor(geo, hw)
    return PaddedAvgPool2d(geo.kernel, geo.stride, pads,
                           f32_tensor(scale), extra)
