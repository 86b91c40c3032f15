"""Eltwise (Caffe's eltwise_layer.cpp): PROD, SUM with optional per-bottom coeff, MAX."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._util import Array, LayerFn, f64, get, values

PROD, SUM, MAX = 0, 1, 2


def eltwise(layer: Any, inputs: list[Array]) -> list[Array]:
    """Combine equally shaped bottoms; SUM is sum_i coeff_i * x_i with coeff default all 1."""
    p = layer.param.eltwise_param
    xs = [f64(x) for x in inputs]
    if len(xs) < 2:
        raise ValueError("Eltwise needs at least two bottoms")
    if any(x.shape != xs[0].shape for x in xs):
        raise ValueError(f"Eltwise bottoms differ in shape: {[x.shape for x in xs]}")
    op = get(p, "operation", SUM)
    coeff = values(p, "coeff")
    if coeff and len(coeff) != len(xs):
        raise ValueError("Eltwise takes one coeff per bottom")
    if coeff and op == PROD:
        raise ValueError("Eltwise PROD takes no coeff")  # MAX accepts and ignores them
    if op == PROD:
        y = xs[0].copy()
        for x in xs[1:]:
            y = y * x
    elif op == SUM:
        coeff = coeff or [1.0] * len(xs)
        y = np.zeros_like(xs[0])
        for c, x in zip(coeff, xs, strict=True):
            y = y + c * x
    elif op == MAX:
        y = xs[0].copy()
        for x in xs[1:]:
            y = np.maximum(y, x)
    else:
        raise ValueError(f"unknown Eltwise operation {op}")
    return [y]


LAYERS: dict[str, LayerFn] = {"Eltwise": eltwise}
