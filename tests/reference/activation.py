"""Element-wise neuron layers: ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, Power, Exp, Log, BNLL,
Threshold, Dropout (test phase). One bottom, one top each.
"""

from __future__ import annotations

import ast
import math
from typing import Any

import numpy as np

from ._util import Array, LayerFn, blob, f64, get, has


def relu(layer: Any, inputs: list[Array]) -> list[Array]:
    """max(x, 0) + negative_slope * min(x, 0)."""
    x = f64(inputs[0])
    slope = get(layer.param.relu_param, "negative_slope", 0.0)
    return [np.maximum(x, 0) + slope * np.minimum(x, 0)]


def prelu(layer: Any, inputs: list[Array]) -> list[Array]:
    """max(x, 0) + a_c * min(x, 0); one slope if channel_shared, else one per channel (axis 1)."""
    x = f64(inputs[0])
    a = blob(layer, 0).reshape(-1)
    if get(layer.param.prelu_param, "channel_shared", False):
        slope: Array | float = float(a[0])
    else:
        c = x.shape[1] if x.ndim > 1 else 1
        if a.size != c:
            raise ValueError(f"PReLU slope has {a.size} values for {c} channels")
        slope = a.reshape((1, c) + (1,) * (x.ndim - 2)) if x.ndim > 1 else a
    return [np.maximum(x, 0) + slope * np.minimum(x, 0)]


def elu(layer: Any, inputs: list[Array]) -> list[Array]:
    """max(x, 0) + alpha * (exp(min(x, 0)) - 1)."""
    x = f64(inputs[0])
    alpha = get(layer.param.elu_param, "alpha", 1.0)
    return [np.maximum(x, 0) + alpha * (np.exp(np.minimum(x, 0)) - 1.0)]


def sigmoid(layer: Any, inputs: list[Array]) -> list[Array]:
    """1 / (1 + exp(-x)), evaluated without overflow and accurately for very negative x."""
    x = f64(inputs[0])
    e = np.exp(-np.abs(x))
    return [np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))]


def tanh(layer: Any, inputs: list[Array]) -> list[Array]:
    """tanh(x)."""
    return [np.tanh(f64(inputs[0]))]


def absval(layer: Any, inputs: list[Array]) -> list[Array]:
    """|x|."""
    return [np.abs(f64(inputs[0]))]


def power(layer: Any, inputs: list[Array]) -> list[Array]:
    """(shift + scale * x) ^ power; defaults power 1, scale 1, shift 0."""
    p = layer.param.power_param
    x = f64(inputs[0])
    pw, sc, sh = get(p, "power", 1.0), get(p, "scale", 1.0), get(p, "shift", 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if pw * sc == 0:  # Caffe's shortcut: a constant, 1 when power is 0 (even for inf/NaN x)
            return [np.full_like(x, 1.0 if pw == 0 else np.power(np.float64(sh), pw))]
        return [np.power(sh + sc * x, pw)]


def _base_log(base: float) -> float:
    if base == -1:
        return 1.0
    if base <= 0:
        raise ValueError(f"base must be strictly positive or -1 (e), got {base}")
    return math.log(base)


def exp(layer: Any, inputs: list[Array]) -> list[Array]:
    """base ^ (shift + scale * x); base -1 means e."""
    p = layer.param.exp_param
    x = f64(inputs[0])
    ln_base = _base_log(get(p, "base", -1.0))
    return [np.exp(ln_base * (get(p, "shift", 0.0) + get(p, "scale", 1.0) * x))]


def log(layer: Any, inputs: list[Array]) -> list[Array]:
    """log_base(shift + scale * x); base -1 means e."""
    p = layer.param.log_param
    x = f64(inputs[0])
    ln_base = _base_log(get(p, "base", -1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return [np.log(get(p, "shift", 0.0) + get(p, "scale", 1.0) * x) / ln_base]


def bnll(layer: Any, inputs: list[Array]) -> list[Array]:
    """log(1 + exp(x)) as Caffe evaluates it: x > 0 ? x + log(1 + exp(-x)) : log(1 + exp(x))."""
    x = f64(inputs[0])
    return [np.where(x > 0, x + np.log1p(np.exp(-np.abs(x))), np.log1p(np.exp(np.minimum(x, 0))))]


def threshold(layer: Any, inputs: list[Array]) -> list[Array]:
    """1 where x > threshold (strictly), else 0."""
    x = f64(inputs[0])
    t = get(layer.param.threshold_param, "threshold", 0.0)
    return [(x > t).astype(np.float64)]


def dropout(layer: Any, inputs: list[Array]) -> list[Array]:
    """Identity at test time (Caffe scales by 1/(1-ratio) while training).

    Forks with `scale_train: false` instead scale at test time: y = x * (1 - ratio).
    """
    p = layer.param.dropout_param
    x = f64(inputs[0])
    if has(p, "scale_train") and not p.scale_train:
        return [x * (1.0 - get(p, "dropout_ratio", 0.5))]
    return [x.copy()]


def spatial_dropout(layer: Any, inputs: list[Array]) -> list[Array]:
    """ENet's Python SpatialDropoutLayer at TEST: x * 1 / (1 - p).

    TimoSaemann/caffe-enet python/spatial_dropout.py, forward(): the non-TRAIN branch writes
    bottom * scale_ with scale_ = 1. / (1. - p) (p from the param_str dict); numpy multiplies
    the float32 blob by that factor rounded to float32.
    """
    cfg = ast.literal_eval(layer.param.python_param.param_str)
    if cfg["phase"] == "TRAIN":
        raise NotImplementedError("TRAIN phase drops channels at random")
    factor = float(np.float32(1.0 / (1.0 - float(cfg["p"]))))
    return [f64(inputs[0]) * factor]


LAYERS: dict[str, LayerFn] = {
    "Python:spatial_dropout.SpatialDropoutLayer": spatial_dropout,
    "ReLU": relu,
    "PReLU": prelu,
    "ELU": elu,
    "Sigmoid": sigmoid,
    "TanH": tanh,
    "AbsVal": absval,
    "Power": power,
    "Exp": exp,
    "Log": log,
    "BNLL": bnll,
    "Threshold": threshold,
    "Dropout": dropout,
}
