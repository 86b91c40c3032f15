"""Axpy (SENet's custom layer): bottoms (a, X, Y), top = a * X + Y.

a is N x C x 1 x 1 (or N x C), one factor per sample and channel applied to every spatial
position of X; Y is the shortcut, added unscaled.
"""

from __future__ import annotations

from typing import Any

from ._util import Array, LayerFn, f64


def axpy(layer: Any, inputs: list[Array]) -> list[Array]:
    """a * X + Y with a broadcast over X's spatial axes."""
    if len(inputs) != 3:
        raise ValueError(f"Axpy needs 3 bottoms (a, X, Y), got {len(inputs)}")
    a, x, y = (f64(v) for v in inputs)
    if x.shape != y.shape:
        raise ValueError(f"Axpy X {x.shape} and Y {y.shape} differ")
    n, c = x.shape[:2]
    if a.size != n * c or a.shape[:2] != (n, c):
        raise ValueError(f"Axpy a {a.shape} must be N x C (x 1 x 1) for X {x.shape}")
    return [a.reshape((n, c) + (1,) * (x.ndim - 2)) * x + y]


LAYERS: dict[str, LayerFn] = {"Axpy": axpy}
