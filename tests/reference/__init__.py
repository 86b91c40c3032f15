"""Independent pure-numpy Caffe forward reference (test phase), written from Caffe's CPU layers.

The spec as code: one small module per layer family, float64 throughout, no torch. Layers are
duck-typed: anything with `.type` (V2 type string), `.param` (a LayerParameter message),
`.blobs` (float32 arrays in Caffe shapes) and, for multi-top layers, `.tops`.

    run_layer(layer, inputs) -> list of tops
    run_net(net, inputs)     -> every value of an IR Net, by value name
    SUPPORTED                -> the layer types run_layer knows
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._util import LayerFn

# Every module of this package except the private ones is a layer family with a LAYERS table.
_FAMILIES = tuple(importlib.import_module(f"{__name__}.{m.name}")
                  for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def _dispatch() -> dict[str, LayerFn]:
    table: dict[str, LayerFn] = {}
    for mod in _FAMILIES:
        for name, fn in mod.LAYERS.items():
            if name in table:
                raise RuntimeError(f"layer type {name!r} defined twice")
            table[name] = fn
    return table


DISPATCH: dict[str, LayerFn] = _dispatch()
SUPPORTED: frozenset[str] = frozenset(DISPATCH)


def run_layer(layer: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run one layer on its bottoms (in order); returns its tops (in order), float64."""
    key = layer.type
    if key == "Python":  # Python layers are keyed by module and class, as in the registry
        key = f"Python:{layer.param.python_param.module}.{layer.param.python_param.layer}"
    fn = DISPATCH.get(key)
    if fn is None:
        raise NotImplementedError(f"reference has no layer type {key!r}")
    return fn(layer, list(inputs))


def run_net(net: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute `net.layers` in order; returns every value under its value name.

    Input layers take `inputs[caffe top name]` (the value name is accepted too).
    """
    vals: dict[str, np.ndarray] = {}
    for layer in net.layers:
        if layer.type == "Input":
            names = tuple(getattr(layer, "caffe_tops", None) or layer.tops)
            fed = []
            for caffe_name, value_name in zip(names, layer.tops, strict=True):
                key = caffe_name if caffe_name in inputs else value_name
                if key not in inputs:
                    raise KeyError(f"no input given for {caffe_name!r}")
                fed.append(inputs[key])
            outs = run_layer(layer, fed)
        else:
            missing = [b for b in layer.bottoms if b not in vals]
            if missing:
                raise KeyError(f"layer {layer.name!r} reads unknown values {missing}")
            outs = run_layer(layer, [vals[b] for b in layer.bottoms])
        if len(outs) != len(layer.tops):
            raise ValueError(
                f"layer {layer.name!r} produced {len(outs)} tops, expected {len(layer.tops)}"
            )
        vals.update(zip(layer.tops, outs, strict=True))
    return vals


__all__ = ["DISPATCH", "SUPPORTED", "run_layer", "run_net"]
