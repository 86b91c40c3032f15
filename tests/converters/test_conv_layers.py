"""Convolution, Deconvolution and InnerProduct converters against the numpy Caffe reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from caffe_bridge.build import build_module
from caffe_bridge.converters import REGISTRY
from caffe_bridge.converters.conv import FoldedAxis, SharedWeights
from caffe_bridge.errors import CaffeBridgeError, UnsupportedLayerError
from caffe_bridge.ir import with_weights
from tests import reference
from tests.helpers.layer_check import check_layer, net_from_text

COVERS = {"Convolution", "Deconvolution", "InnerProduct"}

def one_layer(shape: tuple[int, ...], type_: str, param: str, bottoms: int = 1) -> str:
    """An Input layer (``bottoms`` tops of ``shape``) and one layer ``L`` of ``type_``."""
    dims = " ".join(f"dim: {d}" for d in shape)
    names = [f"in{i}" for i in range(bottoms)]
    tops = " ".join(f'top: "{n}"' for n in names)
    bots = " ".join(f'bottom: "{n}"' for n in names)
    outs = " ".join(f'top: "out{i}"' for i in range(bottoms))
    shapes_ = " ".join(f"shape {{ {dims} }}" for _ in names)
    return f"""
layer {{ name: "data" type: "Input" {tops} input_param {{ {shapes_} }} }}
layer {{ name: "L" type: "{type_}" {bots} {outs} {param} }}
"""


def draw(text: str, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Seeded N(0, 0.3^2) blobs for every parameter layer (no calibration run: an axis-0
    convolution has no batch axis for testing.random_weights to resize)."""
    rng = np.random.default_rng(seed)
    return {layer.name: [(0.3 * rng.standard_normal(s)).astype(np.float32)
                         for s in layer.param_shapes]
            for layer in net_from_text(text).layers if layer.param_shapes}


def layer_module(text: str) -> nn.Module:
    return build_module(with_weights(net_from_text(text), draw(text))).get_submodule("L")


# id, input shape, convolution_param body, output shape, module class
CONV = [
    ("plain_3x3_pad1", (2, 3, 7, 6), "num_output: 4 kernel_size: 3 pad: 1", (2, 4, 7, 6),
     nn.Conv2d),
    ("stride2_floor", (2, 3, 8, 9), "num_output: 4 kernel_size: 3 stride: 2", (2, 4, 3, 4),
     nn.Conv2d),
    ("grouped_g2", (2, 4, 6, 6), "num_output: 6 kernel_size: 3 group: 2", (2, 6, 4, 4),
     nn.Conv2d),
    ("depthwise", (2, 5, 6, 7), "num_output: 5 kernel_size: 3 pad: 1 group: 5 stride: 2",
     (2, 5, 3, 4), nn.Conv2d),
    ("dilated_2", (2, 3, 9, 9), "num_output: 4 kernel_size: 3 dilation: 2 pad: 2",
     (2, 4, 9, 9), nn.Conv2d),
    ("asymmetric_hw", (2, 3, 9, 8),
     "num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1",
     (2, 4, 5, 8), nn.Conv2d),
    ("only_stride_h_set", (2, 3, 9, 8), "num_output: 4 kernel_size: 2 stride_h: 3",
     (2, 4, 3, 7), nn.Conv2d),
    ("per_dim_repeated", (2, 3, 9, 8),
     "num_output: 4 kernel_size: 3 kernel_size: 2 stride: 2 stride: 1 pad: 1 pad: 0 "
     "dilation: 1 dilation: 2", (2, 4, 5, 6), nn.Conv2d),
    ("no_bias", (2, 3, 5, 5), "num_output: 4 kernel_size: 1 bias_term: false", (2, 4, 5, 5),
     nn.Conv2d),
    ("pad_over_kernel", (1, 2, 4, 4), "num_output: 3 kernel_size: 2 pad: 3", (1, 3, 9, 9),
     nn.Conv2d),
    ("conv1d_3d_blob", (2, 3, 11), "num_output: 4 kernel_size: 3 stride: 2", (2, 4, 5),
     nn.Conv1d),
    ("conv3d_5d_blob", (2, 2, 4, 5, 6), "num_output: 3 kernel_size: 3 pad: 1 stride: 2",
     (2, 3, 2, 3, 3), nn.Conv3d),
    ("axis2_folds_leading", (2, 3, 4, 6, 6), "num_output: 5 kernel_size: 3 axis: 2",
     (2, 3, 5, 4, 4), FoldedAxis),
    ("axis0_no_batch", (3, 6, 6), "num_output: 2 kernel_size: 3 axis: 0", (2, 4, 4),
     FoldedAxis),
]


@pytest.mark.parametrize(("shape", "param", "out", "kind"), [c[1:] for c in CONV],
                         ids=[c[0] for c in CONV])
def test_convolution(shape, param, out, kind):
    text = one_layer(shape, "Convolution", f"convolution_param {{ {param} }}")
    check_layer(text, weights=draw(text))
    net = net_from_text(text)
    assert net.blobs["out0"].shape == out
    assert type(layer_module(text)) is kind


def test_convolution_shared_weights_over_two_bottoms():
    text = one_layer((2, 3, 6, 6), "Convolution",
                     "convolution_param { num_output: 4 kernel_size: 3 }", bottoms=2)
    errors = check_layer(text)
    assert set(errors) == {"out0", "out1"}
    assert isinstance(layer_module(text), SharedWeights)


def test_folded_axis_follows_the_batch():
    """The folded leading axes restore with the run-time batch, not the definition's."""
    text = one_layer((2, 3, 4, 6, 6), "Convolution",
                     "convolution_param { num_output: 5 kernel_size: 3 axis: 2 }")
    net = net_from_text(text)
    net = with_weights(net, draw(text))
    x = np.random.default_rng(3).standard_normal((4, 3, 4, 6, 6)).astype(np.float32)
    want = reference.run_net(net, {"in0": x})["out0"]
    got = torch.fx.symbolic_trace(build_module(net))(torch.from_numpy(x)).detach().numpy()
    assert got.shape == want.shape == (4, 3, 5, 4, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_convolution_four_spatial_axes_unsupported():
    text = one_layer((1, 2, 3, 3, 3, 3), "Convolution",
                     "convolution_param { num_output: 2 kernel_size: 1 }")
    with pytest.raises(UnsupportedLayerError, match="spatial axes") as err:
        build_module(net_from_text(text))
    assert err.value.layer == "L"


# id, input shape, convolution_param body, output shape (s(in-1) + d(k-1) + 1 - 2p), module
DECONV = [
    ("stride2_pad1_group2", (2, 4, 5, 6), "num_output: 6 kernel_size: 4 stride: 2 pad: 1 "
     "group: 2", (2, 6, 10, 12), nn.ConvTranspose2d),
    ("stride3_k3_no_pad", (2, 3, 4, 4), "num_output: 2 kernel_size: 3 stride: 3",
     (2, 2, 12, 12), nn.ConvTranspose2d),
    ("dilated_pad", (2, 3, 5, 5), "num_output: 4 kernel_size: 3 dilation: 2 pad: 1",
     (2, 4, 7, 7), nn.ConvTranspose2d),
    ("asymmetric_hw_no_bias", (2, 3, 4, 5), "num_output: 4 kernel_h: 4 kernel_w: 2 "
     "stride_h: 2 stride_w: 1 pad_h: 1 bias_term: false", (2, 4, 8, 6), nn.ConvTranspose2d),
    ("depthwise_upsample", (2, 4, 3, 3), "num_output: 4 kernel_size: 4 stride: 2 pad: 1 "
     "group: 4 bias_term: false", (2, 4, 6, 6), nn.ConvTranspose2d),
    ("pad_over_kernel", (1, 2, 6, 6), "num_output: 3 kernel_size: 3 stride: 2 pad: 3",
     (1, 3, 7, 7), nn.ConvTranspose2d),
    ("deconv1d", (2, 3, 5), "num_output: 2 kernel_size: 3 stride: 2 pad: 1", (2, 2, 9),
     nn.ConvTranspose1d),
    ("axis2_folds_leading", (2, 2, 3, 4, 4), "num_output: 4 kernel_size: 2 stride: 2 axis: 2",
     (2, 2, 4, 8, 8), FoldedAxis),
]


@pytest.mark.parametrize(("shape", "param", "out", "kind"), [c[1:] for c in DECONV],
                         ids=[c[0] for c in DECONV])
def test_deconvolution(shape, param, out, kind):
    text = one_layer(shape, "Deconvolution", f"convolution_param {{ {param} }}")
    check_layer(text, weights=draw(text))
    assert net_from_text(text).blobs["out0"].shape == out
    assert type(layer_module(text)) is kind


def test_deconvolution_weight_layout_is_c_in_first():
    """(C_in, O/group, kh, kw): a 1x1 deconv from 2 to 3 channels maps y_o = sum_c w[c, o] x_c."""
    text = one_layer((1, 2, 1, 1), "Deconvolution",
                     "convolution_param { num_output: 3 kernel_size: 1 bias_term: false }")
    w = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1)
    x = np.array([1.0, 10.0], dtype=np.float32).reshape(1, 2, 1, 1)
    check_layer(text, weights={"L": [w]}, inputs={"in0": x})
    gm = build_module(with_weights(net_from_text(text), {"L": [w]}))
    got = gm(torch.from_numpy(x)).detach().reshape(-1).numpy()
    np.testing.assert_array_equal(got, [30, 41, 52])


# id, input shape, inner_product_param body, output shape
IP = [
    ("axis1_4d", (2, 3, 4, 5), "num_output: 7", (2, 7)),
    ("axis2_4d", (2, 3, 4, 5), "num_output: 6 axis: 2", (2, 3, 6)),
    ("axis_minus1", (2, 3, 4), "num_output: 5 axis: -1", (2, 3, 5)),
    ("transpose", (2, 3, 2, 2), "num_output: 4 transpose: true", (2, 4)),
    ("transpose_axis2", (2, 3, 2, 2), "num_output: 4 axis: 2 transpose: true", (2, 3, 4)),
    ("no_bias_2d", (3, 8), "num_output: 5 bias_term: false", (3, 5)),
]


@pytest.mark.parametrize(("shape", "param", "out"), [c[1:] for c in IP], ids=[c[0] for c in IP])
def test_inner_product(shape, param, out):
    text = one_layer(shape, "InnerProduct", f"inner_product_param {{ {param} }}")
    check_layer(text)
    assert net_from_text(text).blobs["out0"].shape == out


def test_inner_product_legacy_4d_blobs_and_transpose_teeth():
    """Legacy (1, 1, N, K) blobs load; with a non-square (K, N) weight a converter ignoring
    ``transpose`` would not even have the right shape, with a square one it would differ."""
    text = one_layer((2, 4), "InnerProduct", "inner_product_param { num_output: 3 }")
    rng = np.random.default_rng(1)
    w = rng.standard_normal((1, 1, 3, 4)).astype(np.float32)
    b = rng.standard_normal((1, 1, 1, 3)).astype(np.float32)
    check_layer(text, weights={"L": [w, b]})
    square = one_layer((2, 4), "InnerProduct",
                       "inner_product_param { num_output: 4 transpose: true }")
    ws = rng.standard_normal((4, 4)).astype(np.float32)
    bs = np.zeros(4, np.float32)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    check_layer(square, weights={"L": [ws, bs]}, inputs={"in0": x})
    assert not np.allclose(x @ ws, x @ ws.T, atol=1e-3)


def test_wrong_blob_count_raises_located_error():
    """A blob of the wrong size reaches the converter only through a hand-made Layer."""
    net = net_from_text(one_layer((1, 2, 4, 4), "Convolution",
                                  "convolution_param { num_output: 3 kernel_size: 3 }"))
    layer = dataclasses.replace(net.layer("L"), blobs=(np.zeros((3, 2, 3, 3), np.float32),))
    with pytest.raises(CaffeBridgeError, match="expected 2") as err:
        REGISTRY.convert(layer, net)
    assert err.value.layer == "L"
