"""Helpers shared by the reference layer families: parameter access and axis handling.

Parameters are read with Caffe's defaults hard-coded here rather than trusted from the schema,
because schema copies disagree on defaults (the semantics notes mention `stride_h` defaulting
to 1 in some); presence is always tested with `HasField`, as Caffe's `has_*()` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Array = np.ndarray
LayerFn = Callable[[Any, list[np.ndarray]], list[np.ndarray]]


def has(msg: Any, name: str) -> bool:
    """True when `name` is a field of `msg` and was set (non-empty for repeated fields)."""
    field = msg.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        return False
    if _is_repeated(field):
        return len(getattr(msg, name)) > 0
    return msg.HasField(name)


def _is_repeated(field: Any) -> bool:
    rep = getattr(field, "is_repeated", None)
    if rep is not None:
        return bool(rep)
    return field.label == field.LABEL_REPEATED


def get(msg: Any, name: str, default: Any) -> Any:
    """Value of a scalar field when set, else Caffe's `default` (whatever the schema says)."""
    return getattr(msg, name) if has(msg, name) else default


def values(msg: Any, name: str) -> list[Any]:
    """Field values as a list: [] when unset; works for repeated and scalar fields alike."""
    if msg.DESCRIPTOR.fields_by_name.get(name) is None:
        return []
    field = msg.DESCRIPTOR.fields_by_name[name]
    if _is_repeated(field):
        return list(getattr(msg, name))
    return [getattr(msg, name)] if msg.HasField(name) else []


def canonical_axis(axis: int, ndim: int) -> int:
    """Caffe's Blob::CanonicalAxisIndex: negative axes count from the end."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-D blob")
    return axis + ndim if axis < 0 else axis


def f64(x: Array) -> Array:
    """Input as a float64 array (the reference computes in double precision)."""
    return np.asarray(x, dtype=np.float64)


def blob(layer: Any, i: int) -> Array:
    """The i-th parameter blob of a layer as float64; error if weights were not loaded."""
    blobs = tuple(getattr(layer, "blobs", ()) or ())
    if i >= len(blobs):
        raise ValueError(
            f"{layer.type} layer {getattr(layer, 'name', '?')!r} needs parameter blob {i}, "
            f"has {len(blobs)}"
        )
    return f64(blobs[i])


def num_tops(layer: Any, default: int = 1) -> int:
    """Number of tops of a layer (from `layer.tops` when present)."""
    tops: Sequence[str] | None = getattr(layer, "tops", None)
    return len(tops) if tops is not None else default
