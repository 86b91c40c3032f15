"""Hand-computed checks of the R-CNN numpy reference (tests/reference/rcnn.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from caffe_bridge import schema
from tests.reference import rcnn


def layer(type_: str, **params: dict) -> SimpleNamespace:
    p = schema.LayerParameter(type=type_, **params)
    return SimpleNamespace(type=type_, param=p, blobs=(), tops=("out",))


def test_c_round_sends_halves_away_from_zero() -> None:
    got = rcnn.c_round(np.array([2.5, -2.5, 0.5, 1.5, 1.4999, -0.5, np.float32(0.49999997)]))
    np.testing.assert_array_equal(got, [3, -3, 1, 2, 1, -1, 0])


def roi_layer(ph: int, pw: int, scale: float) -> SimpleNamespace:
    return layer("ROIPooling", roi_pooling_param={"pooled_h": ph, "pooled_w": pw,
                                                  "spatial_scale": scale})


def test_roi_pooling_by_hand() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    rois = np.array([[0, 0, 0, 3, 3],      # 4 x 4 in 2 x 2 bins of 2 x 2
                     [0, 1, 1, 2, 2],      # 2 x 2 in 2 x 2 bins of 1 x 1
                     [0, 9, 9, 12, 12],    # outside the map: all bins empty -> 0
                     [0, 2, 0, 2, 2]],     # 1 wide x 3 high: bins [0,2) and [1,3) overlap
                    np.float32)
    (out,) = rcnn.roi_pooling(roi_layer(2, 2, 1.0), [x, rois])
    np.testing.assert_array_equal(out[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(out[1, 0], [[5, 6], [9, 10]])
    np.testing.assert_array_equal(out[2, 0], [[0, 0], [0, 0]])
    np.testing.assert_array_equal(out[3, 0], [[6, 6], [10, 10]])


def test_roi_pooling_scale_rounds_half_away() -> None:
    """x1 = 24 / 16 = 1.5 -> column 2; x2 = 40 / 16 = 2.5 -> column 3 (C round)."""
    x = np.tile(np.arange(5, dtype=np.float32), (1, 1, 1, 1))
    (out,) = rcnn.roi_pooling(roi_layer(1, 2, 1 / 16), [x, np.array([[0, 24, 0, 40, 0]],
                                                                    np.float32)])
    np.testing.assert_array_equal(out[0, 0], [[2, 3]])


def test_psroi_pooling_by_hand() -> None:
    """G = 2, one output channel: bin (i, j) averages input channel i * 2 + j over its bin.
    roi (0, 0)-(3, 3) at scale 1: size 4, bins of 2 x 2."""
    x = np.arange(4 * 16, dtype=np.float32).reshape(1, 4, 4, 4)
    lay = layer("PSROIPooling", psroi_pooling_param={"spatial_scale": 1.0, "output_dim": 1,
                                                     "group_size": 2})
    (out,) = rcnn.psroi_pooling(lay, [x, np.array([[0, 0, 0, 3, 3]], np.float32)])
    want = [[x[0, 0, :2, :2].mean(), x[0, 1, :2, 2:].mean()],
            [x[0, 2, 2:, :2].mean(), x[0, 3, 2:, 2:].mean()]]
    np.testing.assert_allclose(out[0, 0], want)
    assert out[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4


def test_psroi_small_roi_uses_floor_ceil_bins() -> None:
    """roi (1, 1)-(1, 1), scale 1: start 1, end 2, bins of 0.5: [1, 2) for every bin."""
    x = np.arange(4 * 9, dtype=np.float32).reshape(1, 4, 3, 3)
    lay = layer("PSROIPooling", psroi_pooling_param={"spatial_scale": 1.0, "output_dim": 1,
                                                     "group_size": 2})
    (out,) = rcnn.psroi_pooling(lay, [x, np.array([[0, 1, 1, 1, 1]], np.float32)])
    np.testing.assert_array_equal(out[0, 0], [[4, 13], [22, 31]])


def test_anchors_are_py_faster_rcnns() -> None:
    """generate_anchors.py's comments quote the MATLAB release's table, which is 1-based: the
    Python source (what the released models run) gives that table minus 1 (checked by running
    the source)."""
    want = [[-83, -39, 100, 56], [-175, -87, 192, 104], [-359, -183, 376, 200],
            [-55, -55, 72, 72], [-119, -119, 136, 136], [-247, -247, 264, 264],
            [-35, -79, 52, 96], [-79, -167, 96, 184], [-167, -343, 184, 360]]
    np.testing.assert_array_equal(rcnn.generate_anchors(), np.array(want) - 1)


def test_nms_keeps_overlap_equal_to_threshold() -> None:
    """Boxes (0,0,9,9) and (0,0,9,19): areas 100 and 200 with +1, overlap 100 / 200 = 0.5."""
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 19], [1, 1, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert rcnn.py_cpu_nms(boxes, scores, 0.5) == [0, 1]        # IoU(0, 2) = 81/119 > 0.5
    assert rcnn.py_cpu_nms(boxes, scores, 0.4999) == [0]        # box 1 suppressed
    assert rcnn.py_cpu_nms(boxes, scores, 0.7) == [0, 1, 2]


def test_nms_ties_follow_numpy_argsort_reversed() -> None:
    """Equal scores: argsort()[::-1] on a short array visits the highest index first."""
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 9]], np.float32)
    scores = np.array([0.5, 0.5, 0.5], np.float32)
    assert rcnn.py_cpu_nms(boxes, scores, 0.7) == [2]
    assert list(scores.argsort()[::-1]) == [2, 1, 0]  # numpy's own default, on <= 16 items


def test_proposals_by_hand() -> None:
    """One cell, one anchor (0, 0, 15, 15), zero deltas: bbox_transform_inv's centre is
    x1 + 0.5 * (w + 1) = 8, so the box is (0, 0, 16, 16), 17 wide: it passes min size
    16 * 1.0625 = 17 (>=) and fails 16 * 1.07; dx = 1 moves it to 16..32, clipped to 29
    (then 14 wide)."""
    anchors = rcnn.generate_anchors(16, (1,), (1,))
    np.testing.assert_array_equal(anchors, [[0, 0, 15, 15]])
    scores = np.array([[[0.1]], [[0.6]]], np.float32)
    zero = np.zeros((4, 1, 1), np.float32)
    cfg = dict(feat_stride=16, anchors=anchors, pre_nms=10, post_nms=10, nms_thresh=0.7,
               min_size=16)
    rois, sc = rcnn.proposals(scores, zero, np.array([100, 100, 1.0625], np.float32), **cfg)
    np.testing.assert_array_equal(rois, [[0, 0, 0, 16, 16]])
    np.testing.assert_array_equal(sc, [[np.float32(0.6)]])
    rois, _ = rcnn.proposals(scores, zero, np.array([100, 100, 1.07], np.float32), **cfg)
    assert rois.shape == (0, 5)
    deltas = np.array([1, 0, 0, 0], np.float32).reshape(4, 1, 1)
    rois, _ = rcnn.proposals(scores, deltas, np.array([100, 30, 1], np.float32),
                             **{**cfg, "min_size": 14})
    np.testing.assert_array_equal(rois, [[0, 16, 0, 29, 16]])


@pytest.mark.parametrize("text,want", [
    ("'feat_stride': 16", {"feat_stride": 16}),
    ("{'feat_stride': 8, 'scales': [4, 8]}", {"feat_stride": 8, "scales": [4, 8]}),
    ("'feat_stride': 16\n'scales': !!python/tuple [8, 16, 32]",
     {"feat_stride": 16, "scales": [8, 16, 32]}),
])
def test_param_str(text: str, want: dict) -> None:
    assert rcnn._yaml_dict(text) == want
