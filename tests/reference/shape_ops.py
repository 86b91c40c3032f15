"""Data-movement layers: Input, Concat, Slice, Split, Flatten, Reshape, Crop, ArgMax."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np

from ._util import Array, LayerFn, canonical_axis, f64, get, has, num_tops, values


def input_layer(layer: Any, inputs: list[Array]) -> list[Array]:
    """Input: the fed arrays, one per top (run_net feeds them by top name)."""
    return [f64(x).copy() for x in inputs]


def concat(layer: Any, inputs: list[Array]) -> list[Array]:
    """Concatenate along `axis` (default 1); legacy `concat_dim` wins when set."""
    p = layer.param.concat_param
    xs = [f64(x) for x in inputs]
    axis = p.concat_dim if has(p, "concat_dim") else canonical_axis(get(p, "axis", 1), xs[0].ndim)
    for x in xs[1:]:
        if x.ndim != xs[0].ndim or any(
            a != b for i, (a, b) in enumerate(zip(x.shape, xs[0].shape, strict=True)) if i != axis
        ):
            raise ValueError(f"Concat shapes {[x.shape for x in xs]} differ off axis {axis}")
    return [np.concatenate(xs, axis=axis)]


def slice_layer(layer: Any, inputs: list[Array]) -> list[Array]:
    """Split along `axis` (default 1; legacy `slice_dim` wins) at slice_point, or equally."""
    p = layer.param.slice_param
    x = f64(inputs[0])
    axis = p.slice_dim if has(p, "slice_dim") else canonical_axis(get(p, "axis", 1), x.ndim)
    dim = x.shape[axis]
    points = [int(v) for v in values(p, "slice_point")]
    if points:
        tops = num_tops(layer, len(points) + 1)
        if len(points) != tops - 1:
            raise ValueError(f"{len(points)} slice points for {tops} tops")
        bounds = [0] + points + [dim]
        if any(b <= a for a, b in pairwise(bounds)):
            raise ValueError(f"slice points {points} do not split a dimension of {dim}")
    else:
        tops = num_tops(layer)
        if dim % tops:
            raise ValueError(f"dimension {dim} does not split equally into {tops} tops")
        bounds = [i * dim // tops for i in range(tops + 1)]
    return [np.take(x, np.arange(a, b), axis=axis) for a, b in pairwise(bounds)]


def split(layer: Any, inputs: list[Array]) -> list[Array]:
    """Copy the bottom to every top."""
    x = f64(inputs[0])
    return [x.copy() for _ in range(num_tops(layer))]


def flatten(layer: Any, inputs: list[Array]) -> list[Array]:
    """Merge axes axis..end_axis (defaults 1 and -1, both inclusive) into one."""
    p = layer.param.flatten_param
    x = f64(inputs[0])
    a = canonical_axis(get(p, "axis", 1), x.ndim)
    e = canonical_axis(get(p, "end_axis", -1), x.ndim)
    merged = int(np.prod(x.shape[a : e + 1], dtype=np.int64))
    return [x.reshape(x.shape[:a] + (merged,) + x.shape[e + 1 :])]


def reshape_shape(in_shape: tuple[int, ...], dims: list[int], axis: int, num_axes: int) -> tuple:
    """Caffe's Reshape output shape.

    dims replace in_shape[start:end] where start = axis (negative: ndim + axis + 1) and
    end = ndim when num_axes == -1 else start + num_axes; 0 copies the input dim at the same
    position (start + i); a single -1 is inferred from the element count.
    """
    ndim = len(in_shape)
    start = axis if axis >= 0 else ndim + axis + 1
    end = ndim if num_axes == -1 else start + num_axes
    if not 0 <= start <= end <= ndim:
        raise ValueError(f"reshape range [{start}, {end}) outside a {ndim}-D blob")
    if sum(d == -1 for d in dims) > 1:
        raise ValueError("at most one -1 in a Reshape shape")
    out = []
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= ndim:
                raise ValueError(f"dim 0 at {i} copies a missing input axis")
            out.append(in_shape[start + i])
        else:
            out.append(d)
    shape = list(in_shape[:start]) + out + list(in_shape[end:])
    if -1 in out:
        known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
        total = int(np.prod(in_shape, dtype=np.int64))
        if known == 0 or total % known:
            raise ValueError(f"cannot infer -1 reshaping {in_shape} to {shape}")
        shape[shape.index(-1)] = total // known
    if int(np.prod(shape, dtype=np.int64)) != int(np.prod(in_shape, dtype=np.int64)):
        raise ValueError(f"cannot reshape {in_shape} to {shape}")
    return tuple(shape)


def reshape(layer: Any, inputs: list[Array]) -> list[Array]:
    """Reshape with Caffe's 0 / -1 / axis / num_axes rules (data order unchanged)."""
    p = layer.param.reshape_param
    x = f64(inputs[0])
    dims = [int(d) for d in p.shape.dim]
    shape = reshape_shape(x.shape, dims, get(p, "axis", 0), get(p, "num_axes", -1))
    return [x.reshape(shape)]


def crop(layer: Any, inputs: list[Array]) -> list[Array]:
    """Crop bottom[0] to bottom[1]'s shape on axes >= axis (default 2), starting at offset.

    offset: none -> 0, one value -> every cropped axis, else one per cropped axis.
    """
    p = layer.param.crop_param
    x, ref = f64(inputs[0]), inputs[1]
    if x.ndim != ref.ndim:
        raise ValueError(f"Crop bottoms {x.shape} and {ref.shape} differ in rank")
    start = canonical_axis(get(p, "axis", 2), x.ndim)
    offsets = [int(v) for v in values(p, "offset")]
    if len(offsets) > 1 and len(offsets) != x.ndim - start:
        raise ValueError(f"{len(offsets)} crop offsets for {x.ndim - start} axes")
    idx = []
    for i in range(x.ndim):
        if i < start:
            idx.append(slice(None))
            continue
        off = 0 if not offsets else offsets[0 if len(offsets) == 1 else i - start]
        if x.shape[i] - off < ref.shape[i]:
            raise ValueError(f"crop on axis {i}: {x.shape[i]} - {off} < {ref.shape[i]}")
        idx.append(slice(off, off + ref.shape[i]))
    return [x[tuple(idx)].copy()]


def _top_k(v: Array, k: int) -> Array:
    """Indices of the k largest along the last axis, ordered as Caffe's partial_sort with
    std::greater on (value, index) pairs: larger value first, ties -> larger index first."""
    idx = np.broadcast_to(np.arange(v.shape[-1]), v.shape)
    return np.lexsort((-idx, -v), axis=-1)[..., :k]


def argmax(layer: Any, inputs: list[Array]) -> list[Array]:
    """ArgMax (indices as floats, as Caffe stores them).

    Without axis: per sample over all other dims flattened; top shape has max(ndim, 3) axes,
    (N, 1, top_k, 1, ...), or (N, 2, top_k, 1, ...) with out_max_val ([:, 0] indices,
    [:, 1] values). With axis: along it, top shape = bottom's with top_k on the axis, holding
    values when out_max_val else indices.
    """
    p = layer.param.argmax_param
    x = f64(inputs[0])
    k = get(p, "top_k", 1)
    out_val = get(p, "out_max_val", False)
    if has(p, "axis"):
        axis = canonical_axis(p.axis, x.ndim)
        if not 1 <= k <= x.shape[axis]:
            raise ValueError(f"top_k {k} outside 1..{x.shape[axis]}")
        v = np.moveaxis(x, axis, -1)
        idx = _top_k(v, k)
        res = np.take_along_axis(v, idx, axis=-1) if out_val else idx.astype(np.float64)
        return [np.moveaxis(res, -1, axis)]
    n = x.shape[0]
    v = x.reshape(n, -1)
    if not 1 <= k <= v.shape[1]:
        raise ValueError(f"top_k {k} outside 1..{v.shape[1]}")
    idx = _top_k(v, k)
    if out_val:
        res = np.stack([idx.astype(np.float64), np.take_along_axis(v, idx, axis=-1)], axis=1)
    else:
        res = idx.astype(np.float64)[:, None, :]
    shape = [n, res.shape[1], k] + [1] * (max(x.ndim, 3) - 3)
    return [res.reshape(shape)]


LAYERS: dict[str, LayerFn] = {
    "Input": input_layer,
    "Concat": concat,
    "Slice": slice_layer,
    "Split": split,
    "Flatten": flatten,
    "Reshape": reshape,
    "Crop": crop,
    "ArgMax": argmax,
}
