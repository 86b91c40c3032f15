"""caffe_bridge.ir: how a definition's blob names become the graph's values."""

from __future__ import annotations

import pytest

from caffe_bridge.errors import ShapeError
from layer_check import net_from_text

INPUT = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'


@pytest.mark.parametrize("second", [
    # a second Input of the same blob: the net had two inputs under one name (found by fuzzing)
    'layer { name: "in2" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }',
    'layer { name: "r" type: "ReLU" bottom: "y" top: "x" }',  # not in place: bottom is y
    'layer { name: "s" type: "Split" bottom: "x" top: "x" top: "x" }',  # top 1 is no bottom
])
def test_a_blob_made_by_two_layers_is_refused(second: str) -> None:
    """Caffe's AppendTop: 'Top blob produced by multiple sources' unless in place."""
    first = 'layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 1 dim: 2 } } }\n'
    with pytest.raises(ShapeError, match="multiple sources"):
        net_from_text(INPUT + first + second + "\n")


def test_in_place_tops_become_new_values() -> None:
    net = net_from_text(INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n')
    assert net.layers[1].tops == ("x@1",) and net.outputs == ("x@1",)
