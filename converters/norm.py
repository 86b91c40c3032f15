"""BatchNorm, Scale, Bias and LRN, and the exact BatchNorm + Scale fusion.

BatchNorm blobs are ``(mean, variance, f)``; the statistics are ``mean / f`` and ``variance / f``
(both 0 when ``f == 0``). Caffe uses them unless ``use_global_stats`` is explicitly false, in
which case it normalises with the batch's own statistics even at test time (as PyTorch's
``track_running_stats=False`` does). There is no affine part: a following Scale supplies it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from caffe_bridge import schema, shapes
from caffe_bridge.converters.registry import axis_past_batch, register, register_fusion
from caffe_bridge.errors import ShapeError, UnsupportedLayerError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.numeric import f32_tensor

_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
ACROSS_CHANNELS = schema.LRNParameter.ACROSS_CHANNELS
WITHIN_CHANNEL = schema.LRNParameter.WITHIN_CHANNEL


def batch_norm_stats(layer: Layer) -> tuple[np.ndarray, np.ndarray] | None:
    """Caffe's effective (mean, variance) in float32, or None when no weights are loaded."""
    if not layer.blobs:
        return None
    mean, var, f = (np.asarray(b, dtype=np.float32).reshape(-1) for b in layer.blobs)
    factor = np.float32(0.0) if f[0] == 0 else np.float32(1.0) / f[0]  # Caffe: 1 / f in float
    return mean * factor, var * factor


def uses_global_stats(layer: Layer) -> bool:
    bp = layer.param.batch_norm_param
    return not bp.HasField("use_global_stats") or bp.use_global_stats


class ChannelNorm(nn.Module):
    """Per-channel ``(x - mean) / sqrt(var + eps)`` over axis 1, for blobs of 6 or more axes."""

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, eps: float, ndim: int) -> None:
        super().__init__()
        view = (-1,) + (1,) * (ndim - 2)
        self.register_buffer("mean", mean.reshape(view))
        self.register_buffer("std", torch.sqrt(var + eps).reshape(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _bn_module(layer: Layer, net: Net, affine: Layer | None = None) -> nn.Module:
    """nn.BatchNormNd with Caffe's statistics, and the Scale ``affine`` when fusing."""
    x = net.blobs[layer.bottoms[0]].shape
    c = x[1] if len(x) > 1 else 1
    eps = float(layer.param.batch_norm_param.eps)
    stats = batch_norm_stats(layer)
    global_stats = uses_global_stats(layer)
    if len(x) not in _BN:
        if not global_stats or affine is not None:
            raise UnsupportedLayerError(f"BatchNorm over a {len(x)}-D blob with batch statistics "
                                        f"is not supported")
        mean, var = stats if stats is not None else (np.zeros(c, np.float32),
                                                     np.ones(c, np.float32))
        return ChannelNorm(f32_tensor(mean), f32_tensor(var), eps, len(x))
    if not global_stats and math.prod(x) == c:  # refused by torch's batch_norm
        raise UnsupportedLayerError(f"BatchNorm with batch statistics over one value per "
                                    f"channel (bottom {x}) is not supported")
    if eps < 0 or (eps == 0 and not global_stats):  # refused by torch's batch_norm
        raise UnsupportedLayerError(f"BatchNorm eps {eps:g} is not supported (it must be > 0, "
                                    f"or 0 with use_global_stats)")
    bn = _BN[len(x)](c, eps=eps, affine=affine is not None, track_running_stats=global_stats)
    with torch.no_grad():
        if global_stats and stats is not None:
            bn.running_mean.copy_(f32_tensor(stats[0]))
            bn.running_var.copy_(f32_tensor(stats[1]))
        if affine is not None and affine.blobs:
            bn.weight.copy_(f32_tensor(affine.blobs[0]).reshape(c))
            if affine.param.scale_param.bias_term:
                bn.bias.copy_(f32_tensor(affine.blobs[1]).reshape(c))
    return bn.eval()


@register("BatchNorm", shape=shapes.batch_norm_shapes,
          per_sample=lambda layer, net: uses_global_stats(layer))
def convert_batch_norm(layer: Layer, net: Net) -> nn.Module:
    """BatchNorm: nn.BatchNormNd without affine; mean/f, var/f; batch stats if asked."""
    return _bn_module(layer, net)


@register_fusion("BatchNorm", "Scale")
def fuse_batch_norm_scale(bn: Layer, scale: Layer, net: Net) -> nn.Module | None:
    """BatchNorm + per-channel Scale -> one affine nn.BatchNormNd (None when not exact)."""
    x = net.blobs[bn.bottoms[0]].shape
    sp = scale.param.scale_param
    if len(scale.bottoms) != 1 or len(x) not in _BN or not uses_global_stats(bn):
        return None
    try:
        axis = shapes.canonical_axis(sp.axis, len(x))
    except shapes.ShapeRuleError:
        return None
    if axis != 1 or sp.num_axes != 1:
        return None
    return _bn_module(bn, net, affine=scale)


def _trailing(ndim: int, axis: int, span: int) -> tuple[int, ...]:
    return (1,) * (ndim - axis - span)


class Affine(nn.Module):
    """``x * weight (+ bias)`` with learned operands shaped to broadcast from their axis."""

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = None if weight is None else nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            x = x * self.weight
        if self.bias is not None:
            x = x + self.bias
        return x


class BroadcastScale(nn.Module):
    """``x * s (+ bias)`` with ``s`` a second bottom aligned with x's axes from ``axis``."""

    def __init__(self, trailing: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.index = (Ellipsis,) + (None,) * trailing
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x = x * s[self.index]
        if self.bias is not None:
            x = x + self.bias
        return x


class BroadcastBias(nn.Module):
    """``x + b`` with ``b`` a second bottom aligned with x's axes from ``axis``."""

    def __init__(self, trailing: int) -> None:
        super().__init__()
        self.index = (Ellipsis,) + (None,) * trailing

    def forward(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return x + b[self.index]


def _operand(layer: Layer, i: int, shape: tuple[int, ...], trailing: tuple[int, ...],
             default: float) -> torch.Tensor:
    """Blob ``i`` of ``layer`` (or ``default`` everywhere) reshaped to ``shape + trailing``."""
    if layer.blobs:
        return f32_tensor(layer.blobs[i]).reshape(shape + trailing)
    return torch.full(shape + trailing, default)


def _scale_or_bias(layer: Layer, net: Net, is_scale: bool) -> nn.Module:
    sp = layer.param.scale_param if is_scale else layer.param.bias_param
    x = net.blobs[layer.bottoms[0]].shape
    bias_term = (not is_scale) or sp.bias_term
    if len(layer.bottoms) == 2:
        y = net.blobs[layer.bottoms[1]].shape
        axis = shapes.broadcast_axis(x, y, sp.axis)
        trailing = _trailing(len(x), axis, len(y))
        if not is_scale:
            return BroadcastBias(len(trailing))
        bias = _operand(layer, 0, y, trailing, 0.0) if bias_term else None
        return BroadcastScale(len(trailing), bias)
    if len(layer.bottoms) != 1:
        raise ShapeError(f"expects 1 or 2 bottoms, got {len(layer.bottoms)}")
    axis = shapes.canonical_axis(sp.axis, len(x))
    span = x[axis:] if sp.num_axes == -1 else x[axis: axis + sp.num_axes]
    trailing = _trailing(len(x), axis, len(span))
    if is_scale:
        weight = _operand(layer, 0, span, trailing, 1.0)
        bias = _operand(layer, 1, span, trailing, 0.0) if bias_term else None
        return Affine(weight, bias)
    return Affine(None, _operand(layer, 0, span, trailing, 0.0))


def _operand_per_sample(param: str) -> Callable[[Layer, Net], bool]:
    """Scale/Bias: a learned operand must not run along the batch axis (axis 0), a second
    bottom must (axis 0: one operand per sample, as SE-BN-Inception's gates); a second bottom
    broadcast from a later axis would be shared by all the samples of the batch."""
    past_batch = axis_past_batch(param)

    def test(layer: Layer, net: Net) -> bool:
        if len(layer.bottoms) == 1:
            return past_batch(layer, net)
        ndim = len(net.blobs[layer.bottoms[0]].shape)
        return getattr(layer.param, param).axis in (0, -ndim)

    return test


@register("Scale", shape=shapes.scale_shapes, per_sample=_operand_per_sample("scale_param"))
def convert_scale(layer: Layer, net: Net) -> nn.Module:
    """Scale: learned (one bottom, axis/num_axes) or bottom[1] broadcast from axis; opt. bias."""
    return _scale_or_bias(layer, net, is_scale=True)


@register("Bias", shape=shapes.scale_shapes, per_sample=_operand_per_sample("bias_param"))
def convert_bias(layer: Layer, net: Net) -> nn.Module:
    """Bias: learned (one bottom, axis/num_axes) or bottom[1] broadcast from axis."""
    return _scale_or_bias(layer, net, is_scale=False)


class WithinChannelLRN(nn.Module):
    """Caffe's WITHIN_CHANNEL LRN: ``x * (1 + alpha * avgpool_nxn(x^2))^-beta`` (k ignored).

    Caffe builds it from AVE pooling with pad ``(n-1)/2`` and stride 1, whose divisor is n*n
    everywhere (padding counts), i.e. ``count_include_pad=True``.
    """

    def __init__(self, size: int, alpha: float, beta: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = F.avg_pool2d(x * x, self.size, 1, (self.size - 1) // 2, count_include_pad=True)
        return x * torch.pow(1.0 + self.alpha * avg, -self.beta)


@register("LRN", shape=shapes.lrn_shapes, per_sample=True)
def convert_lrn(layer: Layer, net: Net) -> nn.Module:
    """LRN: ACROSS_CHANNELS as nn.LocalResponseNorm; WITHIN_CHANNEL from AVE pooling of x^2."""
    lp = layer.param.lrn_param
    x = net.blobs[layer.bottoms[0]].shape
    n = int(lp.local_size)
    if len(x) != 4:
        raise ShapeError(f"LRN needs a 4-D bottom, got {x}")
    if n % 2 == 0:
        raise ShapeError("LRN local_size must be odd")
    if lp.norm_region == ACROSS_CHANNELS:
        return nn.LocalResponseNorm(n, alpha=float(lp.alpha), beta=float(lp.beta), k=float(lp.k))
    if lp.norm_region == WITHIN_CHANNEL:
        return WithinChannelLRN(n, float(lp.alpha), float(lp.beta))
    raise UnsupportedLayerError(f"unknown LRN norm_region {lp.norm_region}")
