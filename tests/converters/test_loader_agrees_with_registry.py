"""The loader and the converters agree: the layer types that load are exactly the registered
converters' (plus Input), every registered type infers its shapes, and Clip / Swish, which the
loader once knew without a converter, convert. Filter is refused."""

from __future__ import annotations

import pytest

from caffe_bridge import converters, shapes
from caffe_bridge.build import build_module
from caffe_bridge.errors import UnsupportedLayerError
from tests.helpers.layer_check import layer_text as one
from tests.helpers.layer_check import net_from_text, net_text


def test_loader_types_are_the_registered_converters() -> None:
    assert set(shapes.known_types()) == {"Input", *converters.REGISTRY.types()}


@pytest.mark.parametrize("body", ['type: "Clip" clip_param { min: -1 max: 1 }', 'type: "Swish"'])
def test_clip_and_swish_load_and_convert(body: str) -> None:
    layer = one(body.split('"')[1], body.split('"', 2)[2].strip())
    build_module(net_from_text(net_text(layer, (1, 2, 3, 3))))


def test_refused_types_are_not_registered() -> None:
    refused = converters.REGISTRY.refused()
    assert {"Filter", "Region"} <= set(refused)
    assert not set(refused) & set(converters.REGISTRY.types())


@pytest.mark.parametrize("layer_type", ["Filter", "Region"])
def test_refused_types_fail_at_load_with_their_reason(layer_type: str) -> None:
    text = net_text(one(layer_type, n_bottoms=2), (2, 3), (2, 1))
    with pytest.raises(UnsupportedLayerError) as info:
        net_from_text(text)
    assert str(info.value).startswith(f"<test>:3: layer 'l' ({layer_type}): ")
    assert info.value.message == converters.REGISTRY.refused()[layer_type]


def test_training_only_python_layers_name_the_reason() -> None:
    text = net_text(one("Python", 'python_param { module: "rpn.anchor_target_layer" '
                                  'layer: "AnchorTargetLayer" }', n_bottoms=2), (2, 3), (2, 1))
    with pytest.raises(UnsupportedLayerError, match="training layer.*test.prototxt"):
        net_from_text(text)
