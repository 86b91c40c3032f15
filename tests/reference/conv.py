"""Convolution, Deconvolution and InnerProduct (Caffe's base_conv_layer / inner_product_layer).

Convolution: weight (num_output, C/group, *k), output (in + 2p - (d(k-1)+1)) // s + 1.
Deconvolution: weight (C, num_output/group, *k), output s(in-1) + d(k-1) + 1 - 2p; it is the
transpose of convolution (Caffe's col2im scatter), so each input pixel adds w * x at
position i*s - p + kk*d of the output.
Blobs are spatially N-D here (Caffe's own is too); the channel axis is `axis` (default 1) and
every axis before it is folded into the batch.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ._util import Array, LayerFn, blob, canonical_axis, f64, get, has, values


def spatial_params(p: Any, n_sp: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """kernel, stride, pad, dilation of a ConvolutionParameter for `n_sp` spatial axes.

    `_h`/`_w` fields (2-D only) win when set; otherwise a repeated field gives one value for
    every axis or one per axis; stride and dilation default to 1, pad to 0.
    """

    def per_axis(name: str, default: int | None) -> list[int]:
        stem = name.removesuffix("_size")  # kernel_size -> kernel_h / kernel_w
        if has(p, stem + "_h") or has(p, stem + "_w"):
            if n_sp != 2:
                raise ValueError(f"{stem}_h/{stem}_w need exactly 2 spatial axes")
            return [get(p, stem + "_h", default), get(p, stem + "_w", default)]
        vals = values(p, name)
        if not vals:
            if default is None:
                raise ValueError(f"{name} is required")
            return [default] * n_sp
        if len(vals) == 1:
            return [int(vals[0])] * n_sp
        if len(vals) != n_sp:
            raise ValueError(f"{name} has {len(vals)} values for {n_sp} spatial axes")
        return [int(v) for v in vals]

    kernel = per_axis("kernel_size", None)
    stride = per_axis("stride", 1)
    pad = per_axis("pad", 0)
    dilation = per_axis("dilation", 1)
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride):
        raise ValueError("kernel and stride must be positive")
    return kernel, stride, pad, dilation


def _fold(x: Array, axis: int) -> tuple[Array, tuple[int, ...]]:
    """Reshape to (batch, C, *spatial) with every axis before `axis` folded into batch."""
    lead = x.shape[:axis]
    return x.reshape((int(np.prod(lead, dtype=np.int64)),) + x.shape[axis:]), lead


def conv_nd(
    x: Array,
    w: Array,
    bias: Array | None,
    stride: list[int],
    pad: list[int],
    dilation: list[int],
    group: int,
) -> Array:
    """Caffe convolution on x (B, C, *S) with w (O, C/group, *K): im2col, then one GEMM."""
    b, c = x.shape[:2]
    sp = x.shape[2:]
    o = w.shape[0]
    kernel = w.shape[2:]
    if c % group or o % group or w.shape[1] != c // group:
        raise ValueError(f"weight {w.shape} does not fit {c} channels in {group} groups")
    out = [
        (s + 2 * p - (d * (k - 1) + 1)) // st + 1
        for s, p, d, k, st in zip(sp, pad, dilation, kernel, stride, strict=True)
    ]
    if any(v <= 0 for v in out):
        raise ValueError(f"convolution output size {out} is empty")
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    n_k = int(np.prod(kernel))
    cols = np.empty((b, c, n_k) + tuple(out), dtype=np.float64)
    # cols[:, :, j, *o] = xp[:, :, o*s + kk*d] for the j-th kernel offset kk (C-order over K).
    for j, kk in enumerate(itertools.product(*(range(k) for k in kernel))):
        idx = tuple(
            slice(q * d, q * d + st * (n - 1) + 1, st)
            for q, d, st, n in zip(kk, dilation, stride, out, strict=True)
        )
        cols[:, :, j] = xp[(slice(None), slice(None)) + idx]
    g = group
    cols = cols.reshape(b, g, (c // g) * n_k, -1)  # (B, G, Cg*K, O_sp)
    wg = w.reshape(g, o // g, (c // g) * n_k)  # (G, Og, Cg*K)
    y = np.matmul(wg[None], cols).reshape((b, o) + tuple(out))
    if bias is not None:
        y += bias.reshape((1, o) + (1,) * len(out))
    return y


def deconv_nd(
    x: Array,
    w: Array,
    bias: Array | None,
    stride: list[int],
    pad: list[int],
    dilation: list[int],
    group: int,
) -> Array:
    """Caffe deconvolution on x (B, C, *S) with w (C, O/group, *K): scatter-add (col2im)."""
    b, c = x.shape[:2]
    sp = x.shape[2:]
    kernel = w.shape[2:]
    g = group
    if c % g or w.shape[0] != c:
        raise ValueError(f"weight {w.shape} does not fit {c} channels in {g} groups")
    og = w.shape[1]
    o = og * g
    full = [
        st * (s - 1) + d * (k - 1) + 1
        for s, st, d, k in zip(sp, stride, dilation, kernel, strict=True)
    ]
    out = [f - 2 * p for f, p in zip(full, pad, strict=True)]
    if any(v <= 0 for v in out):
        raise ValueError(f"deconvolution output size {out} is empty")
    acc = np.zeros((b, g, og) + tuple(full), dtype=np.float64)
    xg = x.reshape(b, g, c // g, -1)  # (B, G, Cg, S)
    wg = w.reshape(g, c // g, og * int(np.prod(kernel)))  # (G, Cg, Og*K)
    # columns of every (output channel, kernel tap) pair: (B, G, Og, K, *S)
    cols = np.matmul(np.swapaxes(wg, 1, 2)[None], xg).reshape((b, g, og, -1) + tuple(sp))
    for j, kk in enumerate(itertools.product(*(range(k) for k in kernel))):
        # tap kk of input pixel i lands at i*s + kk*d of the uncropped output (col2im)
        idx = tuple(
            slice(q * d, q * d + st * (n - 1) + 1, st)
            for q, d, st, n in zip(kk, dilation, stride, sp, strict=True)
        )
        acc[(slice(None),) * 3 + idx] += cols[:, :, :, j]
    crop = tuple(slice(p, p + n) for p, n in zip(pad, out, strict=True))
    y = acc[(slice(None),) * 3 + crop].reshape((b, o) + tuple(out))
    if bias is not None:
        y = y + bias.reshape((1, o) + (1,) * len(out))
    return y


def _conv_common(layer: Any, x: Array, deconv: bool) -> Array:
    p = layer.param.convolution_param
    axis = canonical_axis(get(p, "axis", 1), x.ndim)
    xf, lead = _fold(x, axis)
    n_sp = xf.ndim - 2
    if n_sp < 1:
        raise ValueError("convolution needs at least one spatial axis")
    kernel, stride, pad, dilation = spatial_params(p, n_sp)
    group = get(p, "group", 1)
    num_output = p.num_output
    w = blob(layer, 0)
    c = xf.shape[1]
    wshape = (c, num_output // group) if deconv else (num_output, c // group)
    w = w.reshape(wshape + tuple(kernel))
    bias = blob(layer, 1).reshape(-1) if get(p, "bias_term", True) else None
    fn = deconv_nd if deconv else conv_nd
    y = fn(xf, w, bias, stride, pad, dilation, group)
    return y.reshape(lead + y.shape[1:])


def convolution(layer: Any, inputs: list[Array]) -> list[Array]:
    """Convolution; several bottoms share the weights (one top each), as in Caffe."""
    return [_conv_common(layer, f64(x), deconv=False) for x in inputs]


def deconvolution(layer: Any, inputs: list[Array]) -> list[Array]:
    """Deconvolution (transposed convolution); one top per bottom."""
    return [_conv_common(layer, f64(x), deconv=True) for x in inputs]


def inner_product(layer: Any, inputs: list[Array]) -> list[Array]:
    """InnerProduct: flatten from `axis` to K; y = x W^T + b with W (N, K), or x W if transpose."""
    p = layer.param.inner_product_param
    x = f64(inputs[0])
    axis = canonical_axis(get(p, "axis", 1), x.ndim)
    lead = x.shape[:axis]
    x2 = x.reshape(int(np.prod(lead, dtype=np.int64)), -1)
    n, k = p.num_output, x2.shape[1]
    if get(p, "transpose", False):
        y = x2 @ blob(layer, 0).reshape(k, n)
    else:
        y = x2 @ blob(layer, 0).reshape(n, k).T
    if get(p, "bias_term", True):
        y = y + blob(layer, 1).reshape(1, n)
    return [y.reshape(lead + (n,))]


LAYERS: dict[str, LayerFn] = {
    "Convolution": convolution,
    "Deconvolution": deconvolution,
    "InnerProduct": inner_product,
}
