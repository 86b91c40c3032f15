"""The graph IR between parsing and conversion: small frozen dataclasses, and ``load_net``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from google.protobuf import message as pb_message

from caffe_bridge import shapes
from caffe_bridge.deploy import CreatedInput, DroppedLayer, given_input_shapes, to_deploy
from caffe_bridge.errors import (
    CaffeBridgeError,
    CaffeBridgeWarning,
    CaffemodelError,
    PrototxtError,
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
    dropped: tuple[DroppedLayer, ...] = ()  # training/evaluation layers left out (train/test)
    created_inputs: tuple[CreatedInput, ...] = ()  # inputs made from data layers
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
        """The layer named ``name`` (the last one, as Caffe's layer_by_name, if repeated)."""
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
            # Caffe's CopyTrainedLayersFrom copies every record in turn: the last one wins.
            warnings.warn(f"{os.fspath(caffemodel)}: layer {rec.name!r} appears twice with "
                          f"weights; the later record is used, as in Caffe",
                          CaffeBridgeWarning, stacklevel=3)
        if rec.blobs or rec.name not in weights:
            weights[rec.name] = tuple(rec.blobs)
    return weights


def _check_record(raw: RawLayer, source: str) -> dict[str, object]:
    """Name/type checks of one layer record; the location kwargs of its errors."""
    p = raw.param
    where: dict[str, object] = {"file": source, "line": raw.line, "layer": p.name,
                                "layer_type": p.type}
    if not p.name:
        raise PrototxtError("layer has no name", file=source, line=raw.line,
                            layer_type=p.type or None)
    if not p.type:
        raise PrototxtError("layer has no type", **where)  # type: ignore[arg-type]
    return where


def _warn_repeated_names(layers: Sequence[Layer], source: str) -> None:
    """One warning naming every layer name used more than once, with its lines."""
    lines: dict[str, list[str]] = {}
    for layer in layers:
        lines.setdefault(layer.name, []).append(str(layer.loc.line or "?"))
    repeated = {n: ls for n, ls in lines.items() if len(ls) > 1}
    if repeated:
        listed = "; ".join(f"{n!r} at lines {', '.join(ls)}" for n, ls in repeated.items())
        warnings.warn(f"{source}: layer names used more than once: {listed}. Caffe accepts "
                      f"this; weights of a name go to the first layer so named only (net.cpp "
                      f"CopyTrainedLayersFrom)", CaffeBridgeWarning, stacklevel=4)


def _infer(raw: RawLayer, in_shapes: list[tuple[int, ...]], where: dict) -> shapes.LayerShapes:
    p = raw.param
    try:
        result = shapes.infer(p, in_shapes)
    except KeyError:
        if p.type in shapes.known_types():
            raise
        raise _unsupported(p, where) from None
    except shapes.ShapeRuleError as err:
        raise ShapeError(f"{err} (bottom shapes {in_shapes})", **where) from err
    except CaffeBridgeError as err:  # raised by a converter run for its shapes
        if err.layer is not None:
            raise
        raise type(err)(err.message, **where) from err
    if len(result.tops) != len(p.top):
        raise ShapeError(f"{p.type} produces {len(result.tops)} top(s), the definition "
                         f"names {len(p.top)}", **where)
    return result


def _unsupported(p: pb_message.Message, where: dict) -> UnsupportedLayerError:
    if p.type == "Python":
        pp = p.python_param
        key = f"Python:{pp.module}.{pp.layer}"
        return UnsupportedLayerError(
            f"Python layer class {pp.layer!r} of module {pp.module!r} has no converter; "
            f"register one for {key!r} (caffe_bridge.converters.registry.register, "
            f"see the README's plugin section)", **where)
    return UnsupportedLayerError(
        f"layer type {p.type!r} is not supported; supported types: "
        f"{', '.join(sorted(shapes.known_types()))}", **where)


def _layer_weights(
    raw: RawLayer, result: shapes.LayerShapes, given: Sequence[np.ndarray] | None,
    first: bool, where: dict, source: str, weights_source: str, have_weights: bool,
) -> tuple[np.ndarray, ...]:
    """The blobs of one layer, checked against Caffe's shapes (by name, first layer of a name)."""
    if given is not None and len(given) and first:
        if not result.params:
            raise ShapeError(f"the weights file has {len(given)} blob(s) for this layer, "
                             f"which takes none", **where)
        if len(given) != len(result.params):
            raise ShapeError(f"the weights file has {len(given)} blob(s), Caffe expects "
                             f"{len(result.params)} {list(result.params)}", **where)
        return tuple(_normalise_blob(np.asarray(a), s, i, raw, source)
                     for i, (a, s) in enumerate(zip(given, result.params, strict=False)))
    if have_weights and result.params:
        if given is not None and len(given):
            raise CaffemodelError(
                "a second layer of this name: Caffe copies the weights of a name into the "
                "first layer so named only, and leaves this one at its random initialisation, "
                "which cannot be reproduced; rename one of the layers", **where)
        raise CaffemodelError(f"no weights for this layer in {weights_source}", **where)
    return ()


class _Values:
    """Caffe blob names -> unique value names (in-place tops get ``name@k``)."""

    def __init__(self) -> None:
        self.last: dict[str, str] = {}
        self.versions: dict[str, int] = {}
        self.blobs: dict[str, Blob] = {}

    def new(self, top: str, shape: tuple[int, ...], producer: str) -> str:
        if top in self.last:
            self.versions[top] = self.versions.get(top, 0) + 1
            value = f"{top}@{self.versions[top]}"
            while value in self.blobs:
                self.versions[top] += 1
                value = f"{top}@{self.versions[top]}"
        else:
            value = top
        self.blobs[value] = Blob(value, top, tuple(int(d) for d in shape), producer)
        self.last[top] = value
        return value


def _check_tops(p: pb_message.Message, known: Mapping[str, str], where: dict) -> None:
    """Caffe's AppendTop: a top may reuse a blob name only in place (top k is bottom k);
    otherwise the blob is "produced by multiple sources", a fatal error."""
    seen: set[str] = set()
    for k, t in enumerate(p.top):
        in_place = k < len(p.bottom) and p.bottom[k] == t
        if (t in known or t in seen) and not in_place:
            raise ShapeError(f"top blob {t!r} produced by multiple sources (only an in-place "
                             f"top, the same name as the bottom at its index, may reuse a name)",
                             **where)
        seen.add(t)


def build_net(
    raw_layers: Sequence[RawLayer],
    *,
    name: str = "",
    source: str = "<string>",
    weights: Mapping[str, Sequence[np.ndarray]] | None = None,
    weights_source: str = "<weights>",
    hidden: frozenset[str] = frozenset(),
    dropped: tuple[DroppedLayer, ...] = (),
    created_inputs: tuple[CreatedInput, ...] = (),
) -> Net:
    """Rename in-place tops, infer shapes and attach weights (by layer name, as Caffe).

    ``hidden`` names Caffe blobs that are not outputs even when no layer reads them (blobs a
    dropped ``Silence`` layer read).
    """
    values = _Values()
    layers: list[Layer] = []
    seen_names: set[str] = set()
    consumed: set[str] = set()
    inputs: dict[str, tuple[int, ...]] = {}
    weights = weights or {}
    for raw in raw_layers:
        p = raw.param
        where = _check_record(raw, source)
        first = p.name not in seen_names
        seen_names.add(p.name)
        bottoms: list[str] = []
        for b in p.bottom:
            if b not in values.last:
                raise ShapeError(f"bottom {b!r} is not produced by any earlier layer", **where)
            bottoms.append(values.last[b])
        consumed.update(bottoms)
        _check_tops(p, values.last, where)
        result = _infer(raw, [values.blobs[b].shape for b in bottoms], where)
        tops = [values.new(t, shape, p.name) for t, shape in zip(p.top, result.tops, strict=True)]
        if p.type == "Input":
            for t, value in zip(p.top, tops, strict=True):
                inputs[t] = values.blobs[value].shape
        layer_blobs = _layer_weights(raw, result, weights.get(p.name), first, where, source,
                                     weights_source, bool(weights))
        layers.append(Layer(p.name, p.type, tuple(bottoms), tuple(tops), p, layer_blobs,
                            tuple(result.params), SourceLoc(source, raw.line),
                            tuple(p.bottom), tuple(p.top)))
    _warn_repeated_names(layers, source)
    blobs = values.blobs
    unread = tuple(v for v in blobs if v not in consumed and blobs[v].producer
                   and not _is_input(layers, v))
    # Blobs only a dropped Silence read are no outputs, as in Caffe, unless nothing else is
    # (colorization's deploy net silences its only result).
    outputs = tuple(v for v in unread if blobs[v].caffe_name not in hidden) or unread
    unused = tuple(n for n, b in weights.items() if n not in seen_names and len(b))
    by_name = {layer.name: layer for layer in layers}
    return Net(name, tuple(layers), MappingProxyType(blobs), MappingProxyType(inputs), outputs,
               unused, source, dropped, created_inputs, MappingProxyType(dict(values.last)),
               MappingProxyType(by_name))


def _is_input(layers: Sequence[Layer], value: str) -> bool:
    return any(layer.type == "Input" and value in layer.tops for layer in layers)


def load_net(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | None = None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Net:
    """Parse a definition (any generation, deploy or train/test), upgrade it, infer shapes,
    attach weights.

    ``input_shapes`` maps input (or data layer top) names to shapes; it is needed for data
    layers whose parameters do not state their shape, and overrides stated shapes.
    """
    parsed = parse_prototxt(prototxt)
    form = to_deploy(upgrade(parsed), parsed.path, given_input_shapes(input_shapes))
    weights = _read_weights(caffemodel)
    return build_net(form.layers, name=parsed.net.name, source=parsed.path, weights=weights,
                     weights_source=os.fspath(caffemodel) if caffemodel else "<weights>",
                     hidden=form.hidden, dropped=form.dropped, created_inputs=form.created)


def with_weights(net: Net, weights: Mapping[str, Sequence[np.ndarray]]) -> Net:
    """A copy of ``net`` whose layers named in ``weights`` carry those blobs (shape-checked)."""
    import dataclasses

    layers = []
    seen: set[str] = set()
    for layer in net.layers:
        given = weights.get(layer.name) if layer.name not in seen else None
        seen.add(layer.name)
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
