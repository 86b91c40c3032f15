"""Small numeric helpers shared by the package, the scripts and the tests (one copy each).

* :func:`f32`, :func:`f32_tensor`, :func:`f32_array`: values as the float32 Caffe holds them.
* :func:`rel_err`: the relative error every check and report uses.
* :data:`FLT_MAX`: C's ``FLT_MAX``, where Caffe's running maxima start (negated).
"""

from __future__ import annotations

import numpy as np
import torch

FLT_MAX = float(np.finfo(np.float32).max)


def f32(value: float) -> float:
    """A proto float field as the float32 Caffe holds (protobuf hands out the double)."""
    return float(np.float32(value))


def f32_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 CPU tensor holding a copy of ``array`` (a caffemodel blob)."""
    return torch.from_numpy(np.array(array, dtype=np.float32))


def f32_array(tensor: torch.Tensor) -> np.ndarray:
    """A float32 numpy copy of ``tensor`` (any device, detached), as a caffemodel blob."""
    return tensor.detach().to("cpu", torch.float32).numpy().copy()


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """``max|ours - ref| / max|ref|`` in float64 (the absolute error when ref is all zero).

    Different shapes, or NaNs in different places, give ``inf``; NaNs in the same places are
    ignored.
    """
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    nan = np.isnan(ours) | np.isnan(ref)
    if nan.any():
        if not np.array_equal(np.isnan(ours), np.isnan(ref)):
            return float("inf")
        ours, ref = ours[~nan], ref[~nan]
    if ref.size == 0:
        return 0.0
    diff = float(np.max(np.abs(ours - ref)))
    scale = float(np.max(np.abs(ref)))
    return diff / scale if scale else diff
