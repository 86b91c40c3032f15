"""BVLC's remaining deploy-time layers and C3D's volumetric layers against the numpy reference:
Reduction, Tile, Embed, Parameter, BatchReindex, SPP, Convolution3D, Pooling3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import caffe_bridge.converters  # noqa: F401  (registers the shape rules)
from caffe_bridge.build import build_module
from caffe_bridge.errors import CaffeBridgeError
from tests.helpers.layer_check import check_batch, check_layer, net_from_text, net_text
from tests.helpers.layer_check import layer_text as one

COVERS = {"Reduction", "Tile", "Embed", "Parameter", "BatchReindex", "SPP", "Convolution3D",
          "Pooling3D"}

X4 = (2, 3, 6, 7)
X5 = (2, 3, 5, 7, 6)

CASES = {
    "reduction-default-axis0": (one("Reduction"), X4),
    "reduction-sum-axis1": (one("Reduction", "reduction_param { axis: 1 }"), X4),
    "reduction-asum-axis2": (one("Reduction", "reduction_param { operation: ASUM axis: 2 }"), X4),
    "reduction-sumsq-last": (one("Reduction", "reduction_param { operation: SUMSQ axis: -1 "
                                 "coeff: 0.5 }"), X4),
    "reduction-mean-coeff": (one("Reduction", "reduction_param { operation: MEAN axis: 1 "
                                 "coeff: -3 }"), X4),
    "tile-axis1": (one("Tile", "tile_param { tiles: 3 }"), X4),
    "tile-axis-last": (one("Tile", "tile_param { axis: -1 tiles: 2 }"), X4),
    "tile-axis0": (one("Tile", "tile_param { axis: 0 tiles: 2 }"), X4),
    "spp-max-3": (one("SPP", "spp_param { pyramid_height: 3 }"), (2, 3, 13, 9)),
    "spp-ave-2": (one("SPP", "spp_param { pyramid_height: 2 pool: AVE }"), (2, 3, 7, 5)),
    "spp-1": (one("SPP", "spp_param { pyramid_height: 1 }"), X4),
    "conv3d": (one("Convolution3D", "convolution3d_param { num_output: 4 kernel_size: 3 "
                   "kernel_depth: 3 pad: 1 temporal_pad: 1 }"), X5),
    "conv3d-strides-no-bias": (one("Convolution3D", "convolution3d_param { num_output: 2 "
                                   "kernel_size: 2 kernel_depth: 1 stride: 2 temporal_stride: 2 "
                                   "bias_term: false }"), X5),
    "pool3d-max": (one("Pooling3D", "pooling3d_param { kernel_size: 2 stride: 2 kernel_depth: 2 "
                       "temporal_stride: 2 }"), X5),
    "pool3d-max-c3d-pool1": (one("Pooling3D", "pooling3d_param { kernel_size: 2 stride: 2 "
                                 "kernel_depth: 1 temporal_stride: 1 }"), X5),
    "pool3d-max-overhang": (one("Pooling3D", "pooling3d_param { kernel_size: 3 stride: 2 "
                                "kernel_depth: 2 temporal_stride: 2 }"), X5),
    "pool3d-ave-pad": (one("Pooling3D", "pooling3d_param { pool: AVE kernel_size: 3 stride: 2 "
                           "pad: 1 kernel_depth: 2 temporal_stride: 2 }"), X5),
    "pool3d-ave-stride-beyond-kernel": (one("Pooling3D", "pooling3d_param { pool: AVE "
                                            "kernel_size: 2 stride: 3 kernel_depth: 3 "
                                            "temporal_stride: 1 }"), (2, 3, 5, 7, 7)),
}


@pytest.mark.parametrize("layer,shape", CASES.values(), ids=CASES.keys())
def test_layer_matches_caffe(layer: str, shape: tuple[int, ...]) -> None:
    check_layer(net_text(layer, shape))


@pytest.mark.parametrize("key", ["reduction-mean-coeff", "tile-axis1", "spp-max-3", "conv3d",
                                 "pool3d-ave-pad"])
def test_other_batch_sizes(key: str) -> None:
    layer, shape = CASES[key]
    check_batch(layer, shape)


def _run(text: str, *xs: np.ndarray) -> np.ndarray:
    model = build_module(net_from_text(text))
    with torch.no_grad():
        return model(*(torch.from_numpy(x) for x in xs)).numpy()


EMBED = one("Embed", "embed_param { num_output: 4 input_dim: 5 }")


def test_embed_matches_caffe_on_indices() -> None:
    """Indices 0..4, some non-integer (truncated toward zero, as static_cast<int>)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    x = np.array([[0.0, 4.0, 2.5], [1.0, 3.999, 0.2]], dtype=np.float32)
    check_layer(net_text(EMBED, x.shape), inputs={"data": x}, weights={"l": [w, b]})
    check_layer(net_text(one("Embed", "embed_param { num_output: 4 input_dim: 5 bias_term: "
                             "false }"), (2, 2, 1)), weights={"l": [w]},
                inputs={"data": np.array([[[4.0], [0.0]], [[2.0], [2.0]]], dtype=np.float32)})


def test_embed_out_of_range_raises() -> None:
    with pytest.raises(IndexError):
        _run(net_text(EMBED, (1, 2)), np.array([[1.0, 5.0]], dtype=np.float32))


PARAMETER = """layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 2
  dim: 3 dim: 6 dim: 7 } } }
layer { name: "l" type: "Eltwise" bottom: "data" bottom: "w" top: "out" }
"""


def test_parameter_feeds_the_net() -> None:
    check_layer(net_text(PARAMETER, X4))


def test_parameter_without_weights_is_zeros() -> None:
    x = np.ones(X4, dtype=np.float32)
    np.testing.assert_array_equal(_run(net_text(PARAMETER, X4), x), x)


def test_batch_reindex_matches_caffe() -> None:
    text = net_text(one("BatchReindex", n_bottoms=2), X4, (5,))
    idx = np.array([1.0, 0.0, 1.0, 1.0, 0.0], dtype=np.float32)
    x = np.random.default_rng(0).standard_normal(X4).astype(np.float32)
    check_layer(text, inputs={"data": x, "b1": idx}, weights={})
    assert net_from_text(text).blobs["out"].shape == (5, 3, 6, 7)


def test_tile_is_block_repeat_not_interleave() -> None:
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    out = _run(net_text(one("Tile", "tile_param { tiles: 2 }"), x.shape), x)
    np.testing.assert_array_equal(out, [[1, 2, 1, 2]])


def test_reduction_axis0_is_a_scalar() -> None:
    net = net_from_text(net_text(one("Reduction"), X4))
    assert net.blobs["out"].shape == ()


def test_spp_output_width() -> None:
    """13 x 9 at 3 levels: 1 + 4 + 16 bins per channel."""
    net = net_from_text(net_text(CASES["spp-max-3"][0], (2, 3, 13, 9)))
    assert net.blobs["out"].shape == (2, 3 * 21)


def test_spp_level_with_pad_not_below_kernel_is_an_error() -> None:
    """5 x 5 at 4 bins: kernel 2, pad 2: Caffe's Pooling CHECK fails; so do we, clearly."""
    with pytest.raises(CaffeBridgeError, match="pyramid level 2"):
        net_from_text(net_text(one("SPP", "spp_param { pyramid_height: 3 }"), (1, 1, 5, 5)))


def test_pooling3d_has_no_clip_rule() -> None:
    """C3D: ceil((5 + 2 - 3) / 2) + 1 = 3 windows even though the last starts in the padding
    (BVLC's Pooling would clip it to 2)."""
    net = net_from_text(net_text(CASES["pool3d-ave-pad"][0], X5))
    assert net.blobs["out"].shape[3] == 4  # H 7: ceil((7 + 2 - 3) / 2) + 1
    assert net.blobs["out"].shape[4] == 4  # W 6: ceil((6 + 2 - 3) / 2) + 1 = 4, start 6 >= 7


def test_pooling3d_max_with_pad_is_refused() -> None:
    with pytest.raises(CaffeBridgeError, match="average pooling only"):
        net_from_text(net_text(one("Pooling3D", "pooling3d_param { kernel_size: 2 pad: 1 "
                                   "kernel_depth: 1 }"), X5))


def test_convolution3d_bias_blob_shape() -> None:
    net = net_from_text(net_text(CASES["conv3d"][0], X5))
    assert net.layer("l").param_shapes == ((4, 3, 3, 3, 3), (1, 1, 1, 1, 4))


SCALAR_SCALE = """layer { name: "r" type: "Reduction" bottom: "data" top: "s"
  reduction_param { operation: MEAN coeff: 0.5 } }
layer { name: "l" type: "Scale" bottom: "data" bottom: "s" top: "out" }
layer { name: "b" type: "Bias" bottom: "out" bottom: "s" top: "out2" }
"""

PARAM_SCALE = """layer { name: "p" type: "Parameter" top: "g"
  parameter_param { shape { dim: 6 dim: 7 } } }
layer { name: "l" type: "Scale" bottom: "data" bottom: "g" top: "out" scale_param { axis: -2
  bias_term: true } }
"""


def test_scale_and_bias_by_a_0d_blob() -> None:
    """Reduction over every axis gives a 0-D blob; Scale / Bias take it as a scalar bottom[1]."""
    net = net_from_text(net_text(SCALAR_SCALE, X4))
    assert net.blobs["s"].shape == ()
    check_layer(net_text(SCALAR_SCALE, X4), weights={})


def test_scale_by_a_parameter_blob_from_a_negative_axis() -> None:
    check_layer(net_text(PARAM_SCALE, X4))


@pytest.mark.parametrize("layer,shape", CASES.values(), ids=CASES.keys())
def test_re_traces_with_torch_fx(layer: str, shape: tuple[int, ...]) -> None:
    """Every module is fx-traceable: the whole graph re-traces and computes the same."""
    gm = build_module(net_from_text(net_text(layer, shape)))
    traced = torch.fx.symbolic_trace(gm)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(traced(x), gm(x), rtol=0, atol=0)


C3D_BLOCK = """layer { name: "conv1" type: "Convolution3D" bottom: "data" top: "conv1"
  convolution3d_param { num_output: 4 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  stride: 2 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution3D" bottom: "conv1" top: "conv2"
  convolution3d_param { num_output: 4 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "conv2" top: "sum" }
layer { name: "pool" type: "Pooling3D" bottom: "sum" top: "pool"
  pooling3d_param { pool: AVE kernel_size: 4 kernel_depth: 2 stride: 4 temporal_stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 5 } }
"""


def test_c3d_resnet_style_block() -> None:
    """C3D-v1.1's ResNet-18 pattern (Convolution3D, BatchNorm/Scale on 5-D, Eltwise,
    Pooling3D, InnerProduct) end to end, with another batch too."""
    check_layer(net_text(C3D_BLOCK, (2, 3, 5, 9, 9)))
    check_batch(C3D_BLOCK, (1, 3, 5, 9, 9))
