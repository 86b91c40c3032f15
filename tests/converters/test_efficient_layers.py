"""Efficient-net fork layers against the numpy reference: the depthwise spellings, ShuffleChannel,
ReLU6, Clip, Swish, Mish, and the Slice / Eltwise corner cases their nets bring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import caffe_bridge.converters  # noqa: F401  (registers the shape rules)
from caffe_bridge.build import build_module
from caffe_bridge.errors import CaffeBridgeError
from tests.helpers.layer_check import check_batch, check_layer, net_from_text, net_text
from tests.helpers.layer_check import layer_text as one

COVERS = {"ConvolutionDepthwise", "DepthwiseConvolution", "ShuffleChannel", "ReLU6", "Clip",
          "Swish", "Mish", "HardSwish"}

X4 = (2, 6, 5, 7)

CASES = {
    "dw-3x3-pad1": (one("ConvolutionDepthwise", "convolution_param { num_output: 6 "
                        "kernel_size: 3 pad: 1 stride: 1 }"), X4),
    "dw-stride2-no-bias": (one("ConvolutionDepthwise", "convolution_param { num_output: 6 "
                               "kernel_size: 3 pad: 1 stride: 2 bias_term: false }"), X4),
    "dw-num-output-ignored": (one("ConvolutionDepthwise", "convolution_param { num_output: 12 "
                                  "kernel_size: 3 stride: 1 pad: 0 }"), X4),
    "dw-hw-and-dilation": (one("ConvolutionDepthwise", "convolution_param { kernel_h: 1 "
                               "kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 2 "
                               "dilation: 2 }"), X4),
    "dw-kernel-pair": (one("ConvolutionDepthwise", "convolution_param { kernel_size: 3 "
                           "kernel_size: 1 stride: 1 stride: 2 pad: 1 pad: 0 }"), X4),
    "depthwise-convolution-grouped": (one("DepthwiseConvolution", "convolution_param { "
                                          "num_output: 6 group: 6 kernel_size: 3 pad: 1 }"), X4),
    "depthwise-convolution-no-group-is-dense": (one("DepthwiseConvolution", "convolution_param {"
                                                    " num_output: 4 kernel_size: 1 }"), X4),
    "shuffle-g2": (one("ShuffleChannel", "shuffle_channel_param { group: 2 }"), X4),
    "shuffle-g3": (one("ShuffleChannel", "shuffle_channel_param { group: 3 }"), X4),
    "shuffle-default-group-1": (one("ShuffleChannel"), X4),
    "shuffle-2d": (one("ShuffleChannel", "shuffle_channel_param { group: 3 }"), (2, 6)),
    "shuffle-5d": (one("ShuffleChannel", "shuffle_channel_param { group: 2 }"), (1, 4, 2, 3, 2)),
    "relu6": (one("ReLU6"), X4),
    "relu6-leaky": (one("ReLU6", "relu6_param { negative_slope: 0.1 }"), X4),
    "clip": (one("Clip", "clip_param { min: -0.5 max: 0.7 }"), X4),
    "clip-min-above-max": (one("Clip", "clip_param { min: 0.5 max: -0.5 }"), X4),
    "swish": (one("Swish"), X4),
    "swish-beta": (one("Swish", "swish_param { beta: 1.7 }"), X4),
    "mish": (one("Mish"), X4),
    "hard-swish": (one("HardSwish"), X4),
}


@pytest.mark.parametrize("layer,shape", CASES.values(), ids=CASES.keys())
def test_layer_matches_caffe(layer: str, shape: tuple[int, ...]) -> None:
    check_layer(net_text(layer, shape))


@pytest.mark.parametrize("key", ["dw-3x3-pad1", "shuffle-g3", "relu6"])
def test_other_batch_sizes(key: str) -> None:
    layer, shape = CASES[key]
    check_batch(layer, shape)


def _run(text: str, x: np.ndarray) -> np.ndarray:
    model = build_module(net_from_text(text))
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_shuffle_channel_order() -> None:
    """0 1 2 | 3 4 5 -> 0 3 1 4 2 5 (torch.nn.ChannelShuffle's order; the inverse fails)."""
    x = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1)
    text = net_text(one("ShuffleChannel", "shuffle_channel_param { group: 2 }"), x.shape)
    np.testing.assert_array_equal(_run(text, x).reshape(-1), [0, 3, 1, 4, 2, 5])
    check_layer(text, inputs={"data": x})


def test_convolution_depthwise_ignores_num_output() -> None:
    """num_output 12 on 6 channels: Caffe's top has 6 channels, weight (6, 1, 3, 3)."""
    net = net_from_text(net_text(CASES["dw-num-output-ignored"][0], X4))
    assert net.blobs["out"].shape == (2, 6, 3, 5)
    assert net.layer("l").param_shapes == ((6, 1, 3, 3), (6,))


def test_depthwise_convolution_without_group_is_dense() -> None:
    """The yonghenglh6 spelling is Convolution: no group means group 1 (weight (4, 6, 1, 1))."""
    net = net_from_text(net_text(CASES["depthwise-convolution-no-group-is-dense"][0], X4))
    assert net.layer("l").param_shapes[0] == (4, 6, 1, 1)


def test_clip_min_above_max_gives_min() -> None:
    """Caffe's max(min, min(x, max)) is ``min`` everywhere; torch.clamp would give ``max``."""
    x = np.array([[-2.0, 0.0, 2.0]], dtype=np.float32)
    out = _run(net_text(one("Clip", "clip_param { min: 0.5 max: -0.5 }"), x.shape), x)
    np.testing.assert_array_equal(out, 0.5)


def test_clip_without_bounds_is_an_error() -> None:
    with pytest.raises(CaffeBridgeError, match="min and max"):
        build_module(net_from_text(net_text(one("Clip", "clip_param { min: 0 }"), X4)))


def test_relu6_caps_and_leaks() -> None:
    x = np.array([[-10.0, 3.0, 6.5]], dtype=np.float32)
    out = _run(net_text(one("ReLU6", "relu6_param { negative_slope: 0.1 }"), x.shape), x)
    np.testing.assert_allclose(out, [[-1.0, 3.0, 6.0]], rtol=1e-6)


def test_mish_and_swish_at_large_magnitudes() -> None:
    x = np.array([[-80.0, -25.0, -19.0, 0.0, 19.0, 25.0, 80.0]], dtype=np.float32)
    for body in ("Mish", "Swish", "HardSwish"):
        check_layer(net_text(one(body), x.shape), inputs={"data": x})


SLICE_MANY = """layer { name: "l" type: "Slice" bottom: "data" top: "a" top: "b" top: "c" top: "d"
  slice_param { slice_point: 1 slice_point: 3 slice_point: 4 axis: 1 } }
layer { name: "s" type: "ShuffleChannel" bottom: "b" top: "bs" shuffle_channel_param { group: 2 } }
"""

ELTWISE_NEG = """layer { name: "r" type: "ReLU6" bottom: "data" top: "r" }
layer { name: "l" type: "Eltwise" bottom: "data" bottom: "r" bottom: "data" top: "out"
  eltwise_param { operation: SUM coeff: 1 coeff: -1 coeff: -0.5 } }
"""


def test_slice_into_many_tops_feeding_a_shuffle() -> None:
    """Slice on axis 1 at 1, 3, 4 of 6 channels: four tops of 1, 2, 1, 2 channels."""
    errors = check_layer(net_text(SLICE_MANY, X4))
    assert set(errors) == {"a", "bs", "c", "d"}


def test_eltwise_with_negative_coeff() -> None:
    """x - relu6(x) - 0.5 x, as a MobileNetV3-style hard-swish residual would write it."""
    check_layer(net_text(ELTWISE_NEG, X4))


@pytest.mark.parametrize("layer,shape", CASES.values(), ids=CASES.keys())
def test_re_traces_with_torch_fx(layer: str, shape: tuple[int, ...]) -> None:
    """Every module is fx-traceable: the whole graph re-traces and computes the same."""
    gm = build_module(net_from_text(net_text(layer, shape)))
    traced = torch.fx.symbolic_trace(gm)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(traced(x), gm(x), rtol=0, atol=0)
