"""YOLO ports: Reorg (YOLOv2's passthrough) and MobileNet-YOLO's Yolov3DetectionOutput.

Sources: eric612/MobileNet-YOLO include/caffe/layers/reorg_layer.hpp (reorg_cpu) and
src/caffe/layers/yolov3_detection_output_layer.cpp (+ src/caffe/util/bbox_util.cpp
get_region_box); opencv/opencv modules/dnn/src/layers/reorg_layer.cpp agrees on Reorg.

Reorg's trap: darknet's reorg is not a space-to-depth (``pixel_unshuffle``); it reads the input
buffer as if it were (C / s^2, H s, W s) and writes it as (C, H, W): a reshape and a permute.

Leaky ReLU is ``ReLU`` with ``negative_slope``; ``Upsample`` is in the resampling family.
``Region`` (YOLOv2's output layer) is not registered: no Caffe fork found gives it a CPU forward
and a ``region_param`` (OpenCV's RegionLayer runs only in its Darknet importer, on a permuted
N x H x W x C input with the anchors as a weight blob; OpenCV's Caffe schema has no
region_param), so it stays an unknown type rather than a guess.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
from google.protobuf import message as pb_message
from torch import nn

from caffe_bridge.converters.registry import refuse, register
from caffe_bridge.ir import Layer, Net
from caffe_bridge.shapes import LayerShapes, Shape, ShapeRuleError


class DarknetReorg(nn.Module):
    """Darknet's reorg (stride s): (N, C, H, W) -> (N, C s^2, H / s, W / s), or back."""

    def __init__(self, stride: int, reverse: bool) -> None:
        super().__init__()
        self.stride, self.reverse = stride, reverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.stride
        oc = c // (s * s)
        if self.reverse:
            out = x.reshape(n, s, s, oc, h, w).permute(0, 3, 4, 1, 5, 2)
            return out.reshape(n, oc, h * s, w * s)
        out = x.reshape(n, oc, h, s, w, s).permute(0, 3, 5, 1, 2, 4)
        return out.reshape(n, c * s * s, h // s, w // s)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, reverse={self.reverse}"


def reorg_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    if len(ins) != 1 or len(ins[0]) != 4:
        raise ShapeRuleError("Reorg takes one 4-D bottom")
    rp = p.reorg_param
    if not rp.HasField("stride") or rp.stride <= 0:
        raise ShapeRuleError("Reorg needs reorg_param.stride > 0")
    n, c, h, w = ins[0]
    s = rp.stride
    if c % (s * s) or (not rp.reverse and (h % s or w % s)):
        # Caffe does not check; its flat indices then run past the blobs.
        raise ShapeRuleError(f"Reorg stride {s} must divide the channels by {s * s} and the "
                             f"height and width, got {ins[0]}")
    if rp.reverse:
        return LayerShapes(tops=((n, c // (s * s), h * s, w * s),))
    return LayerShapes(tops=((n, c * s * s, h // s, w // s),))


@register("Reorg", shape=reorg_shape, fork="eric612/MobileNet-YOLO", per_sample=True)
def convert_reorg(layer: Layer, net: Net) -> nn.Module:
    """Reorg (YOLOv2 passthrough): darknet's flat-index reorg, not a space-to-depth."""
    rp = layer.param.reorg_param
    return DarknetReorg(rp.stride, rp.reverse)


# --- Yolov3DetectionOutput ------------------------------------------------------------------


def _predictions(x: torch.Tensor, biases: torch.Tensor, mask: Sequence[int], nbox: int,
                 ncls: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (P, 4: x, y, w, h) and confidences (P,) of one bottom, rows (image, cell, anchor,
    class) with every class (the threshold is applied later)."""
    bsz, _, h, w = x.shape
    v = x.reshape(bsz, nbox, 5 + ncls, h * w).permute(0, 3, 1, 2)  # (B, HW, A, 5 + C)
    cell = torch.arange(h * w, device=x.device)
    gx, gy = (cell % w).to(x.dtype)[:, None], (cell // w).to(x.dtype)[:, None]
    anchors = biases.reshape(-1, 2)[list(mask)].to(x.dtype)  # (A, 2)
    bx = (gx + torch.sigmoid(v[..., 0])) / w
    by = (gy + torch.sigmoid(v[..., 1])) / h
    bw = torch.exp(v[..., 2]) * anchors[:, 0] / (w * scale)
    bh = torch.exp(v[..., 3]) * anchors[:, 1] / (h * scale)
    conf = torch.sigmoid(v[..., 5:]) * torch.sigmoid(v[..., 4:5])  # (B, HW, A, C)
    boxes = torch.stack([bx, by, bw, bh], -1)[..., None, :].expand(*conf.shape, 4)
    return boxes.reshape(-1, 4), conf.reshape(-1)


def _degenerate(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, h: torch.Tensor,
                area: torch.Tensor) -> torch.Tensor:
    """Boxes without a finite centre and a positive finite area (say from a zero, negative,
    tiny or infinite anchor). Their IoU with any box is 0 or NaN (no overlap, an infinite or
    NaN union, or 0/0), never >= a positive threshold: the greedy loop keeps each of them and
    they suppress nothing, so it need not visit them one by one (thousands did take minutes)."""
    finite = torch.isfinite(x) & torch.isfinite(y) & torch.isfinite(area)
    return ~(finite & (w > 0) & (h > 0) & (area > 0))


def _suppress(boxes: torch.Tensor, thresh: float) -> torch.Tensor:
    """Greedy class-agnostic NMS over boxes sorted by confidence: keep mask. A box dies when
    its IoU (centre boxes, no +1) with a kept earlier one is >= thresh. The loop runs once per
    kept box (data-dependent: the source has no top-k)."""
    x, y, w, h = boxes.unbind(1)
    left, right, top, bot = x - w / 2, x + w / 2, y - h / 2, y + h / 2
    area = w * h
    if thresh > 0:  # (NaN is not): set degenerate boxes apart, see _degenerate
        odd = _degenerate(x, y, w, h, area)
        if bool(odd.any()):
            keep = odd.clone()
            keep[~odd] = _suppress(boxes[~odd], thresh)
            return keep
    pos = torch.arange(len(boxes), device=boxes.device)
    alive = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    keep = torch.zeros_like(alive)
    t = boxes.new_tensor(thresh)
    while bool(alive.any()):
        i = int(alive.to(torch.uint8).argmax())
        keep[i] = True
        ow = torch.minimum(right[i], right) - torch.maximum(left[i], left)
        oh = torch.minimum(bot[i], bot) - torch.maximum(top[i], top)
        inter = torch.where((ow < 0) | (oh < 0), torch.zeros_like(ow), ow * oh)
        iou = inter / (area[i] + area - inter)
        alive = alive & ~(iou >= t) & (pos > i)
    return keep


@torch.fx.wrap
def yolov3_detections(inputs: list[torch.Tensor], biases: torch.Tensor,
                      masks: list[list[int]], scales: list[int], nbox: int, ncls: int,
                      conf_thresh: float, nms_thresh: float) -> torch.Tensor:
    """MobileNet-YOLO's Yolov3DetectionOutput forward -> (1, 1, R, 7)."""
    parts = [_predictions(x, biases, m, nbox, ncls, s)
             for x, m, s in zip(inputs, masks, scales, strict=True)]
    boxes = torch.cat([b for b, _ in parts])
    conf = torch.cat([c for _, c in parts])
    label = torch.cat([torch.arange(len(c), device=c.device) % ncls for _, c in parts])
    return _rows(boxes, conf, label, conf > conf.new_tensor(conf_thresh), nms_thresh,
                 inputs[0].shape[0])


def _rows(boxes: torch.Tensor, conf: torch.Tensor, label: torch.Tensor, passed: torch.Tensor,
          nms_thresh: float, bsz: int) -> torch.Tensor:
    """Sort the passed predictions by confidence (stable: ties in generation order; the
    source's std::sort leaves them unspecified), NMS, rows (1, 1, R, 7); none: one
    [i, -1, ..., -1] row per image."""
    boxes, conf, label = boxes[passed], conf[passed], label[passed]
    order = torch.sort(conf, descending=True, stable=True).indices
    boxes, conf, label = boxes[order], conf[order], label[order]
    keep = _suppress(boxes, nms_thresh)
    b, c, lab = boxes[keep], conf[keep], label[keep].to(conf.dtype)
    x, y, w, h = b.unbind(1)
    rows = torch.stack([torch.zeros_like(c), lab + 1, c, x - w / 2, y - h / 2, x + w / 2,
                        y + h / 2], 1)
    if len(rows) == 0:
        rows = torch.full((bsz, 7), -1.0, dtype=conf.dtype, device=conf.device)
        rows[:, 0] = torch.arange(bsz, dtype=conf.dtype, device=conf.device)
    return rows[None, None]


class Yolov3DetectionOutput(nn.Module):
    """MobileNet-YOLO's YOLOv3 decoding + class-agnostic NMS: rows [image 0, label + 1, score,
    xmin, ymin, xmax, ymax] (relative coordinates), sorted by score."""

    def __init__(self, biases: Sequence[float], masks: list[list[int]], scales: list[int],
                 nbox: int, ncls: int, conf_thresh: float, nms_thresh: float) -> None:
        super().__init__()
        self.register_buffer("biases", torch.tensor(list(biases), dtype=torch.float32))
        self.masks, self.scales, self.nbox, self.ncls = masks, scales, nbox, ncls
        self.conf_thresh, self.nms_thresh = conf_thresh, nms_thresh

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return yolov3_detections(list(inputs), self.biases, self.masks, self.scales, self.nbox,
                                 self.ncls, self.conf_thresh, self.nms_thresh)


def _yolov3_cfg(p: pb_message.Message, n_bottoms: int) -> dict[str, object]:
    yp = p.yolov3_detection_output_param
    if not yp.HasField("num_classes"):
        raise ShapeRuleError("yolov3_detection_output_param needs num_classes")
    if yp.gaussian_box:
        raise ShapeRuleError("gaussian_box (Gaussian YOLOv3) is not supported")
    groups = yp.mask_group_num
    if n_bottoms != groups or len(yp.anchors_scale) < n_bottoms or groups <= 0:
        raise ShapeRuleError(f"{n_bottoms} bottoms need mask_group_num == {n_bottoms} and one "
                             f"anchors_scale each")
    per = len(yp.mask) // groups
    masks = [list(yp.mask[t * per:t * per + yp.num_box]) for t in range(groups)]
    if any(len(m) != yp.num_box or max(m) * 2 + 1 >= len(yp.biases) for m in masks):
        raise ShapeRuleError("each group of mask needs num_box anchor indices into biases")
    return {"biases": list(yp.biases), "masks": masks, "scales": list(yp.anchors_scale),
            "nbox": yp.num_box, "ncls": yp.num_classes,
            "conf_thresh": yp.confidence_threshold, "nms_thresh": yp.nms_threshold}


def yolov3_detection_output_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """At most one row per (cell, anchor, class); the count is data-dependent, as in Caffe."""
    cfg = _yolov3_cfg(p, len(ins))
    rows = 0
    for s in ins:
        if len(s) != 4 or s[1] != cfg["nbox"] * (5 + cfg["ncls"]):
            raise ShapeRuleError(f"bottom {s} needs num_box * (5 + num_classes) channels")
        rows += s[0] * s[2] * s[3] * cfg["nbox"] * cfg["ncls"]
    return LayerShapes(tops=((1, 1, max(rows, ins[0][0]), 7),))


@register("Yolov3DetectionOutput", shape=yolov3_detection_output_shape,
          fork="eric612/MobileNet-YOLO")
def convert_yolov3_detection_output(layer: Layer, net: Net) -> nn.Module:
    """Yolov3DetectionOutput (MobileNet-YOLO): decoding, threshold, class-agnostic NMS."""
    return Yolov3DetectionOutput(**_yolov3_cfg(layer.param, len(layer.bottoms)))


# --- YoloDetectionOutput (YOLOv2) -----------------------------------------------------------


@torch.fx.wrap
def yolov2_detections(inputs: list[torch.Tensor], biases: torch.Tensor, nbox: int, ncls: int,
                      conf_thresh: float, nms_thresh: float) -> torch.Tensor:
    """MobileNet-YOLO's YoloDetectionOutput forward -> (1, 1, R, 7): one prediction per
    (cell, anchor) with the softmax's first argmax class, kept when conf >= threshold."""
    boxes, conf, label = [], [], []
    for x in inputs:
        bsz, _, side, _ = x.shape
        v = x.reshape(bsz, nbox, 5 + ncls, side * side).permute(0, 3, 1, 2)  # (B, HW, A, L)
        cell = torch.arange(side * side, device=x.device)
        gx, gy = (cell % side).to(x.dtype)[:, None], (cell // side).to(x.dtype)[:, None]
        anchors = biases.reshape(-1, 2)[:nbox].to(x.dtype)
        bx = (gx + torch.sigmoid(v[..., 0])) / side
        by = (gy + torch.sigmoid(v[..., 1])) / side
        bw = torch.exp(v[..., 2]) * anchors[:, 0] / side
        bh = torch.exp(v[..., 3]) * anchors[:, 1] / side
        prob, cls = torch.softmax(v[..., 5:], dim=-1).max(dim=-1)  # max: first maximum
        boxes.append(torch.stack([bx, by, bw, bh], -1).reshape(-1, 4))
        conf.append((torch.sigmoid(v[..., 4]) * prob).reshape(-1))
        label.append(cls.reshape(-1))
    conf_all = torch.cat(conf)
    return _rows(torch.cat(boxes), conf_all, torch.cat(label),
                 conf_all >= conf_all.new_tensor(conf_thresh), nms_thresh, inputs[0].shape[0])


class YoloDetectionOutput(nn.Module):
    """MobileNet-YOLO's YOLOv2 decoding + class-agnostic NMS (rows as Yolov3DetectionOutput)."""

    def __init__(self, biases: Sequence[float], nbox: int, ncls: int, conf_thresh: float,
                 nms_thresh: float) -> None:
        super().__init__()
        self.register_buffer("biases", torch.tensor(list(biases), dtype=torch.float32))
        self.nbox, self.ncls = nbox, ncls
        self.conf_thresh, self.nms_thresh = conf_thresh, nms_thresh

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return yolov2_detections(list(inputs), self.biases, self.nbox, self.ncls,
                                 self.conf_thresh, self.nms_thresh)


def _yolov2_cfg(p: pb_message.Message) -> dict[str, object]:
    yp = p.yolo_detection_output_param
    if not yp.HasField("num_classes"):
        raise ShapeRuleError("yolo_detection_output_param needs num_classes")
    if yp.coords != 4:
        raise ShapeRuleError(f"coords {yp.coords}: the source's channel layout assumes 4")
    if len(yp.biases) < 2 * yp.num_box:
        raise ShapeRuleError(f"{yp.num_box} boxes need {2 * yp.num_box} biases")
    return {"biases": list(yp.biases), "nbox": yp.num_box, "ncls": yp.num_classes,
            "conf_thresh": yp.confidence_threshold, "nms_thresh": yp.nms_threshold}


def yolo_detection_output_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """At most one row per (cell, anchor); the count is data-dependent, as in Caffe."""
    cfg = _yolov2_cfg(p)
    if not 1 <= len(ins) <= 2:
        raise ShapeRuleError("YoloDetectionOutput reads one or two bottoms")
    rows = 0
    for s in ins:
        if len(s) != 4 or s[1] != cfg["nbox"] * (5 + cfg["ncls"]) or s[2] != s[3]:
            raise ShapeRuleError(f"bottom {s} needs num_box * (5 + num_classes) channels on a "
                                 f"square map (the source indexes rows by the width)")
        rows += s[0] * s[2] * s[3] * cfg["nbox"]
    return LayerShapes(tops=((1, 1, max(rows, ins[0][0]), 7),))


@register("YoloDetectionOutput", shape=yolo_detection_output_shape, fork="eric612/MobileNet-YOLO")
def convert_yolo_detection_output(layer: Layer, net: Net) -> nn.Module:
    """YoloDetectionOutput (MobileNet-YOLO, YOLOv2): decoding, threshold, class-agnostic NMS."""
    return YoloDetectionOutput(**_yolov2_cfg(layer.param))


refuse("Region", "Region (YOLOv2's output layer) is not converted: no Caffe fork found gives it a "
                 "CPU forward and a region_param, and OpenCV runs its RegionLayer only from its "
                 "Darknet importer; the converter does not guess its semantics")
