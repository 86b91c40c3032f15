"""Prototxt reading: every generation and header style to one form, errors with file:line."""

from __future__ import annotations

import pytest

from caffe_bridge import load_net
from caffe_bridge.errors import PrototxtError, ShapeError, UnsupportedLayerError
from caffe_bridge.prototxt import parse_prototxt_text
from caffe_bridge.upgrade import upgrade
from tests.helpers.layer_check import net_from_text

V1_ALEXNET_HEAD = """
name: "v1net"
input: "data"
input_dim: 2
input_dim: 3
input_dim: 35
input_dim: 35
layers {
  name: "conv1"
  type: CONVOLUTION
  bottom: "data"
  top: "conv1"
  blobs_lr: 1
  convolution_param { num_output: 8 kernel_size: 5 stride: 2 group: 1 }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers {
  name: "norm1"
  type: LRN
  bottom: "conv1"
  top: "norm1"
  lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 }
}
layers {
  name: "pool1"
  type: POOLING
  bottom: "norm1"
  top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc"
         inner_product_param { num_output: 10 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc" bottom: "label" top: "loss"
         include { phase: TRAIN } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""


def test_v1_definition_is_upgraded_with_input_dim_header() -> None:
    net = net_from_text(V1_ALEXNET_HEAD)
    assert net.name == "v1net"
    assert dict(net.inputs) == {"data": (2, 3, 35, 35)}
    types = [layer.type for layer in net.layers]
    assert types == ["Input", "Convolution", "ReLU", "LRN", "Pooling", "InnerProduct", "Softmax"]
    # conv: (35 - 5) // 2 + 1 = 16; pool CEIL: ceil((16 - 3) / 2) + 1 = 8 (floor would give 7)
    assert net.blobs[net.value("conv1")].shape == (2, 8, 16, 16)
    assert net.blobs["pool1"].shape == (2, 8, 8, 8)
    assert net.layer("fc").param_shapes == ((10, 8 * 8 * 8), (10,))
    assert net.outputs == ("prob",)


def test_train_only_layers_are_dropped_and_lines_kept() -> None:
    net = net_from_text(V1_ALEXNET_HEAD)
    assert "loss" not in {layer.name for layer in net.layers}
    lines = V1_ALEXNET_HEAD.splitlines()
    conv = net.layer("conv1")
    assert lines[conv.loc.line - 1].strip() == "layers {"
    assert 'name: "conv1"' in lines[conv.loc.line]


def test_input_shape_header_and_input_layer_agree() -> None:
    header = 'input: "x"\ninput_shape { dim: 1 dim: 2 dim: 5 dim: 7 }\n'
    layer = 'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 ' \
            'dim: 5 dim: 7 } } }\n'
    body = 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n'
    a, b = net_from_text(header + body), net_from_text(layer + body)
    assert dict(a.inputs) == dict(b.inputs) == {"x": (1, 2, 5, 7)}
    assert a.blobs["y"].shape == b.blobs["y"].shape == (1, 2, 5, 7)


def test_in_place_chain_gets_unique_values_and_caffe_lookup() -> None:
    text = """
    input: "data" input_dim: 1 input_dim: 4 input_dim: 6 input_dim: 6
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" }
    layer { name: "sc" type: "Scale" bottom: "data" top: "data" scale_param { bias_term: true } }
    layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
    """
    net = net_from_text(text)
    assert [layer.tops for layer in net.layers[1:]] == [("data@1",), ("data@2",), ("data@3",)]
    assert net.layer("relu").bottoms == ("data@2",)
    assert net.value("data") == "data@3"
    assert net.outputs == ("data@3",)
    assert all(net.blobs[v].caffe_name == "data" for v in ("data@1", "data@2", "data@3"))


def test_v0_definition_with_padding_layer() -> None:
    text = """
    name: "v0"
    input: "data" input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
    layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
    layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 1 }
             bottom: "pad1" top: "conv1" }
    layers { layer { name: "pool1" type: "pool" kernelsize: 2 stride: 2 pool: MAX }
             bottom: "conv1" top: "pool1" }
    """
    net = net_from_text(text)
    conv = net.layer("conv1")
    assert conv.type == "Convolution" and list(conv.param.convolution_param.pad) == [2]
    assert net.blobs["conv1"].shape == (1, 4, 11, 11)  # 9 + 2*2 - 3 + 1
    assert net.blobs["pool1"].shape == (1, 4, 6, 6)  # ceil((11 - 2) / 2) + 1


def test_fork_ceil_mode_and_upstream_round_mode() -> None:
    base = 'input: "x" input_dim: 1 input_dim: 1 input_dim: 8 input_dim: 8\n' \
           'layer {{ name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param {{ ' \
           'pool: MAX kernel_size: 3 stride: 2 {} }} }}'
    sizes = {extra: net_from_text(base.format(extra)).blobs["p"].shape[-1]
             for extra in ("", "ceil_mode: false", "round_mode: FLOOR", "ceil_mode: true")}
    assert sizes == {"": 4, "ceil_mode: false": 3, "round_mode: FLOOR": 3, "ceil_mode: true": 4}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        pytest.param('name: "x"\nlayer {\n  name: "a"\n  type: \n}\n', 5, "string",
                     id="missing-value"),
        pytest.param('layer {\n  name: "a"\n', 2, 'Expected "}"', id="unclosed-brace"),
        pytest.param('input: "d"\ninput_dim: 1\ninput_dim: 2\n', 2, "input_dim",
                     id="short-input-dim"),
    ],
)
def test_syntax_errors_name_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(PrototxtError) as info:
        net_from_text(text)
    assert str(info.value).startswith(f"<test>:{line}:")
    assert fragment in str(info.value)


def test_semantic_errors_name_layer_and_type() -> None:
    text = 'input: "x" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n' \
           'layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }\n'
    with pytest.raises(ShapeError, match=r"^<test>:2: layer 'r' \(ReLU\): bottom 'nope'"):
        net_from_text(text)


def test_unknown_layer_type_is_unsupported_with_location() -> None:
    text = 'input: "x" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n\n' \
           'layer { name: "pb" type: "NoSuchForkLayer" bottom: "x" top: "pb" }\n'
    with pytest.raises(UnsupportedLayerError, match=r"^<test>:3: layer 'pb' \(NoSuchForkLayer\)"):
        net_from_text(text)


def test_missing_and_binary_files(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(PrototxtError, match="no such file"):
        load_net(tmp_path / "absent.prototxt")
    binary = tmp_path / "w.prototxt"
    binary.write_bytes(b"\x0a\x03abc\xff\xfe\x00")
    with pytest.raises(PrototxtError, match="not UTF-8"):
        load_net(binary)


def test_mixed_v1_and_v2_is_rejected() -> None:
    text = 'layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }\n'
    with pytest.raises(PrototxtError, match="mixes"):
        upgrade(parse_prototxt_text(text, "<test>"))
