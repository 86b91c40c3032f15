"""YOLO ports against the numpy reference: Reorg and MobileNet-YOLO's YoloDetectionOutput
(YOLOv2) and Yolov3DetectionOutput."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_bridge.build import build_module
from caffe_bridge.errors import CaffeBridgeError
from tests import reference
from tests.helpers.layer_check import (
    check_batch,
    check_layer,
    layer_text,
    net_from_text,
    net_text,
    rel_err,
)

COVERS = {"Reorg", "Yolov3DetectionOutput", "YoloDetectionOutput"}


@pytest.mark.parametrize("stride,shape,reverse", [
    (2, (2, 8, 4, 6), False),
    (2, (1, 4, 2, 2), False),
    (3, (2, 18, 6, 3), False),
    (2, (2, 8, 3, 5), True),
], ids=["s2", "s2-minimal", "s3", "reverse"])
def test_reorg_matches_darknet(stride: int, shape: tuple[int, ...], reverse: bool) -> None:
    body = f"reorg_param {{ stride: {stride} reverse: {str(reverse).lower()} }}"
    check_layer(net_text(layer_text("Reorg", body), shape), rtol=0)


def test_reorg_batch() -> None:
    check_batch(layer_text("Reorg", "reorg_param { stride: 2 }"), (1, 8, 4, 4))


def test_reorg_is_not_space_to_depth() -> None:
    """darknet's reorg reads the 4-channel 2 x 2 buffer (values 0..15) as one 4 x 4 plane and
    takes every other element: the first output channels hold 0, 2, 8, 10 (pixel_unshuffle
    would give 0, 1, 2, 3: channel 0's pixels)."""
    x = torch.arange(16, dtype=torch.float32).reshape(1, 4, 2, 2)
    net = net_from_text(net_text(layer_text("Reorg", "reorg_param { stride: 2 }"), (1, 4, 2, 2)))
    with torch.no_grad():
        out = build_module(net)(x)
    ref = reference.run_net(net, {"data": x.numpy()})["out"]
    np.testing.assert_array_equal(out.numpy(), ref)
    assert out.shape == (1, 16, 1, 1)
    unshuffled = torch.nn.functional.pixel_unshuffle(x, 2)
    assert not torch.equal(out, unshuffled)
    np.testing.assert_array_equal(out.flatten()[:4].numpy(), [0, 2, 8, 10])


def test_reorg_rejects_indivisible() -> None:
    with pytest.raises(CaffeBridgeError, match="stride"):
        net_from_text(net_text(layer_text("Reorg", "reorg_param { stride: 2 }"), (1, 8, 5, 4)))


# --- Yolov3DetectionOutput ----------------------------------------------------------------

def yolo_text(ncls: int, shapes: list[tuple[int, ...]], conf: float = 0.5, nms: float = 0.45,
              nbox: int = 3) -> str:
    mask = " ".join(f"mask: {m}" for m in [3, 4, 5, 0, 1, 2][:nbox * len(shapes)])
    biases = " ".join(f"biases: {b}" for b in [10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344,
                                               319])
    scales = " ".join(f"anchors_scale: {a}" for a in [32, 16][:len(shapes)])
    body = (f"yolov3_detection_output_param {{ num_classes: {ncls} num_box: {nbox} "
            f"confidence_threshold: {conf} nms_threshold: {nms} {biases} {mask} "
            f"mask_group_num: {len(shapes)} {scales} }}")
    return net_text(layer_text("Yolov3DetectionOutput", body, len(shapes)), *shapes)


def run_yolo(text: str, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    net = net_from_text(text)
    ref = reference.run_net(net, feeds)[net.outputs[0]]
    with torch.no_grad():
        got = build_module(net)(*(torch.from_numpy(feeds[n]) for n in net.inputs))
    return got.numpy(), ref


def yolo_feeds(shapes: list[tuple[int, ...]], seed: int, spread: float = 2.0
               ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = ["data", "b1"]
    return {n: (rng.standard_normal(s) * spread).astype(np.float32)
            for n, s in zip(names, shapes, strict=False)}


@pytest.mark.parametrize("ncls,shapes,conf,nms", [
    (3, [(1, 24, 3, 4), (1, 24, 6, 8)], 0.6, 0.45),
    (2, [(1, 21, 5, 5)], 0.3, 0.3),
    (4, [(1, 27, 2, 3), (1, 27, 4, 6)], 0.2, 0.6),
], ids=["two-scales", "one-scale-low-threshold", "many-detections"])
def test_yolov3_detection_output_matches_source(ncls: int, shapes: list, conf: float,
                                                nms: float) -> None:
    text = yolo_text(ncls, shapes, conf, nms)
    got, want = run_yolo(text, yolo_feeds(shapes, 3))
    assert want.shape[2] > 2
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-6


def test_yolov3_no_detection_row() -> None:
    """Nothing above the threshold: one row per image, [i, -1, -1, -1, -1, -1, -1]."""
    shapes = [(2, 24, 2, 2), (2, 24, 4, 4)]
    feeds = {k: np.full(s, -8, np.float32) for k, s in zip(("data", "b1"), shapes,
                                                             strict=True)}
    got, want = run_yolo(yolo_text(3, shapes, 0.5), feeds)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[0, 0], [[0, -1, -1, -1, -1, -1, -1],
                                              [1, -1, -1, -1, -1, -1, -1]])


def test_yolov3_nms_is_class_agnostic_and_inclusive() -> None:
    """Two classes on the same box both pass the threshold: IoU 1 >= 0.45, so the weaker
    class is dropped (per-class NMS would keep both)."""
    shapes = [(1, 21, 1, 1)]
    x = np.full(shapes[0], -8, np.float32)
    x[0, 4] = 8  # anchor 0: object
    x[0, 5], x[0, 6] = 3, 2  # classes 0 and 1, both confident
    got, want = run_yolo(yolo_text(2, shapes, 0.5, 0.45), {"data": x})
    np.testing.assert_array_equal(got.shape, (1, 1, 1, 7))
    assert got[0, 0, 0, 1] == 1 and rel_err(got, want) < 1e-6


def test_yolov3_rejects_group_mismatch() -> None:
    text = yolo_text(3, [(1, 24, 2, 2)]).replace("mask_group_num: 1", "mask_group_num: 2")
    with pytest.raises(CaffeBridgeError, match="mask_group_num"):
        net_from_text(text)


def test_yolov3_retraces_with_fx() -> None:
    shapes = [(1, 24, 3, 4), (1, 24, 6, 8)]
    feeds = yolo_feeds(shapes, 4)
    model = build_module(net_from_text(yolo_text(3, shapes)))
    traced = torch.fx.symbolic_trace(model)
    args = [torch.from_numpy(feeds[k]) for k in ("data", "b1")]
    with torch.no_grad():
        assert torch.equal(traced(*args), model(*args))


# --- YoloDetectionOutput (YOLOv2) ---------------------------------------------------------

def yolo2_text(ncls: int, shapes: list[tuple[int, ...]], conf: float = 0.5,
               nms: float = 0.45, nbox: int = 2) -> str:
    biases = " ".join(f"biases: {b}" for b in [1.08, 1.19, 3.42, 4.41, 6.63, 11.38][:2 * nbox])
    body = (f"yolo_detection_output_param {{ num_classes: {ncls} num_box: {nbox} "
            f"confidence_threshold: {conf} nms_threshold: {nms} {biases} }}")
    return net_text(layer_text("YoloDetectionOutput", body, len(shapes)), *shapes)


@pytest.mark.parametrize("ncls,shapes,conf,nms", [
    (3, [(1, 16, 4, 4)], 0.3, 0.45),
    (2, [(1, 14, 3, 3), (1, 14, 6, 6)], 0.2, 0.3),
    (4, [(2, 18, 3, 3)], 0.25, 0.6),     # two images: pooled, all labelled image 0
], ids=["one-bottom", "two-bottoms", "batch-2"])
def test_yolo_detection_output_matches_source(ncls: int, shapes: list, conf: float,
                                              nms: float) -> None:
    got, want = run_yolo(yolo2_text(ncls, shapes, conf, nms), yolo_feeds(shapes, 5))
    assert want.shape[2] > 2
    assert got.shape == want.shape
    np.testing.assert_array_equal(got[..., :2], want[..., :2])
    assert rel_err(got, want) < 1e-6


def test_yolo2_tied_classes_take_the_first_and_threshold_is_inclusive() -> None:
    """Equal class logits: the first class wins (strict > in the source); a confidence equal
    to the threshold is kept (>=, unlike Yolov3DetectionOutput's >)."""
    x = np.zeros((1, 8, 1, 1), np.float32)  # one box, 3 classes, all logits 0
    conf = np.float32(0.5) * np.float32(1 / 3)
    got, want = run_yolo(yolo2_text(3, [(1, 8, 1, 1)], float(conf), nbox=1), {"data": x})
    np.testing.assert_array_equal(got, want)
    assert got.shape == (1, 1, 1, 7) and got[0, 0, 0, 1] == 1


def test_yolo2_rejects_non_square() -> None:
    with pytest.raises(CaffeBridgeError, match="square"):
        net_from_text(yolo2_text(3, [(1, 16, 4, 5)]))


def test_nms_sets_degenerate_boxes_apart_exactly() -> None:
    """Zero, infinite or NaN boxes never reach IoU >= a positive threshold: kept, suppressing
    nothing, without a loop pass each (an infinite anchor made thousands: a fuzzing hang)."""
    import torch

    from caffe_bridge.converters.yolo import _suppress

    inf, nan = float("inf"), float("nan")
    boxes = torch.tensor([[.5, .5, .4, .4], [.5, .5, inf, .4], [.52, .5, .4, .4],
                          [.5, .5, 0., .4], [nan, .5, .4, .4], [.9, .9, .1, .1],
                          [.5, .5, -.4, .4], [.5, .5, .4, 1e-30]])
    assert _suppress(boxes, 0.45).tolist() == [True, True, False, True, True, True, True, True]
    finite = boxes[torch.arange(len(boxes)) != 4]  # (Python's min/max do not propagate NaN)
    for t in (0.45, 0.0, -1.0):  # the one-box-at-a-time loop decides (no shortcut at t <= 0)
        assert _suppress(finite, t).tolist() == _greedy(finite.double().tolist(), t), t
    many = torch.cat([boxes[:1], torch.tensor([[.5, .5, inf, .4]]).repeat(20000, 1)])
    assert _suppress(many, 0.45).all()


def _greedy(boxes: list[list[float]], t: float) -> list[bool]:
    """Plain greedy NMS, float64, centre boxes, no +1."""

    def iou(a: list[float], b: list[float]) -> float:
        ow = min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2)
        oh = min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2)
        inter = 0.0 if ow < 0 or oh < 0 else ow * oh
        union = a[2] * a[3] + b[2] * b[3] - inter
        with np.errstate(all="ignore"):
            return float(np.float64(inter) / np.float64(union))

    alive, keep = [True] * len(boxes), [False] * len(boxes)
    for i in range(len(boxes)):
        if alive[i]:
            keep[i] = True
            for j in range(i + 1, len(boxes)):
                alive[j] = alive[j] and not iou(boxes[i], boxes[j]) >= t
    return keep
