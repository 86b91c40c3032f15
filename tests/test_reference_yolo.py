"""Hand-computed checks of the YOLO numpy reference (tests/reference/yolo.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from caffe_bridge import schema
from tests.reference import yolo


def layer(type_: str, **params: dict) -> SimpleNamespace:
    return SimpleNamespace(type=type_, param=schema.LayerParameter(type=type_, **params),
                           blobs=(), tops=("out",))


def test_reorg_by_hand() -> None:
    """(1, 4, 2, 2), values 0..15, stride 2: the buffer read as one 4 x 4 plane (value
    8 j + 4 a + 2 i + b at row 2 j + a, column 2 i + b); output channel 2 a + b holds the
    plane's (a, b) phase: 0 2 8 10 | 1 3 9 11 | 4 6 12 14 | 5 7 13 15."""
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2)
    (out,) = yolo.reorg(layer("Reorg", reorg_param={"stride": 2}), [x])
    assert out.shape == (1, 16, 1, 1)
    np.testing.assert_array_equal(out.ravel(), [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14,
                                                5, 7, 13, 15])


def test_reorg_reverse_by_hand() -> None:
    """reverse on (1, 4, 1, 1): top index = (k % 2) + 2 (k / 2) = k, so a plain reshape."""
    x = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)
    (out,) = yolo.reorg(layer("Reorg", reorg_param={"stride": 2, "reverse": True}), [x])
    np.testing.assert_array_equal(out, [[[[0, 1], [2, 3]]]])


def test_reorg_needs_stride() -> None:
    with pytest.raises(ValueError, match="stride"):
        yolo.reorg(layer("Reorg"), [np.zeros((1, 4, 2, 2), np.float32)])


def test_iou_by_hand() -> None:
    a = np.array([0.5, 0.5, 1, 1], np.float32)
    assert yolo._iou(a, np.array([1, 0.5, 1, 1], np.float32)) == np.float32(0.5 / 1.5)
    assert yolo._iou(a, np.array([3, 3, 1, 1], np.float32)) == 0


def yolo_layer(**extra: object) -> SimpleNamespace:
    p = {"num_classes": 1, "num_box": 1, "confidence_threshold": 0.5, "nms_threshold": 0.45,
         "biases": [10, 14], "mask": [0], "mask_group_num": 1, "anchors_scale": [32], **extra}
    return layer("Yolov3DetectionOutput", yolov3_detection_output_param=p)


def test_yolov3_one_cell_by_hand() -> None:
    """1 x 1 grid, one anchor (10, 14) at scale 32: zero x, y, w, h logits give the box centred
    at (0.5, 0.5), 10 / 32 wide and 14 / 32 high; score sigmoid(8)^2."""
    x = np.array([0, 0, 0, 0, 8, 8], np.float32).reshape(1, 6, 1, 1)
    (out,) = yolo.yolov3_detection_output(yolo_layer(), [x])
    s = np.float32(1 / (1 + np.exp(np.float32(-8))))
    want = [0, 1, s * s, 0.5 - 0.15625, 0.5 - 0.21875, 0.5 + 0.15625, 0.5 + 0.21875]
    np.testing.assert_allclose(out[0, 0], [want], rtol=1e-7)


def test_yolov3_threshold_is_strict_and_nothing_gives_minus_one() -> None:
    x = np.array([0, 0, 0, 0, 0, 0], np.float32).reshape(1, 6, 1, 1)  # score 0.25
    (out,) = yolo.yolov3_detection_output(yolo_layer(confidence_threshold=0.25), [x])
    np.testing.assert_array_equal(out[0, 0], [[0, -1, -1, -1, -1, -1, -1]])
    (out,) = yolo.yolov3_detection_output(yolo_layer(confidence_threshold=0.2), [x])
    assert out[0, 0, 0, 2] == 0.25


def test_yolov3_two_cells_nms() -> None:
    """Cells (0, 0) and (1, 0) of a 2 x 1 grid with huge boxes overlap fully: the higher score
    wins; with nms_threshold 1.0 an IoU below 1 keeps both."""
    x = np.zeros((1, 6, 1, 2), np.float32)
    x[0, 2:4] = 4.0            # w, h logits: boxes e^4 * 10 / 64 wide -> IoU close to 1
    x[0, 4] = 8.0
    x[0, 5] = [2.0, 3.0]       # cell 1 scores higher
    (out,) = yolo.yolov3_detection_output(yolo_layer(), [x])
    half_w = np.exp(4.0) * 10 / 64 / 2
    assert out.shape == (1, 1, 1, 7)
    assert out[0, 0, 0, 3] == pytest.approx(0.75 - half_w, rel=1e-6)  # cell 1: centre 1.5 / 2
    (out,) = yolo.yolov3_detection_output(yolo_layer(nms_threshold=1.0), [x])
    assert out.shape == (1, 1, 2, 7) and out[0, 0, 0, 2] > out[0, 0, 1, 2]
