"""Neuron layers (one bottom, one top, same shape) and Softmax.

Each module computes what Caffe's CPU layer computes, in the same order of operations where
that changes float32 rounding (Power, Exp, Log). Constants are folded at conversion time; the
forward passes use torch ops only, so the modules follow ``.to(device)`` and any batch size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from caffe_bridge import shapes
from caffe_bridge.converters.python_param import literal_dict
from caffe_bridge.converters.registry import axis_past_batch, register
from caffe_bridge.errors import PrototxtError, UnsupportedLayerError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.numeric import f32, f32_tensor
from caffe_bridge.shapes import canonical_axis, same_shape

PRELU_DEFAULT_SLOPE = 0.25  # Caffe's PReLU filler when the definition names none


@register("ReLU", shape=same_shape, per_sample=True)
def convert_relu(layer: Layer, net: Net) -> nn.Module:
    """ReLU, with Caffe's ``negative_slope`` (leaky) when set."""
    slope = f32(layer.param.relu_param.negative_slope)
    return nn.LeakyReLU(slope) if slope else nn.ReLU()


@register("PReLU", shape=shapes.prelu_shapes, per_sample=True)
def convert_prelu(layer: Layer, net: Net) -> nn.Module:
    """PReLU; ``channel_shared`` gives one slope for all channels."""
    (shape,) = layer.param_shapes
    if layer.blobs:
        slope = f32_tensor(layer.blobs[0])
    else:  # no weights loaded: Caffe's initial slopes (constant filler, 0.25 by default)
        pp = layer.param.prelu_param
        value = PRELU_DEFAULT_SLOPE
        if pp.HasField("filler"):
            if pp.filler.type != "constant":
                raise UnsupportedLayerError(
                    f"PReLU without weights needs a constant filler, not {pp.filler.type!r}")
            value = f32(pp.filler.value)
        slope = torch.full(shape, value, dtype=torch.float32)
    prelu = nn.PReLU(slope.numel())
    with torch.no_grad():
        prelu.weight.copy_(slope.reshape(-1))
    return prelu


@register("ELU", shape=same_shape, per_sample=True)
def convert_elu(layer: Layer, net: Net) -> nn.Module:
    """ELU with Caffe's ``alpha`` (default 1)."""
    return nn.ELU(f32(layer.param.elu_param.alpha))


class AbsVal(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


@register("Sigmoid", shape=same_shape, per_sample=True)
def convert_sigmoid(layer: Layer, net: Net) -> nn.Module:
    """Logistic sigmoid ``1 / (1 + exp(-x))``."""
    return nn.Sigmoid()


@register("TanH", shape=same_shape, per_sample=True)
def convert_tanh(layer: Layer, net: Net) -> nn.Module:
    """Hyperbolic tangent."""
    return nn.Tanh()


@register("AbsVal", shape=same_shape, per_sample=True)
def convert_absval(layer: Layer, net: Net) -> nn.Module:
    """Absolute value ``|x|``."""
    return AbsVal()


class Power(nn.Module):
    """``(shift + scale * x) ^ power``, skipping the steps that are identities, as Caffe does."""

    def __init__(self, power: float, scale: float, shift: float) -> None:
        super().__init__()
        self.power, self.scale, self.shift = power, scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.scale != 1.0:
            y = y * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        if self.power != 1.0:
            y = torch.pow(y, self.power)
        return y

    def extra_repr(self) -> str:
        return f"power={self.power}, scale={self.scale}, shift={self.shift}"


class Constant(nn.Module):
    """A tensor of ``value`` shaped like the input (Power with scale or power 0)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.value)

    def extra_repr(self) -> str:
        return f"value={self.value}"


@register("Power", shape=same_shape, per_sample=True)
def convert_power(layer: Layer, net: Net) -> nn.Module:
    """Power ``(shift + scale * x) ^ power``; a constant when ``power * scale == 0``."""
    p = layer.param.power_param
    power, scale, shift = f32(p.power), f32(p.scale), f32(p.shift)
    if power * scale == 0.0:  # Caffe ignores the input: 1 if power == 0 else shift ^ power
        value = 1.0 if power == 0.0 else float(
            torch.tensor(shift, dtype=torch.float32).pow(power))
        return Constant(value)
    return Power(power, scale, shift)


class ScaledExp(nn.Module):
    """``outer * exp(inner * x)`` (Caffe's ExpLayer factorisation of ``base^(shift+scale*x)``)."""

    def __init__(self, inner: float, outer: float) -> None:
        super().__init__()
        self.inner, self.outer = inner, outer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x if self.inner == 1.0 else x * self.inner)
        return y if self.outer == 1.0 else y * self.outer

    def extra_repr(self) -> str:
        return f"inner={self.inner}, outer={self.outer}"


def _log_base(base: float) -> float:
    """ln(base), 1 for base -1 (e); Caffe rejects base <= 0 otherwise."""
    if base == -1.0:
        return 1.0
    if not base > 0.0 or math.isinf(base):
        raise PrototxtError(f"base must be strictly positive or -1 (e), got {base}")
    return f32(math.log(base))


@register("Exp", shape=same_shape, per_sample=True)
def convert_exp(layer: Layer, net: Net) -> nn.Module:
    """Exp ``base ^ (shift + scale * x)``; base -1 (default) means e."""
    p = layer.param.exp_param
    base, scale, shift = f32(p.base), f32(p.scale), f32(p.shift)
    inner = f32(_log_base(base) * scale)
    # Caffe: outer = base^shift (e^shift for base -1), 1 without shift
    try:
        outer = 1.0 if shift == 0.0 else f32(math.exp(shift) if base == -1.0 else base**shift)
    except OverflowError:  # Caffe's float pow/exp: +inf
        outer = math.inf
    return ScaledExp(inner, outer)


class ScaledLog(nn.Module):
    """``log(shift + scale * x) * base_scale`` (base_scale = 1 / ln(base))."""

    def __init__(self, scale: float, shift: float, base_scale: float) -> None:
        super().__init__()
        self.scale, self.shift, self.base_scale = scale, shift, base_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.scale != 1.0:
            y = y * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        y = torch.log(y)
        return y if self.base_scale == 1.0 else y * self.base_scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}, shift={self.shift}, base_scale={self.base_scale}"


@register("Log", shape=same_shape, per_sample=True)
def convert_log(layer: Layer, net: Net) -> nn.Module:
    """Log ``log_base(shift + scale * x)``; base -1 (default) means e."""
    p = layer.param.log_param
    ln_base = _log_base(f32(p.base))
    if ln_base == 0.0:
        raise PrototxtError("Log base 1 has no logarithm")
    return ScaledLog(f32(p.scale), f32(p.shift), f32(1.0 / ln_base))


class BNLL(nn.Module):
    """``log(1 + exp(x))`` without overflow: ``max(x, 0) + log1p(exp(-|x|))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, min=0) + torch.log1p(torch.exp(-torch.abs(x)))


@register("BNLL", shape=same_shape, per_sample=True)
def convert_bnll(layer: Layer, net: Net) -> nn.Module:
    """BNLL (softplus) ``log(1 + exp(x))``, exact for large |x|."""
    return BNLL()


class Threshold(nn.Module):
    """1 where ``x > threshold`` (strictly), else 0, in the input's dtype."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


@register("Threshold", shape=same_shape, per_sample=True)
def convert_threshold(layer: Layer, net: Net) -> nn.Module:
    """Threshold: 1 where ``x > threshold`` (strictly), else 0."""
    return Threshold(f32(layer.param.threshold_param.threshold))


@register("Dropout", shape=same_shape, per_sample=True)
def convert_dropout(layer: Layer, net: Net) -> nn.Module:
    """Dropout: the identity at test time; ``scale_train: false`` (py-faster-rcnn) scales."""
    p = layer.param.dropout_param
    if p.scale_train:
        return nn.Identity()
    # rbgirshick/caffe-fast-rcnn src/caffe/layers/dropout_layer.cpp: at test time the copy is
    # scaled by 1 / scale_, with threshold_ and scale_ = 1 / (1 - threshold_) held as float.
    scale = f32(1.0 / (1.0 - f32(p.dropout_ratio)))
    return Power(1.0, f32(1.0 / scale), 0.0)


@register("Python:spatial_dropout.SpatialDropoutLayer", shape=same_shape,
          fork="TimoSaemann/caffe-enet", per_sample=True)
def convert_spatial_dropout(layer: Layer, net: Net) -> nn.Module:
    """ENet's SpatialDropoutLayer (Python): at TEST it scales by 1 / (1 - p), not identity."""
    # TimoSaemann/caffe-enet python/spatial_dropout.py: scale_ = 1. / (1. - p); with phase
    # 'TEST' forward is top = bottom * scale_ (numpy float32 array times a Python float).
    cfg = literal_dict(layer.param.python_param.param_str)
    if cfg.get("phase", "TRAIN") != "TEST":
        raise UnsupportedLayerError("SpatialDropoutLayer with phase TRAIN drops whole channels "
                                    "at random; only phase 'TEST' converts")
    p = float(cfg.get("p", 0.5))  # type: ignore[arg-type]
    if not 0.0 < p < 1.0:
        raise PrototxtError(f"p must be between 0 and 1, got {p}")
    return Power(1.0, f32(1.0 / (1.0 - p)), 0.0)


@register("Softmax", shape=shapes.softmax_shapes, per_sample=axis_past_batch("softmax_param"))
def convert_softmax(layer: Layer, net: Net) -> nn.Module:
    """Softmax along ``axis`` (default 1, not the last axis)."""
    shape = net.blobs[layer.bottoms[0]].shape
    axis = canonical_axis(layer.param.softmax_param.axis, len(shape))
    if axis < len(shape) - 1 and math.prod(shape[axis + 1:]) == 1:
        # N x C x 1 x 1: PyTorch's kernel for a dim that is not the last one sums in sequence
        # in float32; over the last dim it is as close to the exact result as Caffe's own.
        return nn.Sequential(nn.Flatten(axis), nn.Softmax(-1), nn.Unflatten(axis, shape[axis:]))
    return nn.Softmax(axis)
