"""caffe_bridge.ir: how blob names become the graph's values, and weights for layers a
definition lacks (listed and reported, never silently dropped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from caffe_bridge import convert, load_net
from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.cli import main
from caffe_bridge.errors import CaffeBridgeWarning, CaffemodelError, ShapeError
from tests.helpers.layer_check import net_from_text

NET = """
input: "data" input_dim: 1 input_dim: 2 input_dim: 4 input_dim: 4
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 } }
"""


def _files(tmp_path: Path, weights: dict) -> tuple[Path, Path]:
    proto, model = tmp_path / "n.prototxt", tmp_path / "n.caffemodel"
    proto.write_text(NET)
    write_caffemodel(model, weights)
    return proto, model


def _ip() -> list[np.ndarray]:
    return [np.ones((3, 32), np.float32), np.zeros(3, np.float32)]


def test_unused_weights_are_listed_and_warned(tmp_path: Path) -> None:
    extra = {"ip": _ip(), "old_fc": [np.ones(2, np.float32)], "split": []}
    proto, model = _files(tmp_path, extra)
    net = load_net(proto, model)
    assert net.unused_weights == ("old_fc",)  # blob-less records (Caffe's Split) are tolerated
    with pytest.warns(CaffeBridgeWarning, match="old_fc"):
        convert(proto, model)
    result = CliRunner().invoke(main, ["convert", str(proto), str(model), "-o",
                                       str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "old_fc" in result.output


def test_missing_and_misshapen_weights_name_the_layer(tmp_path: Path) -> None:
    proto, model = _files(tmp_path, {"other": [np.ones(2, np.float32)]})
    with pytest.raises(CaffemodelError, match=r"layer 'ip' \(InnerProduct\): no weights"):
        load_net(proto, model)
    proto, model = _files(tmp_path, {"ip": [np.ones((3, 31), np.float32), np.zeros(3)]})
    with pytest.raises(ShapeError, match=r"n.prototxt:3: layer 'ip' .*\(3, 32\)"):
        load_net(proto, model)


def test_legacy_four_d_blobs_are_accepted(tmp_path: Path) -> None:
    legacy = [np.ones((1, 1, 3, 32), np.float32), np.zeros((1, 1, 1, 3), np.float32)]
    proto, model = _files(tmp_path, {"ip": legacy})
    layer = load_net(proto, model).layer("ip")
    assert [b.shape for b in layer.blobs] == [(3, 32), (3,)]


INPUT_X = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'


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
        net_from_text(INPUT_X + first + second + "\n")


def test_in_place_tops_become_new_values() -> None:
    net = net_from_text(INPUT_X + 'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n')
    assert net.layers[1].tops == ("x@1",) and net.outputs == ("x@1",)
