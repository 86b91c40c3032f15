"""Resampling layers of the segmentation forks: Interp, Upsample (nearest and unpooling).

Interp: hszhao/PSPNet src/caffe/layers/interp_layer.cpp + src/caffe/util/interp.cpp
(George Papandreou's DeepLab v2 code). Upsample by a pooling mask: alexgkendall/caffe-segnet
src/caffe/layers/upsample_layer.cpp (TimoSaemann/caffe-enet has the same forward). Nearest
Upsample: eric612/MobileNet-YOLO src/caffe/layers/upsample_layer.cpp (the YOLO ports' layer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._util import Array, LayerFn, f64, get, has

F32 = np.float32


def interp_size(p: Any, h: int, w: int) -> tuple[int, int, int, int]:
    """(effective input h, w, output h, w) as InterpLayer::Reshape computes them."""
    beg, end = get(p, "pad_beg", 0), get(p, "pad_end", 0)
    if beg > 0 or end > 0:
        raise ValueError("Interp supports only non-positive pads (cropping)")
    he, we = h + beg + end, w + beg + end
    shrink, zoom = has(p, "shrink_factor"), has(p, "zoom_factor")
    if shrink and not zoom:
        s = p.shrink_factor
        oh, ow = (he - 1) // s + 1, (we - 1) // s + 1
    elif zoom and not shrink:
        z = p.zoom_factor
        oh, ow = he + (he - 1) * (z - 1), we + (we - 1) * (z - 1)
    elif has(p, "height") and has(p, "width"):
        oh, ow = p.height, p.width
    elif shrink and zoom:
        s, z = p.shrink_factor, p.zoom_factor
        oh, ow = (he - 1) // s + 1, (we - 1) // s + 1
        oh, ow = oh + (oh - 1) * (z - 1), ow + (ow - 1) * (z - 1)
    else:
        raise ValueError("Interp needs zoom_factor, shrink_factor or height and width")
    if min(he, we, oh, ow) <= 0:
        raise ValueError(f"Interp sizes must be positive: input {(he, we)}, output {(oh, ow)}")
    return he, we, oh, ow


def _axis_weights(n_in: int, n_out: int) -> tuple[Array, Array, Array]:
    """Source index, its +1 step (0 at the last row) and lambda, in float32 as the source."""
    if n_in == n_out:
        return np.arange(n_out), np.zeros(n_out, int), np.zeros(n_out)
    r = F32(n_in - 1) / F32(n_out - 1) if n_out > 1 else F32(0)
    pos = (F32(r) * np.arange(n_out, dtype=F32)).astype(F32)
    i0 = pos.astype(int)
    step = (i0 < n_in - 1).astype(int)
    lam = (pos - i0.astype(F32)).astype(np.float64)
    return i0, step, lam


def interp(layer: Any, inputs: list[Array]) -> list[Array]:
    """Bilinear with corner alignment over the input cropped by -pad_beg / -pad_end."""
    p = layer.param.interp_param
    x = f64(inputs[0])
    he, we, oh, ow = interp_size(p, x.shape[2], x.shape[3])
    beg = -get(p, "pad_beg", 0)
    x = x[:, :, beg:beg + he, beg:beg + we]
    hi, hs, hl = _axis_weights(he, oh)
    wi, ws, wl = _axis_weights(we, ow)
    y = np.empty(x.shape[:2] + (oh, ow))
    for a in range(oh):
        for b in range(ow):
            r0, r1 = hi[a], hi[a] + hs[a]
            c0, c1 = wi[b], wi[b] + ws[b]
            top = (1 - wl[b]) * x[:, :, r0, c0] + wl[b] * x[:, :, r0, c1]
            bot = (1 - wl[b]) * x[:, :, r1, c0] + wl[b] * x[:, :, r1, c1]
            y[:, :, a, b] = (1 - hl[a]) * top + hl[a] * bot
    return [y]


def unpool_size(p: Any, h: int, w: int) -> tuple[int, int]:
    """SegNet/ENet Upsample output size: upsample_h/_w, else H * scale - pad_out."""
    if has(p, "upsample_h") and has(p, "upsample_w"):
        return p.upsample_h, p.upsample_w
    if has(p, "scale_h") and not has(p, "scale"):
        sh, sw = p.scale_h, get(p, "scale_w", 0)
    elif not has(p, "scale_h") and not has(p, "scale_w"):
        sh = sw = get(p, "scale", 2)
    else:
        raise ValueError("Upsample needs upsample_h and upsample_w, or scale, or scale_h and "
                         "scale_w")
    if sh <= 1 or sw <= 1:
        raise ValueError("Upsample scales must be > 1")
    ph, pw = get(p, "pad_out_h", False), get(p, "pad_out_w", False)
    if (ph and sh != 2) or (pw and sw != 2):
        raise ValueError("pad_out_h / pad_out_w need scale 2")
    return h * sh - int(ph), w * sw - int(pw)


def upsample(layer: Any, inputs: list[Array]) -> list[Array]:
    """Two bottoms: scatter by the mask (later writes win); one bottom: nearest by scale."""
    p = layer.param.upsample_param
    x = f64(inputs[0])
    if len(inputs) == 1:
        s = get(p, "scale", 1)
        return [x.repeat(s, axis=-2).repeat(s, axis=-1)]
    mask = np.asarray(inputs[1])
    if mask.shape != x.shape or x.ndim != 4:
        raise ValueError(f"Upsample needs a 4-D bottom and a mask of its shape, got "
                         f"{x.shape} and {mask.shape}")
    oh, ow = unpool_size(p, x.shape[2], x.shape[3])
    n, c = x.shape[:2]
    y = np.zeros((n, c, oh * ow))
    idx = mask.reshape(n, c, -1).astype(np.int64)  # static_cast<int>: truncation
    flat = x.reshape(n, c, -1)
    for i in range(n):
        for j in range(c):
            for k in range(idx.shape[2]):
                if not 0 <= idx[i, j, k] < oh * ow:
                    raise ValueError(f"upsample index {idx[i, j, k]} out of range")
                y[i, j, idx[i, j, k]] = flat[i, j, k]
    return [y.reshape(n, c, oh, ow)]


LAYERS: dict[str, LayerFn] = {"Interp": interp, "Upsample": upsample}
