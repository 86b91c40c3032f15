"""The forks' normalisation layers: the custom "BN" in each published variant, and BVLC MVN.

BN variants (docs/SEMANTICS.md tells them apart; ``bn_variant`` is the rule):
  * "pspnet": hszhao/PSPNet src/caffe/layers/bn_layer.cpp (HEAD), identical forward in
    yjxiong/caffe (branch action_recog, TSN). Blobs slope, bias, mean, variance; at TEST
    (or frozen) y = (x - mean) * (var + eps)^-0.5 * slope + bias, eps default 1e-5.
  * "segnet": alexgkendall/caffe-segnet src/caffe/layers/bn_layer.cpp (same forward in
    TimoSaemann/caffe-enet). Blobs scale, shift. INFERENCE: y = scale * x + shift. LEARN (the
    default, also at TEST): batch statistics over N, H, W; var = E(x^2) - E(x)^2;
    y = (x - mean) / sqrt(var + 1e-9) * scale + shift.
  * "pspnet-initial": hszhao/PSPNet commit 88d0b3e (initial) bn_layer.cpp, from yjxiong's older
    caffe. Blobs scale, shift, mean, variance (channel axis 1 or 2). moving_average (default
    false) picks the stored statistics at TEST, else batch statistics var = E((x - E x)^2);
    y = (x - mean) / sqrt(var + var_eps) * scale + shift, var_eps default 1e-10.
MVN: BVLC src/caffe/layers/mvn_layer.cpp: mean over H*W (or C*H*W with across_channels);
with normalize_variance, y = (x - mean) / (sqrt(E((x - mean)^2)) + eps): eps is added to the
standard deviation, not to the variance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._util import Array, LayerFn, blob, f64, get, has

PSPNET_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")
SEGNET_FIELDS = ("bn_mode",)
INITIAL_FIELDS = ("var_eps", "moving_average", "decay", "axis")


def bn_variant(p: Any, n_blobs: int | None = None) -> str:
    """"pspnet", "segnet" or "pspnet-initial" from the bn_param fields set (and blob count)."""
    bp = p.bn_param
    found = {name for group in (PSPNET_FIELDS, SEGNET_FIELDS, INITIAL_FIELDS, ("scale_filler",
             "shift_filler")) for name in group if has(bp, name)}
    kinds = set()
    if found & set(PSPNET_FIELDS):
        kinds.add("pspnet")
    if found & set(SEGNET_FIELDS):
        kinds.add("segnet")
    if found & set(INITIAL_FIELDS):
        kinds.add("pspnet-initial")
    if len(kinds) > 1:
        raise ValueError(f"BN fields {sorted(found)} mix fork variants {sorted(kinds)}")
    if not kinds and found:  # scale_filler / shift_filler only: SegNet's or the initial's
        kinds.add("segnet" if n_blobs in (None, 2) else "pspnet-initial")
    if not kinds:  # no distinguishing field: the blob count decides, else PSPNet's
        kinds.add("segnet" if n_blobs == 2 else "pspnet")
    kind = kinds.pop()
    want = 2 if kind == "segnet" else 4
    if n_blobs is not None and n_blobs != want:
        raise ValueError(f"BN variant {kind!r} stores {want} blobs, the layer has {n_blobs}")
    return kind


def _per_channel(v: Array, ndim: int, axis: int = 1) -> Array:
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def bn(layer: Any, inputs: list[Array]) -> list[Array]:
    """The fork BN layer at test phase, variant chosen by :func:`bn_variant`."""
    x = f64(inputs[0])
    bp = layer.param.bn_param
    kind = bn_variant(layer.param, len(layer.blobs))
    axis = get(bp, "axis", 1) if kind == "pspnet-initial" else 1
    b = [_per_channel(blob(layer, i), x.ndim, axis) for i in range(len(layer.blobs))]
    if kind == "pspnet":
        return [(x - b[2]) * (b[3] + get(bp, "eps", 1e-5)) ** -0.5 * b[0] + b[1]]
    red = tuple(d for d in range(x.ndim) if d != axis)
    if kind == "segnet":
        if get(bp, "bn_mode", 0) == 1:
            return [b[0] * x + b[1]]
        mean = x.mean(axis=red, keepdims=True)
        var = (x * x).mean(axis=red, keepdims=True) - mean ** 2
        return [(x - mean) / np.sqrt(var + 1e-9) * b[0] + b[1]]
    if get(bp, "moving_average", False):
        mean, var = b[2], b[3]
    else:
        mean = x.mean(axis=red, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=red, keepdims=True)
    return [(x - mean) / np.sqrt(var + get(bp, "var_eps", 1e-10)) * b[0] + b[1]]


def mvn(layer: Any, inputs: list[Array]) -> list[Array]:
    """BVLC MVN: eps is added to the standard deviation."""
    p = layer.param.mvn_param
    x = f64(inputs[0])
    lead = 1 if get(p, "across_channels", False) else 2
    flat = x.reshape(int(np.prod(x.shape[:lead])), -1)
    y = flat - flat.mean(axis=1, keepdims=True)
    if get(p, "normalize_variance", True):
        std = np.sqrt((y * y).mean(axis=1, keepdims=True))
        y = y / (std + get(p, "eps", 1e-9))
    return [y.reshape(x.shape)]


LAYERS: dict[str, LayerFn] = {"BN": bn, "MVN": mvn}
