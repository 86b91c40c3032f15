"""BatchNorm, Scale, Bias and LRN (Caffe's batch_norm / scale / bias / lrn layers)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._util import Array, LayerFn, blob, canonical_axis, f64, get
from .pooling import AVE, pool2d


def batch_norm(layer: Any, inputs: list[Array]) -> list[Array]:
    """BatchNorm: (x - mean/f) / sqrt(var/f + eps) per channel (axis 1), f == 0 -> stats 0.

    `use_global_stats` defaults to true at test time; when explicitly false Caffe normalises
    with the statistics of the batch itself (biased variance over N and spatial axes).
    """
    p = layer.param.batch_norm_param
    x = f64(inputs[0])
    eps = get(p, "eps", 1e-5)
    c = x.shape[1] if x.ndim > 1 else 1
    bshape = (1, c) + (1,) * (x.ndim - 2) if x.ndim > 1 else (1,)
    if get(p, "use_global_stats", True):
        f = blob(layer, 2).reshape(-1)[0]
        factor = 0.0 if f == 0 else 1.0 / f
        mean = blob(layer, 0).reshape(bshape) * factor
        var = blob(layer, 1).reshape(bshape) * factor
    else:
        red = tuple(i for i in range(x.ndim) if i != 1)
        mean = x.mean(axis=red, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=red, keepdims=True)
    return [(x - mean) / np.sqrt(var + eps)]


def broadcast_operand(x: Array, v: Array, axis: int, num_axes: int) -> Array:
    """Reshape operand `v` to broadcast over x from `axis`, as Scale/Bias do.

    Caffe aligns v's own shape with x.shape[axis : axis + v.ndim] (a 0-D v is a scalar).
    A flat or legacy-shaped v of the right size is accepted against x.shape[axis:axis+num_axes]
    (num_axes -1 = all remaining axes).
    """
    if v.ndim == 0:
        return v
    span = x.shape[axis : axis + v.ndim]
    if v.shape != span:
        end = x.ndim if num_axes == -1 else axis + num_axes
        span = x.shape[axis:end]
        if v.size != int(np.prod(span, dtype=np.int64)):
            raise ValueError(f"operand {v.shape} does not fit {x.shape} from axis {axis}")
        v = v.reshape(span)
    return v.reshape((1,) * axis + span + (1,) * (x.ndim - axis - len(span)))


def _axis(x: Array, v: Array, axis: int) -> int:
    # a scalar operand is applied with axis 0 whatever the parameter says
    return 0 if v.ndim == 0 else canonical_axis(axis, x.ndim)


def scale(layer: Any, inputs: list[Array]) -> list[Array]:
    """Scale: x * s (+ b). s is bottom[1] when given (and b is blobs[0]), else blobs[0]/[1]."""
    p = layer.param.scale_param
    x = f64(inputs[0])
    axis_param = get(p, "axis", 1)
    if len(inputs) > 1:
        s = f64(inputs[1])
        num_axes = s.ndim
        bias_idx = 0
    else:
        s = blob(layer, 0)
        num_axes = get(p, "num_axes", 1)
        bias_idx = 1
    axis = _axis(x, s, axis_param)
    y = x * broadcast_operand(x, s, axis, num_axes)
    if get(p, "bias_term", False):
        b = blob(layer, bias_idx)
        y = y + broadcast_operand(x, b, _axis(x, b, axis_param), num_axes)
    return [y]


def bias(layer: Any, inputs: list[Array]) -> list[Array]:
    """Bias: x + b with b = bottom[1] when given, else blobs[0]; broadcast like Scale."""
    p = layer.param.bias_param
    x = f64(inputs[0])
    if len(inputs) > 1:
        b = f64(inputs[1])
        num_axes = b.ndim
    else:
        b = blob(layer, 0)
        num_axes = get(p, "num_axes", 1)
    axis = _axis(x, b, get(p, "axis", 1))
    return [x + broadcast_operand(x, b, axis, num_axes)]


ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1


def lrn(layer: Any, inputs: list[Array]) -> list[Array]:
    """LRN.

    ACROSS_CHANNELS: scale = k + alpha/n * sum of x^2 over channels c-(n-1)/2 .. c+(n-1)/2
    (zero outside), y = x * scale^-beta.
    WITHIN_CHANNEL: Caffe chains Power(x^2) -> AVE Pooling(n x n, pad (n-1)/2, stride 1) ->
    Power(1 + alpha * avg)^-beta -> product with x; k is ignored. The pooling divisor is
    computed from the padded window, so it is n*n at every position, borders included.
    """
    p = layer.param.lrn_param
    x = f64(inputs[0])
    if x.ndim != 4:
        raise ValueError(f"LRN needs a 4-D blob, got shape {x.shape}")
    n = get(p, "local_size", 5)
    if n % 2 != 1:
        raise ValueError("LRN only supports odd local_size")
    alpha, beta, k = get(p, "alpha", 1.0), get(p, "beta", 0.75), get(p, "k", 1.0)
    half = (n - 1) // 2
    if get(p, "norm_region", ACROSS_CHANNELS) == ACROSS_CHANNELS:
        c = x.shape[1]
        sq = x * x
        scale_ = np.full_like(x, k)
        for ch in range(c):
            lo, hi = max(ch - half, 0), min(ch + half + 1, c)
            scale_[:, ch] += alpha / n * sq[:, lo:hi].sum(axis=1)
    else:
        avg = pool2d(x * x, AVE, (n, n), (1, 1), (half, half), ceil_mode=True)
        scale_ = 1.0 + alpha * avg
    return [x * scale_ ** (-beta)]


LAYERS: dict[str, LayerFn] = {
    "BatchNorm": batch_norm,
    "Scale": scale,
    "Bias": bias,
    "LRN": lrn,
}
