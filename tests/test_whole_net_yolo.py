"""YOLO Caffe ports of eric612/MobileNet-YOLO (tests/fixtures/wild/, unchanged) with seeded
random weights, against OpenCV.

OpenCV runs neither YoloDetectionOutput nor Yolov3DetectionOutput, so it gets copies without the
detection layer (and the test's copies declare a 128 x 128 input to stay fast): darknet19
(YOLOv2, with the Reorg passthrough) and YOLOv3-tiny (Deconvolution upsampling, two heads)
must give the same head tensors (bound: 1e-5, or 3x the net's float32 noise floor). Our
detection layers then run on the full nets and are compared with the numpy reference decoding
our own head tensors. Random weights put
nearly every (cell, anchor, class) above the released 0.01 threshold; the copy raises it so
that a few hundred boxes reach NMS.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe_bridge.build import build_module
from caffe_bridge.ir import load_net, with_weights
from caffe_bridge.numeric import rel_err
from caffe_bridge.opencv_reference import opencv_forward
from caffe_bridge.prototxt import parse_prototxt
from caffe_bridge.random_weights import random_weights
from tests.helpers.wild import WILD
from tests.reference import yolo as yolo_ref

pytestmark = pytest.mark.skipif(importlib.util.find_spec("cv2") is None,
                                reason="OpenCV (cv2) is not installed")

DARKNET19 = WILD / "MobileNet-YOLO_darknet19_deploy.prototxt"
TINY = WILD / "MobileNet-YOLO_yolov3-tiny.prototxt"
SIZE = 128
CONF = 0.45


def variant(src: Path, tmp: Path, keep_detection: bool) -> Path:
    """A copy with a SIZE x SIZE input; without the detection layer unless asked to keep it
    (then with confidence_threshold CONF)."""
    net = parse_prototxt(src).net
    for i in reversed(range(len(net.layer))):
        lay = net.layer[i]
        if lay.type.endswith("DetectionOutput"):
            if keep_detection and lay.type == "YoloDetectionOutput":
                lay.yolo_detection_output_param.confidence_threshold = CONF
            elif keep_detection:
                lay.yolov3_detection_output_param.confidence_threshold = CONF
            else:
                del net.layer[i]
    dims = net.input_shape[0].dim if net.input_shape else net.input_dim
    dims[2] = dims[3] = SIZE
    path = tmp / f"{src.stem}{'_det' if keep_detection else ''}.prototxt"
    path.write_text(text_format.MessageToString(net), encoding="utf-8")
    return path


def heads(src: Path, tmp: Path) -> tuple[dict, dict, dict, np.ndarray, float]:
    """(ours, OpenCV's) head tensors by Caffe name, the weights, the input and the float32 noise
    floor of the heads (our graph in float32 against the same graph in float64)."""
    path = variant(src, tmp, keep_detection=False)
    net = load_net(path)
    weights = random_weights(net, 0)
    net = with_weights(net, weights)
    x = np.random.default_rng(1).uniform(-1, 1, net.inputs["data"]).astype(np.float32)
    model = build_module(net)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
        out64 = model.double()(torch.from_numpy(x).double())
    outs = out if isinstance(out, tuple) else (out,)
    outs64 = out64 if isinstance(out64, tuple) else (out64,)
    names = [net.blobs[v].caffe_name for v in net.outputs]
    ours = {n: o.numpy() for n, o in zip(names, outs, strict=True)}
    floor = max(rel_err(o.numpy(), o64.numpy()) for o, o64 in zip(outs, outs64, strict=True))
    return ours, opencv_forward(path, weights, {"data": x}, names), weights, x, floor


def bound(floor: float) -> float:
    """1e-5, or 3x the float32 noise floor of a net where two float32 runs cannot agree better
    (the rule of tests/test_whole_net.py)."""
    return max(1e-5, 3 * floor)


def detections(src: Path, tmp: Path, weights: dict, x: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Our full net's detections, and the numpy reference decoding our own head tensors (the
    heads are compared with OpenCV's separately: exp() in the box sizes amplifies their float32
    differences, so decoding OpenCV's heads would test OpenCV's rounding, not the decoder)."""
    full = with_weights(load_net(variant(src, tmp, keep_detection=True)), weights)
    (det,) = [lay for lay in full.layers if lay.type.endswith("DetectionOutput")]
    model = build_module(full, outputs=[*det.bottoms, *det.tops])
    with torch.no_grad():
        *head_values, got = model(torch.from_numpy(x))
    fn = {"YoloDetectionOutput": yolo_ref.yolo_detection_output,
          "Yolov3DetectionOutput": yolo_ref.yolov3_detection_output}[det.type]
    (want,) = fn(SimpleNamespace(param=det.param), [h.numpy() for h in head_values])
    return got.numpy(), want


def assert_same_detections(got: np.ndarray, want: np.ndarray) -> None:
    assert 10 < want.shape[2] < 1000, want.shape
    assert got.shape == want.shape
    np.testing.assert_array_equal(got[0, 0, :, :2], want[0, 0, :, :2])  # image, label
    assert rel_err(got[..., 2:], want[..., 2:]) < 1e-6


def test_darknet19_yolov2_with_reorg(tmp_path: Path) -> None:
    ours, ref, weights, x, floor = heads(DARKNET19, tmp_path)
    assert list(ours) == ["conv23_indoor"] and ours["conv23_indoor"].shape == (1, 125, 4, 4)
    assert floor < 1e-5
    assert rel_err(ours["conv23_indoor"], ref["conv23_indoor"]) < bound(floor)
    assert_same_detections(*detections(DARKNET19, tmp_path, weights, x))


def test_yolov3_tiny_heads_and_detections(tmp_path: Path) -> None:
    ours, ref, weights, x, floor = heads(TINY, tmp_path)
    for name in ours:
        assert rel_err(ours[name], ref[name]) < bound(floor), name
    assert_same_detections(*detections(TINY, tmp_path, weights, x))
