"""Self-tests of the Interp / Upsample / pooling-mask references: hand-computed numbers that a
PyTorch-style implementation (scale_factor, half-pixel centres, zero padding) would miss."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.reference_layers import make_layer, run1
from tests.reference import run_layer

X22 = np.array([[[[0.0, 1.0], [2.0, 3.0]]]])


def test_interp_zoom_is_h_plus_h_minus_1_times_z_minus_1():
    # zoom 2 on 2x2: 3x3 (not 4x4), sampled at 0, 0.5, 1 (corners aligned)
    y = run1(make_layer("Interp", "interp_param { zoom_factor: 2 }"), X22)
    assert np.allclose(y[0, 0], [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]])


def test_interp_output_size_1_takes_the_corner():
    y = run1(make_layer("Interp", "interp_param { height: 1 width: 1 }"), X22)
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == 0.0  # not the mean 1.5


def test_interp_negative_pads_crop_first():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    y = run1(make_layer("Interp", "interp_param { zoom_factor: 1 pad_beg: -1 pad_end: -1 }"), x)
    assert np.array_equal(y[0, 0], [[5, 6], [9, 10]])
    y = run1(make_layer("Interp", "interp_param { zoom_factor: 3 pad_beg: -1 pad_end: 0 }"), x)
    assert y.shape == (1, 1, 7, 7)  # 3 + 2 * 2
    assert y[0, 0, 0, 0] == 5 and y[0, 0, -1, -1] == 15 and np.isclose(y[0, 0, 0, 1], 5 + 1 / 3)


def test_interp_shrink_then_zoom():
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y = run1(make_layer("Interp", "interp_param { shrink_factor: 2 }"), x)
    assert np.array_equal(y[0, 0], x[0, 0, ::2, ::2])  # (5 - 1) / 2 + 1 = 3
    y = run1(make_layer("Interp", "interp_param { shrink_factor: 2 zoom_factor: 2 }"), x)
    assert y.shape == (1, 1, 5, 5) and np.allclose(y, x)  # 3 -> 5 aligned: the identity


def test_interp_rejects_positive_pad_and_missing_size():
    with pytest.raises(ValueError, match="non-positive"):
        run1(make_layer("Interp", "interp_param { zoom_factor: 2 pad_beg: 1 }"), X22)
    with pytest.raises(ValueError, match="height and width"):
        run1(make_layer("Interp", "interp_param { height: 3 }"), X22)


def test_unpool_scatters_and_later_writes_win():
    x = np.array([[[[5.0, 6.0]]]])
    y = run1(make_layer("Upsample", "upsample_param { scale: 2 }"), x, [[[[3.0, 0.0]]]])
    assert np.array_equal(y[0, 0], [[6, 0, 0, 5], [0, 0, 0, 0]])
    y = run1(make_layer("Upsample", "upsample_param { scale: 2 }"), x, [[[[1.0, 1.0]]]])
    assert np.array_equal(y[0, 0], [[0, 6, 0, 0], [0, 0, 0, 0]])


def test_unpool_sizes():
    x, m = np.ones((1, 1, 2, 3)), np.zeros((1, 1, 2, 3))
    assert run1(make_layer("Upsample", ""), x, m).shape == (1, 1, 4, 6)  # scale defaults to 2
    lay = make_layer("Upsample", "upsample_param { scale: 2 pad_out_h: true }")
    assert run1(lay, x, m).shape == (1, 1, 3, 6)
    lay = make_layer("Upsample", "upsample_param { upsample_h: 5 upsample_w: 7 }")
    assert run1(lay, x, m).shape == (1, 1, 5, 7)


def test_nearest_upsample_one_bottom():
    y = run1(make_layer("Upsample", "upsample_param { scale: 2 }"), [[[[1.0, 2.0]]]])
    assert np.array_equal(y[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2]])
    assert run1(make_layer("Upsample", ""), X22).shape == X22.shape  # YOLO ports: default 1


def test_pooling_mask_first_max_wins_and_padding_never_chosen():
    lay = make_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", tops=2)
    y, mask = run_layer(lay, [np.array([[[[1.0, 3.0], [3.0, 2.0]]]])])
    assert y[0, 0, 0, 0] == 3 and mask[0, 0, 0, 0] == 1  # (0, 1) before (1, 0)
    lay = make_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 pad: 1 }", tops=2)
    y, mask = run_layer(lay, [np.full((1, 1, 1, 1), -5.0)])
    assert np.array_equal(y, np.full((1, 1, 2, 2), -5.0)) and not mask.any()
    x = np.arange(12.0).reshape(1, 1, 3, 4)
    lay = make_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", tops=2)
    assert np.array_equal(run_layer(lay, [x])[1][0, 0], [[5, 7], [9, 11]])  # h * W + w
