"""Softmax (Caffe's softmax_layer.cpp): along `axis`, default 1 (not -1)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._util import Array, LayerFn, canonical_axis, f64, get


def softmax(layer: Any, inputs: list[Array]) -> list[Array]:
    """exp(x - max) / sum(exp(x - max)) along the axis."""
    x = f64(inputs[0])
    axis = canonical_axis(get(layer.param.softmax_param, "axis", 1), x.ndim)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


LAYERS: dict[str, LayerFn] = {"Softmax": softmax}
