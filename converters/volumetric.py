"""The C3D fork's volumetric layers (facebook/C3D, C3D-v1.1): ``Convolution3D`` and
``Pooling3D`` on (N, C, L, H, W) blobs, with their own parameter messages.

* Convolution3D (src/caffe/layers/convolution3d_layer.cpp, ``convolution3d_param``): one
  ``kernel_size``/``stride``/``pad`` for height and width, ``kernel_depth``/
  ``temporal_stride``/``temporal_pad`` for time; output floor((in + 2p - k) / s) + 1; weight
  (O, C, kd, k, k), bias stored as (1, 1, 1, 1, O); no groups (``filter_group`` only splits
  the GEMM, ``group`` is never read).
* Pooling3D (src/caffe/layers/pool3d_layer.cpp, ``pooling3d_param``): output
  ceil((in + 2p - k) / s) + 1 with NO clip of a last window starting in the padding (unlike
  BVLC's Pooling); time is never padded; pad is allowed for AVE only, whose divisor counts
  the padding up to H + pad and, in time, only frames inside the blob.

BVLC's own Convolution is already N-D (converters/conv.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from google.protobuf import message as pb_message
from torch import nn

from caffe_bridge import shapes
from caffe_bridge.converters import conv
from caffe_bridge.converters.pooling import AVE, MAX, pad_amounts, window_sizes
from caffe_bridge.converters.registry import register
from caffe_bridge.ir import Layer, Net
from caffe_bridge.numeric import FLT_MAX, f32_tensor
from caffe_bridge.shapes import LayerShapes, Shape, ShapeRuleError


def _five_d(ins: Sequence[Shape], what: str) -> Shape:
    if len(ins) != 1 or len(ins[0]) != 5:
        raise ShapeRuleError(f"{what} takes one 5-D (N, C, L, H, W) bottom, got {list(ins)}")
    return ins[0]


# ---------------------------------------------------------------- Convolution3D


def conv3d_geometry(cp: pb_message.Message) -> shapes.ConvGeometry:
    """(time, height, width) kernel, stride and pad of a convolution3d_param."""
    if not cp.HasField("kernel_size") or not cp.HasField("kernel_depth"):
        raise ShapeRuleError("convolution3d_param needs kernel_size and kernel_depth")
    kernel = (cp.kernel_depth, cp.kernel_size, cp.kernel_size)
    stride = (cp.temporal_stride, cp.stride, cp.stride)
    if min(kernel) <= 0 or min(stride) <= 0:
        raise ShapeRuleError(f"kernel {kernel} and stride {stride} must be > 0")
    return shapes.ConvGeometry(kernel, stride, (cp.temporal_pad, cp.pad, cp.pad), (1, 1, 1))


def convolution3d_shape(param: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    x = _five_d(ins, "Convolution3D")
    cp = param.convolution3d_param
    if cp.num_output <= 0:
        raise ShapeRuleError("num_output must be > 0")
    if cp.filter_group <= 0 or cp.num_output % cp.filter_group:
        raise ShapeRuleError(f"filter_group {cp.filter_group} must divide num_output")
    geo = conv3d_geometry(cp)
    out = shapes.conv_out_sizes(x[2:], geo)
    params: list[Shape] = [(cp.num_output, x[1], *geo.kernel)]
    if cp.bias_term:
        params.append((1, 1, 1, 1, cp.num_output))
    return LayerShapes(((x[0], cp.num_output, *out),), tuple(params))


@register("Convolution3D", shape=convolution3d_shape, fork="facebook/C3D (C3D-v1.1)")
def convert_convolution3d(layer: Layer, net: Net) -> nn.Module:
    """Convolution3D (facebook/C3D): nn.Conv3d with separate temporal kernel/stride/pad."""
    cp = layer.param.convolution3d_param
    c = net.blobs[layer.bottoms[0]].shape[1]
    geo = conv3d_geometry(cp)
    return conv.loaded_module(layer, nn.Conv3d, c, cp.num_output, geo.kernel,
                              stride=geo.stride, padding=geo.pad, bias=cp.bias_term)


# ---------------------------------------------------------------- Pooling3D


def pool3d_size(n: int, k: int, s: int, p: int) -> int:
    """C3D's pooled extent: float ceil((n + 2p - k) / s) + 1, no clip rule."""
    return int(math.ceil(np.float32(n + 2 * p - k) / np.float32(s))) + 1


def pool3d_geometry(pp: pb_message.Message, x: Shape) -> tuple[Shape, Shape, Shape, Shape]:
    """(kernel, stride, pad, out) over (L, H, W)."""
    if not pp.HasField("kernel_size") or not pp.HasField("kernel_depth"):
        raise ShapeRuleError("pooling3d_param needs kernel_size and kernel_depth")
    kernel = (pp.kernel_depth, pp.kernel_size, pp.kernel_size)
    stride = (pp.temporal_stride, pp.stride, pp.stride)
    pad = (0, pp.pad, pp.pad)
    if min(kernel) <= 0 or min(stride) <= 0:
        raise ShapeRuleError(f"kernel {kernel} and stride {stride} must be > 0")
    if pp.pad and pp.pool != AVE:
        raise ShapeRuleError("C3D's Pooling3D pads average pooling only")
    if pp.pool not in (MAX, AVE):
        raise ShapeRuleError("Pooling3D pools MAX or AVE (STOCHASTIC is not implemented in C3D)")
    out = tuple(pool3d_size(n, k, s, p) for n, k, s, p in
                zip(x[2:], kernel, stride, pad, strict=True))
    if min(out) <= 0:
        raise ShapeRuleError(f"pooled size {out} is empty")
    return kernel, stride, pad, out


def pooling3d_shape(param: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    x = _five_d(ins, "Pooling3D")
    *_, out = pool3d_geometry(param.pooling3d_param, x)
    return LayerShapes(((x[0], x[1], *out),))


class PaddedPool3dCaffe(nn.Module):
    """Pool an explicitly padded (N, C, L, H, W) input without implicit padding; AVE results
    are rescaled from kernel volume to Caffe's divisor (buffer ``scale``)."""

    def __init__(self, kernel: Shape, stride: Shape, pads: tuple[int, ...], value: float,
                 scale: torch.Tensor | None) -> None:
        super().__init__()
        self.kernel, self.stride, self.pads, self.value = kernel, stride, pads, value
        self.average = scale is not None
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pads, value=self.value)
        if self.average:
            return F.avg_pool3d(x, self.kernel, self.stride) * self.scale
        return F.max_pool3d(x, self.kernel, self.stride)


def _divisor(x: Shape, kernel: Shape, stride: Shape, pad: Shape, out: Shape) -> np.ndarray:
    """Pooling's divisor rule per axis; time is never padded, so its windows are clipped to
    the blob."""
    sizes = [window_sizes(*a) for a in zip(x[2:], kernel, stride, pad, out, strict=True)]
    return np.einsum("i,j,k->ijk", *sizes).astype(np.float64)


@register("Pooling3D", shape=pooling3d_shape, fork="facebook/C3D (C3D-v1.1)")
def convert_pooling3d(layer: Layer, net: Net) -> nn.Module:
    """Pooling3D (facebook/C3D): MAX/AVE over (L, H, W), C3D's ceil size without clip rule."""
    pp = layer.param.pooling3d_param
    x = net.blobs[layer.bottoms[0]].shape
    kernel, stride, pad, out = pool3d_geometry(pp, x)
    pads = pad_amounts(x[2:], kernel, stride, pad, out)  # (w, w, h, h, l, l)
    if pp.pool == MAX:
        return PaddedPool3dCaffe(kernel, stride, pads, -FLT_MAX, None)
    with np.errstate(divide="ignore"):
        scale = math.prod(kernel) / _divisor(x, kernel, stride, pad, out)
    return PaddedPool3dCaffe(kernel, stride, pads, 0.0,
                             f32_tensor(scale))
