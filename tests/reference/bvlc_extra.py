"""The rest of BVLC's deploy-time layers (Reduction, Tile, Embed, Parameter, BatchReindex, SPP)
and the C3D fork's volumetric Convolution3D / Pooling3D.

Each function cites the C++ source whose CPU forward it follows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import conv, pooling
from ._util import Array, LayerFn, blob, canonical_axis, f64, get, has

SUM, ASUM, SUMSQ, MEAN = 1, 2, 3, 4


def reduction(layer: Any, inputs: list[Array]) -> list[Array]:
    """Reduce every axis from ``axis`` (default 0) on: SUM, ASUM, SUMSQ or MEAN, times coeff.

    Source: BVLC/caffe src/caffe/layers/reduction_layer.cpp. The top keeps the axes before
    ``axis`` (a 0-D blob for axis 0); MEAN divides ``coeff`` by the reduced count.
    """
    p = layer.param.reduction_param
    x = f64(inputs[0])
    axis = canonical_axis(get(p, "axis", 0), x.ndim)
    op = get(p, "operation", SUM)
    flat = x.reshape(x.shape[:axis] + (-1,))
    if op in (SUM, MEAN):
        y = flat.sum(axis=-1)
    elif op == ASUM:
        y = np.abs(flat).sum(axis=-1)
    elif op == SUMSQ:
        y = (flat * flat).sum(axis=-1)
    else:
        raise ValueError(f"unknown reduction operation {op}")
    coeff = float(np.float32(get(p, "coeff", 1.0)))
    if op == MEAN:
        coeff /= flat.shape[-1]
    return [np.asarray(y * coeff, dtype=np.float64)]


def tile(layer: Any, inputs: list[Array]) -> list[Array]:
    """Repeat the block of axes from ``axis`` (default 1) ``tiles`` times, whole block after
    whole block (a b c a b c, not a a b b c c).

    Source: BVLC/caffe src/caffe/layers/tile_layer.cpp.
    """
    p = layer.param.tile_param
    x = f64(inputs[0])
    if not has(p, "tiles") or p.tiles <= 0:
        raise ValueError("Tile needs tiles > 0")
    axis = canonical_axis(get(p, "axis", 1), x.ndim)
    outer = x.reshape(x.shape[:axis] + (1, -1))
    y = np.concatenate([outer] * p.tiles, axis=axis)
    return [y.reshape(x.shape[:axis] + (x.shape[axis] * p.tiles,) + x.shape[axis + 1:])]


def embed(layer: Any, inputs: list[Array]) -> list[Array]:
    """Row ``int(x)`` of the (input_dim, num_output) weight for every bottom value, plus bias.

    Source: BVLC/caffe src/caffe/layers/embed_layer.cpp: ``static_cast<int>`` truncates toward
    zero; indices outside [0, input_dim) are only debug-checked there, an error here.
    """
    p = layer.param.embed_param
    x = f64(inputs[0])
    w = blob(layer, 0)
    idx = np.trunc(x).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= w.shape[0]):
        raise ValueError(f"Embed index outside [0, {w.shape[0]})")
    y = w[idx]
    if get(p, "bias_term", True):
        y = y + blob(layer, 1).reshape(-1)
    return [y]


def parameter(layer: Any, inputs: list[Array]) -> list[Array]:
    """Its one blob, as the top. Source: BVLC/caffe include/caffe/layers/parameter_layer.hpp."""
    shape = tuple(int(d) for d in layer.param.parameter_param.shape.dim)
    return [blob(layer, 0).reshape(shape)]


def batch_reindex(layer: Any, inputs: list[Array]) -> list[Array]:
    """Top item i is bottom item ``int(permut[i])``; permut is 1-D, any length.

    Source: BVLC/caffe src/caffe/layers/batch_reindex_layer.cpp.
    """
    x, permut = f64(inputs[0]), f64(inputs[1])
    if permut.ndim != 1:
        raise ValueError("BatchReindex indices must be 1-D")
    idx = np.trunc(permut).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= x.shape[0]):
        raise ValueError(f"BatchReindex index outside [0, {x.shape[0]})")
    return [x[idx]]


def spp_level(h: int, w: int, level: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(kernel, pad) of SPP pyramid level ``level`` (2^level bins per axis), as
    spp_layer.cpp's GetPoolingParam: kernel ceil(H / bins), pad (kernel*bins - H + 1) / 2;
    the stride is the kernel."""
    bins = 2 ** level
    kh, kw = math.ceil(h / bins), math.ceil(w / bins)
    return (kh, kw), ((kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2)


def spp(layer: Any, inputs: list[Array]) -> list[Array]:
    """Spatial pyramid pooling: Caffe Pooling (CEIL) per level, each flattened, concatenated.

    Source: BVLC/caffe src/caffe/layers/spp_layer.cpp. With pyramid_height 1 the single
    pooling's 4-D top is the layer's top (no flatten).
    """
    p = layer.param.spp_param
    x = f64(inputs[0])
    height = get(p, "pyramid_height", 0)
    if height < 1:
        raise ValueError("SPP needs pyramid_height >= 1")
    method = get(p, "pool", pooling.MAX)
    n, _, h, w = x.shape
    outs = []
    for level in range(height):
        kernel, pad = spp_level(h, w, level)
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise ValueError(f"SPP level {level}: pad {pad} not below kernel {kernel}")
        outs.append(pooling.pool2d(x, method, kernel, kernel, pad, True))
    if height == 1:
        return [outs[0]]
    return [np.concatenate([o.reshape(n, -1) for o in outs], axis=1)]


def convolution3d(layer: Any, inputs: list[Array]) -> list[Array]:
    """C3D's 3-D convolution of (N, C, L, H, W): weight (O, C, kd, k, k), bias (1,1,1,1,O).

    Source: facebook/C3D C3D-v1.1/src/caffe/layers/convolution3d_layer.cpp: one kernel size,
    stride and pad for height and width; kernel_depth, temporal_stride, temporal_pad for time;
    output floor((in + 2p - k) / s) + 1; no groups (filter_group only splits the GEMM).
    """
    p = layer.param.convolution3d_param
    x = f64(inputs[0])
    w = blob(layer, 0)
    k, kd = p.kernel_size, p.kernel_depth
    w = w.reshape(p.num_output, x.shape[1], kd, k, k)
    bias = blob(layer, 1).reshape(-1) if get(p, "bias_term", True) else None
    stride = [get(p, "temporal_stride", 1), get(p, "stride", 1), get(p, "stride", 1)]
    pad = [get(p, "temporal_pad", 0), get(p, "pad", 0), get(p, "pad", 0)]
    return [conv.conv_nd(x, w, bias, stride, pad, [1, 1, 1], 1)]


def pool3d_size(n: int, k: int, s: int, p: int) -> int:
    """C3D's pooled extent: ceil((n + 2p - k) / s) + 1 with no clip rule (float ceil)."""
    return int(math.ceil(np.float32(n + 2 * p - k) / np.float32(s))) + 1


def pooling3d(layer: Any, inputs: list[Array]) -> list[Array]:
    """C3D's 3-D MAX/AVE pooling of (N, C, L, H, W).

    Source: facebook/C3D C3D-v1.1/src/caffe/layers/pool3d_layer.cpp. Windows are clipped to
    the blob; pad (spatial only) is allowed for AVE only, whose divisor counts the padding but
    not the overhang past H + pad (time is never padded).
    """
    p = layer.param.pooling3d_param
    x = f64(inputs[0])
    method = get(p, "pool", pooling.MAX)
    k, kd = p.kernel_size, p.kernel_depth
    s, st, pad = get(p, "stride", 1), get(p, "temporal_stride", 1), get(p, "pad", 0)
    if pad and method != pooling.AVE:
        raise ValueError("C3D pads average pooling only")
    n, c, length, h, w = x.shape
    ol = pool3d_size(length, kd, st, 0)
    oh, ow = pool3d_size(h, k, s, pad), pool3d_size(w, k, s, pad)
    y = np.empty((n, c, ol, oh, ow))
    for a, i, j in np.ndindex(ol, oh, ow):
        ls, hs, ws = a * st, i * s - pad, j * s - pad
        le = min(ls + kd, length)
        if method == pooling.MAX:
            he, we = min(hs + k, h), min(ws + k, w)
            win = x[:, :, ls:le, max(hs, 0):he, max(ws, 0):we]
            y[:, :, a, i, j] = win.max(axis=(2, 3, 4)) if win.size else -pooling._FLT_MAX
        else:
            he, we = min(hs + k, h + pad), min(ws + k, w + pad)
            size = (he - hs) * (we - ws) * (le - ls)
            win = x[:, :, ls:le, max(hs, 0):min(he, h), max(ws, 0):min(we, w)]
            y[:, :, a, i, j] = win.sum(axis=(2, 3, 4)) / size
    return [y]


LAYERS: dict[str, LayerFn] = {
    "Reduction": reduction,
    "Tile": tile,
    "Embed": embed,
    "Parameter": parameter,
    "BatchReindex": batch_reindex,
    "SPP": spp,
    "Convolution3D": convolution3d,
    "Pooling3D": pooling3d,
}
