"""Hand-computed self-tests of the SSD reference (tests/reference/detection.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.reference_layers import make_layer, run1
from tests.reference import detection as det


def test_permute_appends_unlisted_axes_in_order() -> None:
    x = np.arange(24.0).reshape(2, 3, 4)
    y = run1(make_layer("Permute", "permute_param { order: 2 }"), x)
    assert y.shape == (4, 2, 3)
    assert y[1, 0, 2] == x[0, 2, 1]


def test_normalize_eps_inside_the_root() -> None:
    # one channel-shared scale 2, across_spatial: x / sqrt(3^2 + 4^2 + eps) * 2
    layer = make_layer("Normalize", "norm_param { eps: 11 }", blobs=([2.0],))
    y = run1(layer, np.array([[[[3.0]], [[4.0]]]]))
    np.testing.assert_allclose(y.ravel(), [3 / 6 * 2, 4 / 6 * 2])  # sqrt(25 + 11) = 6


def test_normalize_per_position_per_channel_scale() -> None:
    layer = make_layer("Normalize", "norm_param { across_spatial: false channel_shared: false "
                       "eps: 0 }", blobs=([1.0, 10.0],))
    x = np.array([[[[3.0, 1.0]], [[4.0, 0.0]]]])  # positions: (3,4) -> /5 ; (1,0) -> /1
    y = run1(layer, x)
    np.testing.assert_allclose(y[0, :, 0], [[0.6, 1.0], [8.0, 0.0]])


def test_prior_box_order_and_int_sizes() -> None:
    # 1x1 map on a 100x100 image: centre 50; min 20.5 is read as 20, max 45 -> sqrt(900) = 30
    layer = make_layer("PriorBox", "prior_box_param { min_size: 20.5 max_size: 45 "
                       "aspect_ratio: 4 flip: true variance: 0.1 }")
    out = run1(layer, np.zeros((1, 1, 1, 1)), np.zeros((1, 3, 100, 100)))
    boxes = out[0, 0].reshape(-1, 4)
    np.testing.assert_allclose(boxes[0], [0.4, 0.4, 0.6, 0.6])          # 20 x 20
    np.testing.assert_allclose(boxes[1], [0.35, 0.35, 0.65, 0.65])      # 30 x 30
    np.testing.assert_allclose(boxes[2], [0.3, 0.45, 0.7, 0.55], atol=1e-6)  # 40 x 10 (ar 4)
    np.testing.assert_allclose(boxes[3], [0.45, 0.3, 0.55, 0.7], atol=1e-6)  # 10 x 40 (1/4)
    assert np.all(out[0, 1] == np.float32(0.1))


def test_prior_box_step_offset_clip_and_img_size() -> None:
    layer = make_layer("PriorBox", "prior_box_param { min_size: 4 clip: true img_h: 8 "
                       "img_w: 16 step_h: 4 step_w: 8 offset: 0 variance: 1 variance: 2 "
                       "variance: 3 variance: 4 }")
    out = run1(layer, np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 5, 5)))
    boxes = out[0, 0].reshape(2, 2, 4)
    np.testing.assert_allclose(boxes[0, 0], [0, 0, 2 / 16, 2 / 8])       # clipped at 0
    np.testing.assert_allclose(boxes[1, 1], [6 / 16, 2 / 8, 10 / 16, 6 / 8])
    np.testing.assert_allclose(out[0, 1, :8], [1, 2, 3, 4, 1, 2, 3, 4])


def test_jaccard_and_inverted_box_size() -> None:
    a, b = np.array([0, 0, 2, 2.0]), np.array([1, 1, 3, 3.0])
    assert det.jaccard(a, b) == pytest.approx(1 / 7)
    assert det.bbox_size(np.array([1, 0, 0, 1.0])) == 0
    assert det.jaccard(a, np.array([2, 0, 3, 2.0])) == 0  # touching: no positive width


def test_nms_ties_keep_prior_order_and_overlap_equal_threshold_is_kept() -> None:
    boxes = [np.array([0, 0, 2, 2.0]), np.array([1, 1, 3, 3.0]), np.array([0, 0, 2, 2.0])]
    scores = np.array([0.5, 0.5, 0.5])
    # IoU(0, 1) = 1/7 <= 1/7 keeps both; box 2 equals box 0 (IoU 1) and goes.
    assert det.nms_fast(boxes, scores, 0.0, 1 / 7, 1.0, -1) == [0, 1]
    assert det.nms_fast(boxes, scores, 0.0, 0.1, 1.0, -1) == [0]
    assert det.nms_fast(boxes, scores, 0.5, 0.1, 1.0, -1) == []  # score must be > threshold


def test_nms_eta_shrinks_threshold_after_each_keep() -> None:
    # IoU(b, a) = IoU(c, a) = 0.6, IoU(c, b) = 0.2. Keeping a shrinks 0.7 to 0.56: b and c go.
    a, b, c = np.array([0, 0, 10, 1.0]), np.array([0, 0, 6, 1.0]), np.array([4, 0, 10, 1.0])
    scores = np.array([0.9, 0.8, 0.7])
    assert det.nms_fast([a, b, c], scores, 0.0, 0.7, 0.8, -1) == [0]
    # 0.58 > 0.5 shrinks once to 0.29 and no further (c vs b: 0.2 <= 0.29)
    assert det.nms_fast([b, c], scores[1:], 0.0, 0.58, 0.5, -1) == [0, 1]
    assert det.nms_fast([a, b, c], scores, 0.0, 0.7, 1.0, -1) == [0, 1, 2]


def test_decode_center_size() -> None:
    prior, var = np.array([0.2, 0.2, 0.6, 0.4]), np.array([0.1, 0.1, 0.2, 0.2])
    box = det.decode(prior, var, det.CENTER_SIZE, False, np.array([1.0, -1.0, 0.0, 5 * np.log(2)]))
    # centre (0.4 + 0.1*0.4, 0.3 - 0.1*0.2), size (0.4, 0.2*2)
    np.testing.assert_allclose(box, [0.24, 0.08, 0.64, 0.48])
    np.testing.assert_allclose(det.decode(prior, var, det.CORNER_SIZE, True, np.ones(4)),
                               [0.6, 0.4, 1.0, 0.6])


def test_detection_output_rows_and_no_detection_row() -> None:
    layer = make_layer("DetectionOutput", "detection_output_param { num_classes: 3 "
                       "code_type: CORNER confidence_threshold: 0.5 nms_param { "
                       "nms_threshold: 0.5 } }")
    prior = np.array([[[0, 0, 1, 1, 0, 0, .5, .5], [0.1] * 8]])
    loc = np.zeros((2, 8))
    conf = np.array([[0.1, 0.2, 0.7, 0.1, 0.8, 0.6], [0.9, 0.1, 0.1, 0.9, 0.1, 0.1]])
    out = run1(layer, loc, conf, prior)
    np.testing.assert_allclose(out[0, 0], [[0, 1, 0.8, 0, 0, .5, .5], [0, 2, 0.7, 0, 0, 1, 1],
                                           [0, 2, 0.6, 0, 0, .5, .5]])
    none = run1(layer, loc, np.full((2, 6), 0.2), prior)
    np.testing.assert_allclose(none[0, 0], [[0] + [-1] * 6, [1] + [-1] * 6])
