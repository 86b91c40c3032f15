"""Pooling (Caffe's pooling_layer.cpp, CPU path), 4-D blobs only as in Caffe.

Output size: ceil((H + 2p - k) / s) + 1 (CEIL, the default) or floor(...) + 1 (FLOOR); then,
only when some pad is non-zero, one less if the last window starts at or beyond H + p.
MAX: maximum over the window clipped to the image (padding never wins). AVE:
hend = min(hstart + k, H + p); divisor (hend - hstart) * (wend - wstart) taken BEFORE clipping
to the image, so padding counts and overhang past H + p does not.

Without padding the clip rule does not apply, so CEIL with stride > kernel can place the last
window wholly outside the image (e.g. k1 s3 on 5 -> 3 outputs; PyTorch gives 2): Caffe then
outputs -FLT_MAX (MAX) or 0 / (non-positive divisor), i.e. -0 or NaN (AVE). Reproduced here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._util import Array, LayerFn, f64, get, has, num_tops, values

MAX, AVE, STOCHASTIC = 0, 1, 2
_FLT_MAX = float(np.finfo(np.float32).max)


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Caffe's pooled extent along one axis, before the padding clip rule."""
    q = (size + 2 * pad - kernel) / stride
    return int(math.ceil(q) if ceil_mode else math.floor(q)) + 1


def pool2d(
    x: Array,
    method: int,
    kernel: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    pad: tuple[int, int] = (0, 0),
    ceil_mode: bool = True,
    extra: int = 0,
) -> Array:
    """Caffe MAX/AVE pooling of x (N, C, H, W), window by window.

    ``extra`` windows are added to both sizes before the clip rule: ChenYingpeng/caffe-yolov3's
    caffe_layers/pooling_layer/pooling_layer.cpp (Reshape) does so when kernel_h - stride_h is
    odd; its forward is BVLC's.
    """
    if x.ndim != 4:
        raise ValueError(f"Pooling needs a 4-D blob, got shape {x.shape}")
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    oh = pooled_size(h, kh, sh, ph, ceil_mode) + extra
    ow = pooled_size(w, kw, sw, pw, ceil_mode) + extra
    if ph or pw:
        # the last window must start strictly inside the image (or its top/left padding)
        if (oh - 1) * sh >= h + ph:
            oh -= 1
        if (ow - 1) * sw >= w + pw:
            ow -= 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"pooling output size {(oh, ow)} is empty")
    y = np.empty((n, c, oh, ow), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            if method == MAX:
                he, we = min(hs + kh, h), min(ws + kw, w)
                hs, ws = max(hs, 0), max(ws, 0)
                win = x[:, :, hs:he, ws:we]
                y[:, :, i, j] = win.max(axis=(2, 3)) if win.size else -_FLT_MAX
            elif method == AVE:
                he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                pool_size = (he - hs) * (we - ws)
                hs, ws = max(hs, 0), max(ws, 0)
                he, we = min(he, h), min(we, w)
                total = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) if he > hs and we > ws else 0.0
                with np.errstate(divide="ignore", invalid="ignore"):
                    y[:, :, i, j] = np.divide(total, pool_size)
            else:
                raise NotImplementedError(f"pooling method {method} (STOCHASTIC has no CPU path)")
    return y


def _hw(p: Any, name: str, default: int | None) -> tuple[int, int]:
    """(h, w) of a PoolingParameter field given as `name`, or `name_h` + `name_w`."""
    stem = name.removesuffix("_size")  # kernel_size -> kernel_h / kernel_w
    if has(p, stem + "_h") or has(p, stem + "_w"):
        return get(p, stem + "_h", default), get(p, stem + "_w", default)
    vals = values(p, name)  # scalar upstream; repeated in some N-D forks
    if not vals:
        if default is None:
            raise ValueError(f"pooling {name} is required")
        return default, default
    return (int(vals[0]), int(vals[-1] if len(vals) > 1 else vals[0]))


def ceil_mode_of(p: Any) -> bool:
    """CEIL unless FLOOR: the fork's `ceil_mode` bool wins when set, else `round_mode`."""
    if has(p, "ceil_mode"):
        return bool(p.ceil_mode)
    return get(p, "round_mode", 0) == 0


def pooling(layer: Any, inputs: list[Array]) -> list[Array]:
    """Pooling layer; MAX with two tops also gives Caffe's mask (pooling_layer.cpp)."""
    p = layer.param.pooling_param
    x = f64(inputs[0])
    if get(p, "global_pooling", False):
        kernel = (x.shape[2], x.shape[3])
    else:
        kernel = _hw(p, "kernel_size", None)
    stride = _hw(p, "stride", 1)
    pad = _hw(p, "pad", 0)
    if get(p, "global_pooling", False) and (pad != (0, 0) or stride != (1, 1)):
        raise ValueError("global pooling needs pad 0 and stride 1")
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise ValueError(f"pooling pad {pad} must be smaller than kernel {kernel}")
    method = get(p, "pool", MAX)
    extra = int(get(p, "odd_window_extra", False) and (kernel[0] - stride[0]) % 2 == 1)
    y = pool2d(x, method, kernel, stride, pad, ceil_mode_of(p), extra)
    if num_tops(layer) == 1:
        return [y]
    if method != MAX or num_tops(layer) != 2:
        raise ValueError("only MAX pooling has a second (mask) top")
    return [y, max_mask(x, y.shape[2:], kernel, stride, pad)]


def max_mask(x: Array, out: tuple[int, ...], kernel: tuple[int, int],
             stride: tuple[int, int], pad: tuple[int, int]) -> Array:
    """Caffe's MAX mask top (floats): flat index h * W + w of the window's first strict
    maximum over the image part (scan row by row from -FLT_MAX); -1 when nothing beats it.
    BVLC src/caffe/layers/pooling_layer.cpp; the same loop in alexgkendall/caffe-segnet and
    TimoSaemann/caffe-enet, whose Upsample consumes the mask."""
    n, c, h, w = x.shape
    mask = np.full((n, c, *out), -1.0)
    for i in range(out[0]):
        for j in range(out[1]):
            hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
            he, we = min(hs + kernel[0], h), min(ws + kernel[1], w)
            best = np.full((n, c), -_FLT_MAX)
            for hh in range(max(hs, 0), he):
                for ww in range(max(ws, 0), we):
                    v = x[:, :, hh, ww].astype(np.float32)
                    win = v > best
                    best = np.where(win, v, best)
                    mask[:, :, i, j] = np.where(win, hh * w + ww, mask[:, :, i, j])
    return mask


LAYERS: dict[str, LayerFn] = {"Pooling": pooling}
