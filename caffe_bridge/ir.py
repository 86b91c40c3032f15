"""The graph IR between parsing and conversion: small frozen dataclasses, and ``load_net``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from google.protobuf import message as pb_message

from caffe_bridge import shapes
from caffe_bridge.errors import (
    CaffeBridgeError,
    CaffemodelError,
    ShapeError,
    UnsupportedLayerError,
)
from caffe_bridge.prototxt import parse_prototxt
from caffe_bridge.upgrade import RawLayer, upgrade


@dataclass(frozen=True)
class SourceLoc:
    """Where a layer was defined."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass(frozen=True)
class Blob:
    """One value of the graph. In-place layers make new values of the same Caffe blob."""

    name: str  # unique; == caffe_name for the first producer, then "caffe_name@1", ...
    caffe_name: str
    shape: tuple[int, ...]
    producer: str  # layer name


@dataclass(frozen=True, eq=False)
class Layer:
    """One Caffe layer, upgraded to V2, with unique value names for bottoms and tops."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    param: pb_message.Message  # schema.LayerParameter, read-only by convention
    blobs: tuple[np.ndarray, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    loc: SourceLoc
    caffe_bottoms: tuple[str, ...] = ()
    caffe_tops: tuple[str, ...] = ()

    def error_kwargs(self) -> dict[str, object]:
        """Keyword arguments locating an error at this layer."""
        return {"file": self.loc.file, "line": self.loc.line, "layer": self.name,
                "layer_type": self.type}


@dataclass(frozen=True)
class Net:
    """A whole definition, in execution order."""

    name: str
    layers: tuple[Layer, ...]
    blobs: Mapping[str, Blob]
    inputs: Mapping[str, tuple[int, ...]]
    outputs: tuple[str, ...]
    unused_weights: tuple[str, ...] = ()
    source: str = "<string>"
    _last_value: Mapping[str, str] = field(default_factory=dict, repr=False)
    _by_name: Mapping[str, Layer] = field(default_factory=dict, repr=False)

    def value(self, caffe_name: str) -> str:
        """The value name a Caffe blob name refers to: its value after the last in-place writer."""
        try:
            return self._last_value[caffe_name]
        except KeyError:
            raise ShapeError(f"no blob named {caffe_name!r} in the net",
                             file=self.source) from None

    def layer(self, name: str) -> Layer:
        try:
            return self._by_name[name]
        except KeyError:
            raise ShapeError(f"no layer named {name!r} in the net", file=self.source) from None

    @property
    def has_weights(self) -> bool:
        return any(layer.blobs for layer in self.layers)


def _normalise_blob(
    arr: np.ndarray, expected: tuple[int, ...], i: int, layer: RawLayer, path: str
) -> np.ndarray:
    """Check one weight blob against Caffe's expected shape (legacy 4-D shapes accepted)."""
    if tuple(arr.shape) == expected:
        return arr
    squeezed = tuple(d for d in arr.shape if d != 1)
    want = tuple(d for d in expected if d != 1)
    if arr.size == int(np.prod(expected)) and squeezed == want:
        return arr.reshape(expected)  # legacy (1, 1, N, K) style blob
    raise ShapeError(
        f"weight blob {i} has shape {tuple(arr.shape)}, Caffe expects {expected}",
        file=path, line=layer.line, layer=layer.param.name, layer_type=layer.param.type,
    )


def _read_weights(caffemodel: str | os.PathLike[str] | None) -> dict[str, tuple[np.ndarray, ...]]:
    if caffemodel is None:
        return {}
    from caffe_bridge.caffemodel import read_caffemodel_layers

    weights: dict[str, tuple[np.ndarray, ...]] = {}
    for rec in read_caffemodel_layers(caffemodel):
        if rec.name in weights and weights[rec.name] and rec.blobs:
            raise CaffemodelError(f"layer {rec.name!r} appears twice with weights",
                                  file=os.fspath(caffemodel))
        if rec.blobs or rec.name not in weights:
            weights[rec.name] = tuple(rec.blobs)
    return weights


def build_net(
    raw_layers: Sequence[RawLayer],
    *,
    name: str = "",
    source: str = "<string>",
    weights: Mapping[str, Sequence[np.ndarray]] | None = None,
    weights_source: str = "<weights>",
) -> Net:
    """Rename in-place tops, infer shapes and attach weights (by layer name)."""
    last: dict[str, str] = {}  # caffe blob name -> current value name
    versions: dict[str, int] = {}
    blobs: dict[str, Blob] = {}
    layers: list[Layer] = []
    seen_names: set[str] = set()
    consumed: set[str] = set()
    inputs: dict[str, tuple[int, ...]] = {}
    weights = weights or {}
    for raw in raw_layers:
        p = raw.param
        loc = SourceLoc(source, raw.line)
        where = {"file": source, "line": raw.line, "layer": p.name, "layer_type": p.type}
        if not p.name:
            raise ShapeError("layer has no name", file=source, line=raw.line,
                             layer_type=p.type or None)
        if p.name in seen_names:
            raise ShapeError("duplicate layer name", **where)
        seen_names.add(p.name)
        if not p.type:
            raise ShapeError("layer has no type", **where)
        bottoms: list[str] = []
        for b in p.bottom:
            if b not in last:
                raise ShapeError(f"bottom {b!r} is not produced by any earlier layer", **where)
            bottoms.append(last[b])
        consumed.update(bottoms)
        in_shapes = [blobs[b].shape for b in bottoms]
        try:
            result = shapes.infer(p, in_shapes)
        except KeyError:
            if p.type in shapes.known_types():
                raise
            raise UnsupportedLayerError(
                f"layer type {p.type!r} is not supported; supported types: "
                f"{', '.join(sorted(shapes.known_types()))}", **where,
            ) from None
        except shapes.ShapeRuleError as err:
            raise ShapeError(f"{err} (bottom shapes {in_shapes})", **where) from err
        except CaffeBridgeError as err:  # raised by a converter run for its shapes
            if err.layer is not None:
                raise
            raise type(err)(err.message, **where) from err
        if len(result.tops) != len(p.top):
            raise ShapeError(f"{p.type} produces {len(result.tops)} top(s), the definition "
                             f"names {len(p.top)}", **where)
        tops: list[str] = []
        for t, shape in zip(p.top, result.tops, strict=True):
            if t in last:
                versions[t] = versions.get(t, 0) + 1
                value = f"{t}@{versions[t]}"
                while value in blobs:
                    versions[t] += 1
                    value = f"{t}@{versions[t]}"
            else:
                value = t
            blobs[value] = Blob(value, t, tuple(int(d) for d in shape), p.name)
            last[t] = value
            tops.append(value)
        if p.type == "Input":
            for t, value in zip(p.top, tops, strict=True):
                inputs[t] = blobs[value].shape
        layer_blobs: tuple[np.ndarray, ...] = ()
        given = weights.get(p.name)
        if given is not None and len(given):
            if not result.params:
                raise ShapeError(f"the weights file has {len(given)} blob(s) for this layer, "
                                 f"which takes none", **where)
            if len(given) != len(result.params):
                raise ShapeError(f"the weights file has {len(given)} blob(s), Caffe expects "
                                 f"{len(result.params)} {list(result.params)}", **where)
            layer_blobs = tuple(_normalise_blob(np.asarray(a), s, i, raw, source)
                                for i, (a, s) in enumerate(zip(given, result.params, strict=False)))
        elif weights and result.params:
            raise CaffemodelError(f"no weights for this layer in {weights_source}", **where)
        layers.append(Layer(p.name, p.type, tuple(bottoms), tuple(tops), p, layer_blobs,
                            tuple(result.params), loc, tuple(p.bottom), tuple(p.top)))
    outputs = tuple(v for v in blobs if v not in consumed and blobs[v].producer
                    and not _is_input(layers, v))
    unused = tuple(n for n, b in weights.items() if n not in seen_names and len(b))
    by_name = {layer.name: layer for layer in layers}
    return Net(name, tuple(layers), MappingProxyType(blobs), MappingProxyType(inputs), outputs,
               unused, source, MappingProxyType(dict(last)), MappingProxyType(by_name))


def _is_input(layers: Sequence[Layer], value: str) -> bool:
    return any(layer.type == "Input" and value in layer.tops for layer in layers)


def load_net(
    prototxt: str | os.PathLike[str], caffemodel: str | os.PathLike[str] | None = None
) -> Net:
    """Parse a definition (any generation), upgrade it, infer shapes, attach weights."""
    parsed = parse_prototxt(prototxt)
    raw = upgrade(parsed)
    weights = _read_weights(caffemodel)
    return build_net(raw, name=parsed.net.name, source=parsed.path, weights=weights,
                     weights_source=os.fspath(caffemodel) if caffemodel else "<weights>")


def with_weights(net: Net, weights: Mapping[str, Sequence[np.ndarray]]) -> Net:
    """A copy of ``net`` whose layers named in ``weights`` carry those blobs (shape-checked)."""
    import dataclasses

    layers = []
    for layer in net.layers:
        given = weights.get(layer.name)
        if given is None:
            layers.append(layer)
            continue
        if len(given) != len(layer.param_shapes):
            raise ShapeError(f"{len(given)} blob(s) given, Caffe expects "
                             f"{len(layer.param_shapes)}", **layer.error_kwargs())
        raw = RawLayer(layer.param, layer.loc.line)
        blobs = tuple(_normalise_blob(np.asarray(a, dtype=np.float32), s, i, raw, net.source)
                      for i, (a, s) in enumerate(zip(given, layer.param_shapes, strict=False)))
        layers.append(dataclasses.replace(layer, blobs=blobs))
    by_name = {layer.name: layer for layer in layers}
    return dataclasses.replace(net, layers=tuple(layers), _by_name=MappingProxyType(by_name))
