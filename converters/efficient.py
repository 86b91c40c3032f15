"""Layers of the efficient-net forks (MobileNet / ShuffleNet ports) and the newer activations.

* ``ConvolutionDepthwise`` (BVLC/caffe branch, src/caffe/layers/conv_dw_layer.cpp; used by
  farmingyard/ShuffleNet's definitions): one filter per input channel. It never reads
  ``num_output`` or ``group``: the top has the bottom's channel count.
* ``DepthwiseConvolution`` (yonghenglh6/DepthwiseConvolution, eric612/MobileNet-YOLO): Caffe's
  Convolution with the prototxt's ``group`` (a dense convolution when group is absent).
* ``ShuffleChannel`` (farmingyard/ShuffleNet shuffle_channel_layer.cpp): channels viewed as
  (group, C/group) and transposed.
* ``ReLU6`` (eric612/MobileNet-YOLO relu6_layer.cpp, ``relu6_param``), ``Clip`` and ``Swish``
  (BVLC), ``Mish`` (synopsys-caffe / troyliu0105 caffe mish_layer.cpp), ``HardSwish``
  (Zeitzmz/micronet-caffe, synopsys-caffe hard_swish_layer.cpp). ``HardSigmoid`` is left out:
  its forks disagree (synopsys-caffe reads alpha/beta from hard_sigmoid_param; eric612's and
  troyliu0105's call a helper whose constants their sources do not pin down).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from google.protobuf import message as pb_message
from torch import nn

from caffe_bridge import shapes
from caffe_bridge.converters import conv
from caffe_bridge.converters.registry import register
from caffe_bridge.errors import PrototxtError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.numeric import f32
from caffe_bridge.shapes import LayerShapes, Shape, ShapeRuleError

# ---------------------------------------------------------------- ConvolutionDepthwise


def _dw_pair(cp: pb_message.Message, name: str, default: int | None) -> tuple[int, int]:
    """(h, w) as conv_dw_layer.cpp reads them: ``name_h``/``name_w`` only when BOTH are set,
    else the repeated field's first (and second) value. The source reads element 0 even of
    an empty field (undefined); Caffe Convolution's defaults (stride 1, pad 0) are taken."""
    if cp.HasField(name + "_h") and cp.HasField(name + "_w"):
        return int(getattr(cp, name + "_h")), int(getattr(cp, name + "_w"))
    vals = list(getattr(cp, "kernel_size" if name == "kernel" else name))
    if not vals:
        if default is None:
            raise ShapeRuleError("ConvolutionDepthwise needs kernel_size (or kernel_h and "
                                 "kernel_w)")
        return default, default
    return int(vals[0]), int(vals[1] if len(vals) > 1 else vals[0])


def dw_geometry(cp: pb_message.Message) -> shapes.ConvGeometry:
    """Kernel, stride, pad and dilation of a ConvolutionDepthwise layer."""
    kernel, stride = _dw_pair(cp, "kernel", None), _dw_pair(cp, "stride", 1)
    pad = _dw_pair(cp, "pad", 0)
    dil = list(cp.dilation)
    dilation = (int(dil[0]), int(dil[1] if len(dil) > 1 else dil[0])) if dil else (1, 1)
    if min(kernel) <= 0 or min(stride) <= 0 or min(dilation) <= 0 or min(pad) < 0:
        raise ShapeRuleError(f"kernel {kernel}, stride {stride}, dilation {dilation} must be "
                             f"> 0 and pad {pad} >= 0")
    return shapes.ConvGeometry(kernel, stride, pad, dilation)


def convolution_depthwise_shape(param: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    if len(ins) != 1 or len(ins[0]) != 4:
        raise ShapeRuleError(f"ConvolutionDepthwise takes one 4-D bottom, got {list(ins)}")
    n, c, h, w = ins[0]
    geo = dw_geometry(param.convolution_param)
    out = shapes.conv_out_sizes((h, w), geo)
    params: list[Shape] = [(c, 1, *geo.kernel)]
    if param.convolution_param.bias_term:
        params.append((c,))
    return LayerShapes(((n, c, *out),), tuple(params))


@register("ConvolutionDepthwise", shape=convolution_depthwise_shape,
          fork="conv_dw_layer.cpp (ShuffleNet/MobileNet ports)", per_sample=True)
def convert_convolution_depthwise(layer: Layer, net: Net) -> nn.Module:
    """ConvolutionDepthwise: nn.Conv2d with groups = channels; num_output/group are ignored."""
    cp = layer.param.convolution_param
    c = net.blobs[layer.bottoms[0]].shape[1]
    geo = dw_geometry(cp)
    return conv.loaded_module(layer, nn.Conv2d, c, c, geo.kernel, stride=geo.stride,
                              padding=geo.pad, dilation=geo.dilation, groups=c,
                              bias=cp.bias_term)


# ---------------------------------------------------------------- DepthwiseConvolution


@register("DepthwiseConvolution", shape=shapes.convolution_shapes,
          fork="yonghenglh6/DepthwiseConvolution", per_sample=True)
def convert_depthwise_convolution(layer: Layer, net: Net) -> nn.Module:
    """DepthwiseConvolution: Caffe's Convolution with the prototxt's group (1 when absent)."""
    return conv.convert_convolution(layer, net)


# ---------------------------------------------------------------- ShuffleChannel


def shuffle_channel_shape(param: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    if len(ins) != 1 or len(ins[0]) < 2:
        raise ShapeRuleError(f"ShuffleChannel takes one bottom of 2 or more axes, got {list(ins)}")
    g = param.shuffle_channel_param.group
    c = ins[0][1]
    if g <= 0 or c % g:
        raise ShapeRuleError(f"group {g} must be > 0 and divide the {c} channels")
    return LayerShapes((ins[0],))


class ChannelShuffleCaffe(nn.Module):
    """Channels as (group, C/group), transposed: output channel j*group + i = input
    i*(C/group) + j. Rank-independent and fx-traceable (no shape unpacking)."""

    def __init__(self, group: int, channels: int) -> None:
        super().__init__()
        self.group, self.channels = group, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.unflatten(1, (self.group, self.channels // self.group))
        return y.transpose(1, 2).flatten(1, 2)

    def extra_repr(self) -> str:
        return f"group={self.group}"


@register("ShuffleChannel", shape=shuffle_channel_shape, fork="farmingyard/ShuffleNet",
          per_sample=True)
def convert_shuffle_channel(layer: Layer, net: Net) -> nn.Module:
    """ShuffleChannel (farmingyard/ShuffleNet): view channels as (group, C/group), transpose."""
    c = net.blobs[layer.bottoms[0]].shape[1]
    return ChannelShuffleCaffe(layer.param.shuffle_channel_param.group, c)


# ---------------------------------------------------------------- activations


class ReLU6Caffe(nn.Module):
    """``min(max(x, 0) + negative_slope * min(x, 0), 6)``."""

    def __init__(self, negative_slope: float) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative_slope == 0.0:
            return F.hardtanh(x, 0.0, 6.0)
        return torch.clamp_max(F.leaky_relu(x, self.negative_slope), 6.0)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


@register("ReLU6", shape=shapes.same_shape, fork="eric612/MobileNet-YOLO", per_sample=True)
def convert_relu6(layer: Layer, net: Net) -> nn.Module:
    """ReLU6 (eric612/MobileNet-YOLO): ReLU (relu6_param negative_slope) capped at 6."""
    return ReLU6Caffe(f32(layer.param.relu6_param.negative_slope))


class ClipCaffe(nn.Module):
    """``max(min, min(x, max))``: with min > max every value becomes ``min`` (torch.clamp
    would give ``max``)."""

    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp_min(torch.clamp_max(x, self.hi), self.lo)

    def extra_repr(self) -> str:
        return f"min={self.lo}, max={self.hi}"


@register("Clip", shape=shapes.same_shape, per_sample=True)
def convert_clip(layer: Layer, net: Net) -> nn.Module:
    """Clip: ``max(min, min(x, max))`` (both bounds required, as in BVLC's schema)."""
    cp = layer.param.clip_param
    if not (cp.HasField("min") and cp.HasField("max")):
        raise PrototxtError("Clip needs clip_param min and max (both required)")
    return ClipCaffe(f32(cp.min), f32(cp.max))


class SwishCaffe(nn.Module):
    """``x * sigmoid(beta * x)``."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.beta == 1.0:
            return F.silu(x)
        return x * torch.sigmoid(x * self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


@register("Swish", shape=shapes.same_shape, per_sample=True)
def convert_swish(layer: Layer, net: Net) -> nn.Module:
    """Swish: ``x * sigmoid(beta * x)`` (swish_param beta, default 1)."""
    return SwishCaffe(f32(layer.param.swish_param.beta))


@register("Mish", shape=shapes.same_shape,
          fork="foss-for-synopsys-dwc-arc-processors/synopsys-caffe", per_sample=True)
def convert_mish(layer: Layer, net: Net) -> nn.Module:
    """Mish: ``x * tanh(softplus(x))``, softplus linear above 20 (torch.nn.Mish's own rule)."""
    return nn.Mish()


@register("HardSwish", shape=shapes.same_shape, fork="Zeitzmz/micronet-caffe", per_sample=True)
def convert_hard_swish(layer: Layer, net: Net) -> nn.Module:
    """HardSwish: ``x * min(max(x + 3, 0), 6) / 6`` (torch.nn.Hardswish, same order)."""
    return nn.Hardswish()
