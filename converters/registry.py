"""The converter registry: one ``@register("Type", shape=rule)`` per Caffe layer type.

A converter is a pure function ``(layer, net) -> nn.Module`` holding only the mapping: the
registry locates its errors (file:line, layer, type) and owns the layer type's shape rule, so
adding a layer type is one decorated function. The supported-layers table (README,
``caffe2torch layers``) is generated from here.
"""

from __future__ import annotations

import functools
import importlib.metadata
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from google.protobuf import message as pb_message
from torch import nn

from caffe_bridge.errors import (
    CaffeBridgeError,
    CaffeBridgeWarning,
    ShapeError,
    UnsupportedLayerError,
)
from caffe_bridge.ir import Blob, Layer, Net, SourceLoc
from caffe_bridge.shapes import LayerShapes, Rule, Shape, ShapeRuleError, canonical_axis

Converter = Callable[[Layer, Net], nn.Module]
# Whether sample i of every top depends on sample i of the bottoms alone (axis 0 is the batch
# and is never mixed): True/False for the type, or a test of the layer's parameters.
PerSample = bool | Callable[[Layer, Net], bool]
# A fusion turns two consecutive layers (the second consuming the first's only top) into one
# module, or returns None when that would not be exact for these two layers.
Fusion = Callable[[Layer, Layer, Net], "nn.Module | None"]
ENTRY_POINT_GROUP = "caffe_bridge.converters"
BVLC = "BVLC"


def registry_key(layer_type: str, param: pb_message.Message) -> str:
    """The key a layer is registered under: its type, or ``Python:<module>.<layer>``."""
    if layer_type == "Python":
        pp = param.python_param
        return f"Python:{pp.module}.{pp.layer}"
    return layer_type


@dataclass(frozen=True)
class ConverterInfo:
    """One registered layer type: its converter, shape rule and where its semantics live."""

    type: str
    fn: Converter
    origin: str  # module that registered it
    shape: Rule | None = None  # None: tops inferred by running the module on meta tensors
    fork: str = BVLC
    per_sample: PerSample = False

    @property
    def summary(self) -> str:
        doc = (self.fn.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Registry:
    """Registry key (Caffe type) -> converter and shape rule; re-registration warns."""

    def __init__(self) -> None:
        self._by_type: dict[str, ConverterInfo] = {}
        self._fusions: dict[tuple[str, str], Fusion] = {}
        self._refused: dict[str, str] = {}  # registry key -> why it is not converted

    def register(self, *types: str, shape: Rule | None = None, fork: str = BVLC,
                 per_sample: PerSample = False) -> Callable[[Converter], Converter]:
        """Register a converter (and its shape rule) for Caffe layer ``types``.

        Without ``shape`` the tops' shapes come from running the module on meta tensors, which
        suits parameter-free layers; layers with weight blobs give a rule whose ``params`` are
        the blob shapes Caffe stores. ``fork`` names the Caffe fork whose source defines it.
        ``per_sample`` declares that the layer never mixes samples of a batch (see
        :meth:`per_sample`); undeclared types are assumed to mix them.
        """
        if not types:
            raise TypeError("register() needs at least one Caffe layer type")

        def deco(fn: Converter) -> Converter:
            for t in types:
                old = self._by_type.get(t)
                if old is not None and (old.fn.__module__, old.fn.__qualname__) != (
                        fn.__module__, fn.__qualname__):
                    warnings.warn(f"layer type {t!r}: converter {old.origin}.{old.fn.__name__} "
                                  f"replaced by {fn.__module__}.{fn.__name__}",
                                  CaffeBridgeWarning, stacklevel=2)
                self._by_type[t] = ConverterInfo(t, fn, fn.__module__, shape, fork, per_sample)
            return fn

        return deco

    def refuse(self, layer_type: str, reason: str) -> None:
        """Record that ``layer_type`` is deliberately not converted, and why (shown in errors)."""
        self._refused[layer_type] = reason

    def refused(self) -> dict[str, str]:
        """Registry key -> the reason it is not converted."""
        return dict(sorted(self._refused.items()))

    def register_fusion(self, first: str, second: str) -> Callable[[Fusion], Fusion]:
        """Register an exact fusion of a ``first`` layer followed by a ``second`` layer."""

        def deco(fn: Fusion) -> Fusion:
            self._fusions[(first, second)] = fn
            return fn

        return deco

    def fusion(self, first: str, second: str) -> Fusion | None:
        return self._fusions.get((first, second))

    def __contains__(self, layer_type: str) -> bool:
        return layer_type in self._by_type

    def __iter__(self) -> Iterator[ConverterInfo]:
        return iter(sorted(self._by_type.values(), key=lambda c: c.type))

    def types(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_type))

    def info(self, layer: Layer) -> ConverterInfo:
        """The registration for ``layer``, or an UnsupportedLayerError naming it and the options."""
        key = registry_key(layer.type, layer.param)
        info = self._by_type.get(key)
        if info is None and key in self._refused:
            raise _located(UnsupportedLayerError(self._refused[key]), layer)
        if info is None:
            raise _located(UnsupportedLayerError(
                f"no converter for layer type {layer.type!r}; supported types: "
                f"{', '.join(self.types())} (add one with caffe_bridge.register)"), layer)
        return info

    def per_sample(self, layer: Layer, net: Net) -> bool:
        """Whether ``layer`` computes each sample of the batch from that sample alone (so the
        batch may be run in parts); False for unknown types."""
        key = registry_key(layer.type, layer.param)
        info = self._by_type.get(key)
        rule = False if info is None else info.per_sample
        return rule if isinstance(rule, bool) else bool(rule(layer, net))

    def lookup(self, layer: Layer) -> Converter:
        return self.info(layer).fn

    def convert(self, layer: Layer, net: Net) -> nn.Module:
        """Run the converter for ``layer``; its errors carry the layer's location."""
        fn = self.lookup(layer)
        try:
            return fn(layer, net)
        except (CaffeBridgeError, ShapeRuleError) as err:
            located = _located(err, layer, net)
            if located is err:
                raise
            raise located from err

    def infer_shapes(self, param: pb_message.Message, in_shapes: Sequence[Shape]) -> LayerShapes:
        """Top and parameter-blob shapes of a layer (KeyError when no converter handles it)."""
        key = registry_key(param.type, param)
        if key in self._refused:
            raise UnsupportedLayerError(self._refused[key])
        info = self._by_type[key]
        if info.shape is not None:
            return info.shape(param, in_shapes)
        return _meta_shapes(info.fn, param, in_shapes)


def _located(err: Exception, layer: Layer, net: Net | None = None) -> CaffeBridgeError:
    """``err`` as a CaffeBridgeError located at ``layer`` (itself when it already names one)."""
    if isinstance(err, CaffeBridgeError) and err.layer is not None:
        return err
    kind = type(err) if isinstance(err, CaffeBridgeError) else ShapeError
    message = err.message if isinstance(err, CaffeBridgeError) else str(err)
    if isinstance(err, ShapeRuleError) and net is not None:
        message += f" (bottom shapes {[net.blobs[b].shape for b in layer.bottoms]})"
    return kind(message, **layer.error_kwargs())


def _meta_shapes(fn: Converter, param: pb_message.Message,
                 in_shapes: Sequence[Shape]) -> LayerShapes:
    """Tops of a rule-less layer: its module run on meta tensors (no parameter blobs)."""
    names = tuple(f"bottom{i}" for i in range(len(in_shapes)))
    blobs = {n: Blob(n, n, tuple(s), "") for n, s in zip(names, in_shapes, strict=True)}
    layer = Layer(param.name, param.type, names, tuple(param.top), param, (), (),
                  SourceLoc("<shape inference>"), names, tuple(param.top))
    net = Net("", (layer,), blobs, {}, ())
    module = fn(layer, net).to("meta")
    with torch.no_grad():
        out = module(*(torch.empty(s, device="meta") for s in in_shapes))
    outs = out if isinstance(out, tuple | list) else (out,)
    return LayerShapes(tuple(tuple(int(d) for d in t.shape) for t in outs))


def axis_past_batch(param: str, legacy: str | None = None) -> Callable[[Layer, Net], bool]:
    """A ``per_sample`` test: the layer's ``<param>.axis`` (``<param>.<legacy>`` when set) is
    not the batch axis of its first bottom."""

    def test(layer: Layer, net: Net) -> bool:
        p = getattr(layer.param, param)
        axis = getattr(p, legacy) if legacy and p.HasField(legacy) else p.axis
        try:
            return canonical_axis(axis, len(net.blobs[layer.bottoms[0]].shape)) != 0
        except ShapeRuleError:  # out of range: nothing is declared
            return False

    return test


REGISTRY = Registry()
register = REGISTRY.register
register_fusion = REGISTRY.register_fusion
refuse = REGISTRY.refuse


def lookup(layer: Layer) -> Converter:
    return REGISTRY.lookup(layer)


def supported_types() -> tuple[str, ...]:
    return REGISTRY.types()


@functools.cache
def load_plugins() -> tuple[str, ...]:
    """Import the modules of the ``caffe_bridge.converters`` entry-point group (once)."""
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as err:  # a broken plugin must not look like our bug
            raise CaffeBridgeError(f"converter plugin {ep.name!r} ({ep.value}) failed to "
                                   f"load: {err}") from err
        loaded.append(ep.name)
    return tuple(loaded)
