"""YOLO ports: Reorg (YOLOv2's passthrough) and MobileNet-YOLO's Yolov3DetectionOutput.

Float32 where the source's arithmetic decides a discrete outcome (thresholds, NMS), as Caffe
runs with Dtype = float.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._util import Array, LayerFn, f64, get, has, values

F32 = np.float32


def reorg(layer: Any, inputs: list[Array]) -> list[Array]:
    """Darknet's reorg as Caffe ports run it, by flat indices.

    eric612/MobileNet-YOLO include/caffe/layers/reorg_layer.hpp reorg_cpu (called with the
    bottom's w, h, c and forward = reverse): for every bottom position (k, j, i),
    bottom_index = i + w (j + h k); c2 = k % (c / s^2), off = k / (c / s^2),
    w2 = i s + off % s, h2 = j s + off / s, top_index = w2 + w s (h2 + h s c2); then
    top[bottom_index] = bottom[top_index] (reverse: false) or top[top_index] =
    bottom[bottom_index] (reverse: true). opencv/opencv modules/dnn/src/layers/reorg_layer.cpp
    does the former. It is not a space-to-depth: it reinterprets the flat buffer.
    """
    p = layer.param.reorg_param
    if not has(p, "stride"):
        raise ValueError("Reorg needs reorg_param.stride")
    s, reverse = int(p.stride), bool(get(p, "reverse", False))
    x = f64(inputs[0])
    n, c, h, w = x.shape
    if s <= 0 or c % (s * s) or (not reverse and (h % s or w % s)):
        raise ValueError(f"Reorg stride {s} does not divide {x.shape}")
    k, j, i = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    oc = c // (s * s)
    bottom_index = (i + w * (j + h * k)).ravel()
    off = k // oc
    top_index = ((i * s + off % s) + w * s * ((j * s + off // s) + h * s * (k % oc))).ravel()
    src, dst = x.reshape(n, -1), np.empty((n, c * h * w))
    if reverse:
        dst[:, top_index] = src[:, bottom_index]
        return [dst.reshape(n, oc, h * s, w * s)]
    dst[:, bottom_index] = src[:, top_index]
    return [dst.reshape(n, c * s * s, h // s, w // s)]


def _sigmoid(x: Array) -> Array:
    return (1.0 / (1.0 + np.exp(-x.astype(F32)).astype(np.float64))).astype(F32)


def _iou(a: Array, b: Array) -> F32:
    """MobileNet-YOLO's box_iou on (x, y, w, h) centre boxes, float: overlap right - left of
    the edges x -+ w / 2; 0 intersection when either overlap is negative."""
    def overlap(c1: F32, s1: F32, c2: F32, s2: F32) -> F32:
        left = max(F32(c1 - s1 / F32(2)), F32(c2 - s2 / F32(2)))
        right = min(F32(c1 + s1 / F32(2)), F32(c2 + s2 / F32(2)))
        return F32(right - left)

    ow, oh = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = F32(0) if ow < 0 or oh < 0 else F32(ow * oh)
    union = F32(F32(a[2] * a[3]) + F32(b[2] * b[3]) - inter)
    with np.errstate(invalid="ignore", divide="ignore"):
        return F32(inter / union)


def _nms_rows(preds: list[tuple], nms: F32, bsz: int) -> Array:
    """Sort by confidence (descending, ties in generation order), greedy class-agnostic NMS
    (IoU >= nms drops), rows [0, class + 1, conf, x - w/2, y - h/2, x + w/2, y + h/2]; no
    detection: one row [i, -1, ..., -1] per image."""
    order = sorted(range(len(preds)), key=lambda i: -float(preds[i][0]))  # stable
    preds = [preds[i] for i in order]
    dead = [False] * len(preds)
    for i in range(len(preds)):
        if dead[i]:
            continue
        for j in range(i + 1, len(preds)):
            if not dead[j] and _iou(preds[i][2], preds[j][2]) >= nms:
                dead[j] = True
    rows = []
    for (conf, c, (x, y, w, h)), gone in zip(preds, dead, strict=True):
        if not gone:
            rows.append([0, c + 1, conf, F32(x - w / 2), F32(y - h / 2), F32(x + w / 2),
                         F32(y + h / 2)])
    if not rows:
        rows = [[i] + [-1] * 6 for i in range(bsz)]
    return np.asarray(rows, np.float64).reshape(1, 1, -1, 7)


def yolov3_detection_output(layer: Any, inputs: list[Array]) -> list[Array]:
    """eric612/MobileNet-YOLO src/caffe/layers/yolov3_detection_output_layer.cpp, Forward_cpu
    (box from src/caffe/util/bbox_util.cpp get_region_box; correct_yolo_boxes is the identity
    for relative boxes, since netw / w == neth / h).

    Per bottom t (grid H x W, anchors_scale[t] = a), image, cell s, anchor n: channels
    n * (5 + C) + (x, y, w, h, obj, classes); x, y, obj and classes through the sigmoid; box
    ((s % W + x) / W, (s / W + y) / H, exp(w) bias[2m] / (W a), exp(h) bias[2m + 1] / (H a)),
    m = mask[n + t * (len(mask) / mask_group_num)]; one prediction per class whose
    sigmoid(class) * obj > confidence_threshold, in the order (t, image, s, n, class). All are
    sorted by confidence, descending (std::sort: ties here in that order), then greedy
    class-agnostic NMS drops a box whose IoU with a kept one is >= nms_threshold. Rows
    [0, class + 1, conf, x - w/2, y - h/2, x + w/2, y + h/2] (image id 0 for every image: the
    source pools all images); none kept: one row per image [i, -1, -1, -1, -1, -1, -1].
    """
    p = layer.param.yolov3_detection_output_param
    if not has(p, "num_classes"):
        raise ValueError("Yolov3DetectionOutput needs num_classes")
    if get(p, "gaussian_box", False):
        raise NotImplementedError("gaussian_box is not in the reference")
    ncls, nbox = int(p.num_classes), int(get(p, "num_box", 3))
    thresh, nms = F32(get(p, "confidence_threshold", 0.01)), F32(get(p, "nms_threshold", 0.45))
    biases, mask = [F32(b) for b in values(p, "biases")], [int(m) for m in values(p, "mask")]
    scales = [int(a) for a in values(p, "anchors_scale")]
    groups = len(mask) // int(get(p, "mask_group_num", 2))
    length = 5 + ncls
    preds = []
    for t, x in enumerate(inputs):
        x = np.asarray(x, F32)
        bsz, _, hh, ww = x.shape
        nw, nh = ww * scales[t], hh * scales[t]
        for b in range(bsz):
            for s in range(hh * ww):
                for n in range(nbox):
                    v = x[b, n * length:(n + 1) * length].reshape(length, -1)[:, s]
                    sx, sy, obj = _sigmoid(v[0]), _sigmoid(v[1]), _sigmoid(v[4])
                    m = mask[n + t * groups]
                    box = (F32((s % ww + sx) / F32(ww)), F32((s // ww + sy) / F32(hh)),
                           F32(F32(np.exp(v[2]) * biases[2 * m]) / F32(nw)),
                           F32(F32(np.exp(v[3]) * biases[2 * m + 1]) / F32(nh)))
                    for c in range(ncls):
                        conf = F32(_sigmoid(v[5 + c]) * obj)
                        if conf > thresh:
                            preds.append((conf, c, box))
    return [_nms_rows(preds, nms, np.asarray(inputs[0]).shape[0])]


def _softmax_f32(v: Array) -> Array:
    e = np.exp((v - v.max()).astype(F32)).astype(F32)
    total = F32(0)
    for t in e:
        total = F32(total + t)
    return (e / total).astype(F32)


def yolo_detection_output(layer: Any, inputs: list[Array]) -> list[Array]:
    """eric612/MobileNet-YOLO src/caffe/layers/yolo_detection_output_layer.cpp (YOLOv2).

    Per bottom (1 or 2; square maps: side = width is used for rows and columns), image, cell
    (j, i), anchor n: channels n * (5 + C) + (x, y, w, h, obj, classes); box
    ((i + sig(x)) / side, (j + sig(y)) / side, exp(w) bias[2n] / side, exp(h) bias[2n+1] /
    side); class = first argmax of the softmax, conf = sig(obj) * its probability, kept when
    >= confidence_threshold (one prediction per anchor). Then as Yolov3DetectionOutput:
    std::sort by conf, class-agnostic NMS (IoU >= nms_threshold drops), rows with image 0.
    """
    p = layer.param.yolo_detection_output_param
    if not has(p, "num_classes"):
        raise ValueError("YoloDetectionOutput needs num_classes")
    ncls, nbox = int(p.num_classes), int(get(p, "num_box", 5))
    thresh, nms = F32(get(p, "confidence_threshold", 0.01)), F32(get(p, "nms_threshold", 0.45))
    biases = [F32(b) for b in values(p, "biases")]
    preds = []
    for x in inputs[:2]:
        x = np.asarray(x, F32)
        bsz, _, hh, side = x.shape
        if hh != side:
            raise ValueError(f"YoloDetectionOutput indexes rows by the width: {x.shape}")
        for b in range(bsz):
            for j in range(side):
                for i in range(side):
                    for n in range(nbox):
                        v = x[b, n * (5 + ncls):(n + 1) * (5 + ncls), j, i]
                        box = (F32((i + _sigmoid(v[0])) / F32(side)),
                               F32((j + _sigmoid(v[1])) / F32(side)),
                               F32(F32(np.exp(v[2]) * biases[2 * n]) / F32(side)),
                               F32(F32(np.exp(v[3]) * biases[2 * n + 1]) / F32(side)))
                        prob = _softmax_f32(v[5:])
                        c = int(np.argmax(prob))  # first maximum, as the source's strict >
                        conf = F32(_sigmoid(v[4]) * prob[c])
                        if conf >= thresh:
                            preds.append((conf, c, box))
    return [_nms_rows(preds, nms, np.asarray(inputs[0]).shape[0])]


LAYERS: dict[str, LayerFn] = {
    "Reorg": reorg,
    "Yolov3DetectionOutput": yolov3_detection_output,
    "YoloDetectionOutput": yolo_detection_output,
}
