"""Self-tests of the efficient-net family of the numpy reference (tests/reference/efficient.py):
hand-computed numbers that a PyTorch-habit reading of the fork sources would miss."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.reference_layers import make_layer, run1


def test_shuffle_channel_order_group_2_of_6() -> None:
    """(group 2, 3 per group) transposed: input channels 0 1 2 | 3 4 5 -> 0 3 1 4 2 5."""
    x = np.arange(6, dtype=np.float64).reshape(1, 6, 1, 1)
    y = run1(make_layer("ShuffleChannel", "shuffle_channel_param { group: 2 }"), x)
    np.testing.assert_array_equal(y.reshape(-1), [0, 3, 1, 4, 2, 5])


def test_shuffle_channel_group_3_is_not_its_inverse() -> None:
    """group 3 of 6 gives 0 2 4 1 3 5 (group 2's inverse), so a swapped row/column fails."""
    x = np.arange(6, dtype=np.float64).reshape(1, 6, 1, 1)
    y = run1(make_layer("ShuffleChannel", "shuffle_channel_param { group: 3 }"), x)
    np.testing.assert_array_equal(y.reshape(-1), [0, 2, 4, 1, 3, 5])


def test_shuffle_channel_moves_whole_planes() -> None:
    x = np.arange(2 * 4 * 2 * 3, dtype=np.float64).reshape(2, 4, 2, 3)
    y = run1(make_layer("ShuffleChannel", "shuffle_channel_param { group: 2 }"), x)
    np.testing.assert_array_equal(y[1, 1], x[1, 2])
    np.testing.assert_array_equal(y[0, 2], x[0, 1])


def test_shuffle_channel_group_must_divide() -> None:
    with pytest.raises(ValueError):
        run1(make_layer("ShuffleChannel", "shuffle_channel_param { group: 4 }"),
             np.zeros((1, 6, 1, 1)))


def test_relu6_clips_at_six_and_keeps_the_leak() -> None:
    x = np.array([-2.0, 0.0, 3.0, 6.0, 9.0])
    np.testing.assert_allclose(run1(make_layer("ReLU6"), x), [0, 0, 3, 6, 6])
    leaky = make_layer("ReLU6", "relu6_param { negative_slope: 0.5 }")
    np.testing.assert_allclose(run1(leaky, x), [-1, 0, 3, 6, 6])


def test_clip_bounds_and_float32_bounds() -> None:
    x = np.array([-1.0, 0.25, 0.3, 2.0])
    y = run1(make_layer("Clip", "clip_param { min: 0 max: 0.3 }"), x)
    np.testing.assert_array_equal(y, [0.0, 0.25, 0.3, float(np.float32(0.3))])  # max: float32


def test_clip_needs_both_bounds() -> None:
    with pytest.raises(ValueError):
        run1(make_layer("Clip", "clip_param { min: 0 }"), np.zeros(3))


def test_swish_beta() -> None:
    """x * sigmoid(beta x), beta 0.5: 2 / (1 + e^-1) = 1.46211715726; -2 / (1 + e) = -0.53788."""
    y = run1(make_layer("Swish", "swish_param { beta: 0.5 }"), np.array([2.0, 0.0, -2.0]))
    np.testing.assert_allclose(y, [1.4621171572600098, 0.0, -0.5378828427399902], rtol=1e-12)
    y1 = run1(make_layer("Swish"), np.array([1.0]))
    np.testing.assert_allclose(y1, [0.7310585786300049], rtol=1e-12)


def test_mish_values_and_thresholds() -> None:
    """mish(1) = tanh(log(1 + e)) = 0.8650983882673103; above 20 it is x; below -20 x e^x."""
    y = run1(make_layer("Mish"), np.array([1.0, 0.0, 25.0, -25.0]))
    np.testing.assert_allclose(y[:3], [0.8650983882673103, 0.0, 25.0], rtol=1e-12)
    np.testing.assert_allclose(y[3], -25.0 * np.tanh(np.exp(-25.0)), rtol=1e-12)


def test_hard_swish_values() -> None:
    """-4 -> 0, -1.5 -> -1.5 * 1.5 / 6 = -0.375, 1 -> 1 * 4 / 6, 4 -> 4."""
    y = run1(make_layer("HardSwish"), np.array([-4.0, -1.5, 1.0, 4.0]))
    np.testing.assert_allclose(y, [0.0, -0.375, 4 / 6, 4.0], rtol=1e-15)


def test_convolution_depthwise_ignores_num_output() -> None:
    """Output channels = input channels, weight (C, 1, k, k), whatever num_output says."""
    x = np.arange(2 * 3 * 3, dtype=np.float64).reshape(1, 2, 3, 3)
    w = np.zeros((2, 1, 3, 3))
    w[0, 0, 1, 1] = 2.0  # channel 0 doubled
    w[1, 0, 0, 0] = 1.0  # channel 1 shifted: out(i, j) = x(i - 1, j - 1), zero outside
    layer = make_layer("ConvolutionDepthwise",
                       "convolution_param { num_output: 5 kernel_size: 3 pad: 1 stride: 1 }",
                       blobs=(w, np.array([0.0, 10.0])))
    y = run1(layer, x)
    assert y.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(y[0, 0], 2 * x[0, 0])
    want = np.full((3, 3), 10.0)
    want[1:, 1:] += x[0, 1, :2, :2]
    np.testing.assert_allclose(y[0, 1], want)


def test_convolution_depthwise_geometry_pairs() -> None:
    """kernel_size: 1 then 3 is (kh, kw) = (1, 3); stride 2 both ways; dilation 2 on width."""
    x = np.arange(5 * 7, dtype=np.float64).reshape(1, 1, 5, 7)
    w = np.array([1.0, 0.0, -1.0]).reshape(1, 1, 1, 3)
    layer = make_layer("ConvolutionDepthwise", "convolution_param { kernel_size: 1 "
                       "kernel_size: 3 stride: 2 dilation: 1 dilation: 2 bias_term: false }",
                       blobs=(w,))
    y = run1(layer, x)
    assert y.shape == (1, 1, 3, 2)  # (5 - 1) / 2 + 1, (7 - 5) / 2 + 1
    np.testing.assert_allclose(y, -4.0)  # x[i, j] - x[i, j + 4]


def test_depthwise_convolution_is_caffe_convolution_with_its_group() -> None:
    """Without ``group`` it is a dense convolution: every input channel feeds each output."""
    x = np.ones((1, 2, 1, 1))
    w = np.ones((2, 2, 1, 1))
    dense = make_layer("DepthwiseConvolution",
                       "convolution_param { num_output: 2 kernel_size: 1 bias_term: false }",
                       blobs=(w,))
    np.testing.assert_allclose(run1(dense, x).reshape(-1), [2, 2])
    grouped = make_layer("DepthwiseConvolution", "convolution_param { num_output: 2 "
                         "kernel_size: 1 group: 2 bias_term: false }", blobs=(w[:, :1],))
    np.testing.assert_allclose(run1(grouped, x).reshape(-1), [1, 1])
