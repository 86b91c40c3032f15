"""Self-tests of tests/reference/bvlc_extra.py: hand-computed numbers for Reduction, Tile,
Embed, Parameter, BatchReindex, SPP and C3D's Convolution3D / Pooling3D."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.reference_layers import make_layer, run1
from tests.reference import run_layer

X2 = np.array([[-4.0, 3.0, 0.0], [0.0, 2.0, 3.0]])


def test_reduction_default_axis_is_0_and_gives_a_scalar() -> None:
    y = run1(make_layer("Reduction"), X2)
    assert y.shape == ()
    assert float(y) == 4.0


@pytest.mark.parametrize("op,want", [("SUM", [-1.0, 5.0]), ("ASUM", [7.0, 5.0]),
                                     ("SUMSQ", [25.0, 13.0]), ("MEAN", [-1 / 3, 5 / 3])])
def test_reduction_ops_from_axis_1(op: str, want: list[float]) -> None:
    y = run1(make_layer("Reduction", f"reduction_param {{ operation: {op} axis: 1 }}"), X2)
    np.testing.assert_allclose(y, want, rtol=1e-15)


def test_reduction_coeff_and_negative_axis() -> None:
    """MEAN with coeff -2 over the last axis of (1, 2, 3): -2 * row means."""
    layer = make_layer("Reduction", "reduction_param { operation: MEAN axis: -1 coeff: -2 }")
    y = run1(layer, X2[None])
    assert y.shape == (1, 2)
    np.testing.assert_allclose(y, [[2 / 3, -10 / 3]], rtol=1e-15)


def test_tile_repeats_the_whole_block() -> None:
    """tiles 2 on axis 1 of [[a b c]]: a b c a b c (not a a b b c c)."""
    y = run1(make_layer("Tile", "tile_param { tiles: 2 }"), np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(y, [[1, 2, 3, 1, 2, 3]])


def test_tile_axis_0_of_a_4d_blob() -> None:
    x = np.arange(2 * 3, dtype=np.float64).reshape(1, 2, 3, 1)
    y = run1(make_layer("Tile", "tile_param { axis: 2 tiles: 3 }"), x)
    assert y.shape == (1, 2, 9, 1)
    np.testing.assert_array_equal(y[0, 1, :, 0], [3, 4, 5, 3, 4, 5, 3, 4, 5])


def test_embed_truncates_and_adds_bias() -> None:
    w = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # (input_dim 3, num_output 2)
    layer = make_layer("Embed", "embed_param { num_output: 2 input_dim: 3 }",
                       blobs=(w, np.array([0.5, -0.5])))
    y = run1(layer, np.array([[2.0, 0.0], [1.9, 1.0]]))
    assert y.shape == (2, 2, 2)
    np.testing.assert_array_equal(y[0, 0], [5.5, 5.5])
    np.testing.assert_array_equal(y[1, 0], [3.5, 3.5])  # 1.9 -> row 1


def test_embed_out_of_range_is_an_error() -> None:
    layer = make_layer("Embed", "embed_param { num_output: 1 input_dim: 2 bias_term: false }",
                       blobs=(np.ones((2, 1)),))
    with pytest.raises(ValueError):
        run1(layer, np.array([2.0]))


def test_parameter_outputs_its_blob() -> None:
    b = np.arange(6, dtype=np.float32).reshape(2, 3)
    layer = make_layer("Parameter", "parameter_param { shape { dim: 2 dim: 3 } }", blobs=(b,))
    np.testing.assert_array_equal(run_layer(layer, [])[0], b)


def test_batch_reindex_gathers_and_repeats() -> None:
    x = np.arange(3 * 2, dtype=np.float64).reshape(3, 2)
    y = run1(make_layer("BatchReindex"), x, np.array([2.0, 0.0, 2.0, 1.0]))
    np.testing.assert_array_equal(y, [[4, 5], [0, 1], [4, 5], [2, 3]])


def test_spp_geometry_of_a_6x6_blob() -> None:
    """Level 1 (2 bins): kernel 3, pad 0. Level 2 (4 bins): kernel 2, pad (8 - 6 + 1) / 2 = 1,
    windows starting at -1, 1, 3, 5 (rows 0, 1..2, 3..4, 5)."""
    x = np.arange(36, dtype=np.float64).reshape(1, 1, 6, 6)
    y = run1(make_layer("SPP", "spp_param { pyramid_height: 3 }"), x)
    assert y.shape == (1, 1 + 4 + 16)
    assert y[0, 0] == 35.0
    np.testing.assert_array_equal(y[0, 1:5], [14, 17, 32, 35])
    lvl2 = y[0, 5:].reshape(4, 4)
    np.testing.assert_array_equal(lvl2[0], [0, 2, 4, 5])
    np.testing.assert_array_equal(lvl2[1], [12, 14, 16, 17])
    assert lvl2[3, 3] == 35.0


def test_spp_level_with_pad_not_below_kernel_is_an_error() -> None:
    """5 x 5 at 4 bins: kernel 2, pad (8 - 5 + 1) / 2 = 2: Caffe's Pooling CHECK fails."""
    with pytest.raises(ValueError):
        run1(make_layer("SPP", "spp_param { pyramid_height: 3 }"), np.zeros((1, 1, 5, 5)))


def test_spp_ave_divisor_counts_padding() -> None:
    x = np.ones((1, 1, 3, 3))
    y = run1(make_layer("SPP", "spp_param { pyramid_height: 2 pool: AVE }"), x)
    # level 1: kernel 2, pad (4 - 3 + 1) / 2 = 1, windows rows -1..0 and 1..2, each of 2 x 2
    # cells counted: the first holds 1 real row, the second 2
    np.testing.assert_allclose(y[0, 1:], [0.25, 0.5, 0.5, 1.0])


def test_spp_pyramid_height_1_keeps_4d() -> None:
    y = run1(make_layer("SPP", "spp_param { pyramid_height: 1 }"), np.zeros((2, 3, 4, 5)))
    assert y.shape == (2, 3, 1, 1)


def test_convolution3d_separate_temporal_geometry() -> None:
    """kernel 1x1x1 of weight 1: with temporal_pad 1 and temporal_stride 2 on length 3,
    output length (3 + 2 - 1) / 2 + 1 = 3 (padding zeros at both ends), spatial stride 2."""
    x = np.arange(3 * 3 * 3, dtype=np.float64).reshape(1, 1, 3, 3, 3)
    layer = make_layer("Convolution3D", "convolution3d_param { num_output: 1 kernel_size: 1 "
                       "kernel_depth: 1 stride: 2 temporal_stride: 2 temporal_pad: 1 }",
                       blobs=(np.ones((1, 1, 1, 1, 1)), np.full((1, 1, 1, 1, 1), 0.5)))
    y = run1(layer, x)
    assert y.shape == (1, 1, 3, 2, 2)
    np.testing.assert_array_equal(y[0, 0, 0], 0.5)  # a padded frame
    np.testing.assert_array_equal(y[0, 0, 1], x[0, 0, 1, ::2, ::2] + 0.5)


def test_pooling3d_ceil_without_clip_and_divisor() -> None:
    """C3D: ceil((4 - 3) / 2) + 1 = 2 windows of 3 on 4 (rows 0..2, then 2..3, clipped); AVE
    divides the clipped one by what lies inside H + pad (2 rows), so ones stay ones."""
    x = np.ones((1, 1, 1, 4, 4))
    layer = make_layer("Pooling3D", "pooling3d_param { pool: AVE kernel_size: 3 stride: 2 "
                       "kernel_depth: 1 }")
    y = run1(layer, x)
    assert y.shape == (1, 1, 1, 2, 2)
    np.testing.assert_allclose(y[0, 0, 0], [[1, 1], [1, 1]])
    mx = make_layer("Pooling3D", "pooling3d_param { kernel_size: 2 stride: 2 kernel_depth: 2 "
                    "temporal_stride: 1 }")
    z = run1(mx, np.arange(3 * 3 * 3, dtype=np.float64).reshape(1, 1, 3, 3, 3))
    assert z.shape == (1, 1, 2, 2, 2)
    assert z[0, 0, 1, 1, 1] == 26.0 and z[0, 0, 0, 0, 0] == 13.0


def test_pooling3d_ave_pad_counts_padding() -> None:
    x = np.ones((1, 1, 1, 2, 2))
    layer = make_layer("Pooling3D", "pooling3d_param { pool: AVE kernel_size: 2 stride: 2 "
                       "pad: 1 kernel_depth: 1 }")
    y = run1(layer, x)
    assert y.shape == (1, 1, 1, 2, 2)
    np.testing.assert_allclose(y, 0.25)  # one real cell in each 2 x 2 window


def test_pooling3d_max_with_pad_is_refused() -> None:
    layer = make_layer("Pooling3D", "pooling3d_param { kernel_size: 2 pad: 1 kernel_depth: 1 }")
    with pytest.raises(ValueError):
        run1(layer, np.ones((1, 1, 1, 2, 2)))
