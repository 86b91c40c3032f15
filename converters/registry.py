"""The converter registry: ``@register("Type", ...)`` on a pure function ``(layer, net) -> Module``.

The supported-layers table (README, ``caffe2torch layers``) is generated from here.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

from caffe_bridge.errors import CaffeBridgeError, UnsupportedLayerError
from caffe_bridge.ir import Layer, Net

Converter = Callable[[Layer, Net], nn.Module]
# A fusion turns two consecutive layers (the second consuming the first's only top) into one
# module, or returns None when that would not be exact for these two layers.
Fusion = Callable[[Layer, Layer, Net], "nn.Module | None"]
ENTRY_POINT_GROUP = "caffe_bridge.converters"


@dataclass(frozen=True)
class ConverterInfo:
    """One registered converter: the Caffe type it handles and the function doing it."""

    type: str
    fn: Converter
    origin: str  # module that registered it

    @property
    def summary(self) -> str:
        doc = (self.fn.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Registry:
    """Caffe layer type -> converter. Later registrations of a type replace earlier ones."""

    def __init__(self) -> None:
        self._by_type: dict[str, ConverterInfo] = {}
        self._fusions: dict[tuple[str, str], Fusion] = {}

    def register(self, *types: str) -> Callable[[Converter], Converter]:
        if not types:
            raise TypeError("register() needs at least one Caffe layer type")

        def deco(fn: Converter) -> Converter:
            for t in types:
                self._by_type[t] = ConverterInfo(t, fn, fn.__module__)
            return fn

        return deco

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

    def lookup(self, layer: Layer) -> Converter:
        """The converter for ``layer``, or an UnsupportedLayerError naming it and the options."""
        info = self._by_type.get(layer.type)
        if info is None:
            raise UnsupportedLayerError(
                f"no converter for layer type {layer.type!r}; supported types: "
                f"{', '.join(self.types())} (add one with caffe_bridge.register)",
                **layer.error_kwargs(),
            )
        return info.fn

    def convert(self, layer: Layer, net: Net) -> nn.Module:
        """Run the converter for ``layer``; its errors carry the layer's location."""
        fn = self.lookup(layer)
        try:
            return fn(layer, net)
        except CaffeBridgeError as err:
            if err.layer is None:
                raise type(err)(err.message, **layer.error_kwargs()) from None
            raise


REGISTRY = Registry()
register = REGISTRY.register
register_fusion = REGISTRY.register_fusion


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
