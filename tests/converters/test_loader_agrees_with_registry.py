"""The loader and the converters agree: every layer type the loader infers shapes for has a
converter, and every converter's type has a shape rule, except the types the loader knows only
to refuse (with their reason)."""

from __future__ import annotations

import pytest

from caffe_bridge import converters, shapes
from caffe_bridge.converters.bvlc_extra import REFUSED
from caffe_bridge.errors import CaffeBridgeError
from layer_check import net_from_text

LOADER_ONLY = {"Input"}  # becomes a graph placeholder, not a module


def test_every_shape_rule_has_a_converter_and_vice_versa() -> None:
    known = set(shapes.known_types()) - LOADER_ONLY - set(REFUSED)
    registered = set(converters.REGISTRY.types())
    assert sorted(known - registered) == [], "loader knows these types, no converter converts them"
    assert sorted(registered - known) == [], "converters without a shape rule in the loader"


def test_refused_types_are_not_registered_converters() -> None:
    assert not set(REFUSED) & set(converters.REGISTRY.types())


@pytest.mark.parametrize("layer_type", sorted(REFUSED))
def test_refused_types_fail_at_load_with_their_reason(layer_type: str) -> None:
    text = ('name: "t"\nlayer { name: "in" type: "Input" top: "data" top: "sel" input_param { '
            'shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 } } }\n'
            f'layer {{ name: "l" type: "{layer_type}" bottom: "data" bottom: "sel" top: "o" }}\n')
    with pytest.raises(CaffeBridgeError) as err:
        net_from_text(text)
    assert REFUSED[layer_type] in str(err.value)
    assert "'l'" in str(err.value)
