"""R-CNN family: ROIPooling (Fast R-CNN), PSROIPooling (R-FCN), the RPN proposal layer.

Geometry (roi rounding, bin edges) is computed in float32 as the sources do (Dtype = float):
a float64 bin edge can land on the other side of an integer. Pooled values are float64.
C's ``round`` rounds halves away from zero (numpy's rounds them to even): see ``c_round``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from ._util import Array, LayerFn, f64, get, has, num_tops, values

_FLT_MAX = float(np.finfo(np.float32).max)
F32 = np.float32


def c_round(x: Array) -> Array:
    """C's round(): halves away from zero (np.round would give round(2.5) == 2)."""
    x = np.asarray(x)
    return np.where(np.abs(x - np.trunc(x)) == 0.5, np.trunc(x) + np.sign(x), np.round(x))


def roi_pooling(layer: Any, inputs: list[Array]) -> list[Array]:
    """Max pooling of each roi (batch, x1, y1, x2, y2) into pooled_h x pooled_w bins.

    rbgirshick/caffe-fast-rcnn src/caffe/layers/roi_pooling_layer.cpp, Forward_cpu: corners are
    round(coord * spatial_scale); roi size max(end - start + 1, 1); bin [floor(p * size / P),
    ceil((p + 1) * size / P)) shifted by the start and clipped to the map; an empty bin gives 0;
    a non-empty one the max, starting from -FLT_MAX. The argmax top is not produced.
    """
    x, rois = f64(inputs[0]), np.asarray(inputs[1], np.float32).reshape(-1, 5)
    p = layer.param.roi_pooling_param
    ph_n, pw_n = int(get(p, "pooled_h", 0)), int(get(p, "pooled_w", 0))
    scale = F32(get(p, "spatial_scale", 1.0))
    if ph_n <= 0 or pw_n <= 0:
        raise ValueError("pooled_h and pooled_w must be > 0")
    _, c, h, w = x.shape
    out = np.empty((rois.shape[0], c, ph_n, pw_n))
    for r, roi in enumerate(rois):
        b = int(roi[0])
        if not 0 <= b < x.shape[0]:
            raise ValueError(f"roi batch index {b} out of range")
        x1, y1, x2, y2 = (int(c_round(F32(v) * scale)) for v in roi[1:])
        bin_h = F32(max(y2 - y1 + 1, 1)) / F32(ph_n)
        bin_w = F32(max(x2 - x1 + 1, 1)) / F32(pw_n)
        for i in range(ph_n):
            hs = min(max(int(np.floor(F32(i) * bin_h)) + y1, 0), h)
            he = min(max(int(np.ceil(F32(i + 1) * bin_h)) + y1, 0), h)
            for j in range(pw_n):
                ws = min(max(int(np.floor(F32(j) * bin_w)) + x1, 0), w)
                we = min(max(int(np.ceil(F32(j + 1) * bin_w)) + x1, 0), w)
                if he <= hs or we <= ws:
                    out[r, :, i, j] = 0.0
                else:
                    win = x[b, :, hs:he, ws:we].reshape(c, -1).max(axis=1)
                    out[r, :, i, j] = np.maximum(win, -_FLT_MAX)
    return [out]


def psroi_pooling(layer: Any, inputs: list[Array]) -> list[Array]:
    """Position-sensitive average pooling: bin (i, j) of output channel k reads input channel
    (k * G + i) * G + j.

    daijifeng001/caffe-rfcn src/caffe/layers/psroi_pooling_layer.cu, PSROIPoolingForward (the
    .cpp Forward_cpu is NOT_IMPLEMENTED, so the CUDA kernel is the definition): start =
    round(x1) * scale, end = (round(x2) + 1) * scale, size max(end - start, 0.1), bin
    [floor(i * size / G + start), ceil((i + 1) * size / G + start)) clipped to the map, the mean
    over the bin, 0 for an empty bin. (nvcc may fuse i * bin + start into one FMA; we round the
    product and the sum separately.)
    """
    x, rois = f64(inputs[0]), np.asarray(inputs[1], np.float32).reshape(-1, 5)
    p = layer.param.psroi_pooling_param
    if not (has(p, "spatial_scale") and has(p, "output_dim") and has(p, "group_size")):
        raise ValueError("psroi_pooling_param needs spatial_scale, output_dim and group_size")
    scale, dim, g = F32(p.spatial_scale), int(p.output_dim), int(p.group_size)
    _, c, h, w = x.shape
    if dim <= 0 or g <= 0 or c != dim * g * g:
        raise ValueError(f"{c} input channels != output_dim {dim} * group_size {g}^2")
    out = np.empty((rois.shape[0], dim, g, g))
    for r, roi in enumerate(rois):
        b = int(roi[0])
        x1, y1, x2, y2 = (F32(c_round(v)) for v in roi[1:])
        sw, sh = x1 * scale, y1 * scale
        ew, eh = (x2 + F32(1)) * scale, (y2 + F32(1)) * scale
        bin_h = F32(max(eh - sh, F32(0.1))) / F32(g)
        bin_w = F32(max(ew - sw, F32(0.1))) / F32(g)
        for i in range(g):
            hs = min(max(int(np.floor(F32(i) * bin_h + sh)), 0), h)
            he = min(max(int(np.ceil(F32(i + 1) * bin_h + sh)), 0), h)
            for j in range(g):
                ws = min(max(int(np.floor(F32(j) * bin_w + sw)), 0), w)
                we = min(max(int(np.ceil(F32(j + 1) * bin_w + sw)), 0), w)
                chans = np.arange(dim) * g * g + i * g + j
                if he <= hs or we <= ws:
                    out[r, :, i, j] = 0.0
                else:
                    out[r, :, i, j] = x[b, chans, hs:he, ws:we].mean(axis=(1, 2))
    return [out]


# --- RPN proposals -----------------------------------------------------------------------


def generate_anchors(base_size: float = 16, ratios: tuple[float, ...] = (0.5, 1, 2),
                     scales: tuple[float, ...] = (8, 16, 32)) -> Array:
    """Anchors (x1, y1, x2, y2) around cell (0, 0), ratio-major then scale.

    rbgirshick/py-faster-rcnn lib/rpn/generate_anchors.py: widths/heights include the +1;
    ws = np.round(sqrt(size / ratio)) (halves to even), hs = np.round(ws * ratio).
    """
    w = h = float(base_size)
    cx, cy = (w - 1) / 2, (h - 1) / 2  # base anchor (0, 0, base-1, base-1)
    out = []
    for ratio in ratios:
        ws = np.round(np.sqrt(w * h / ratio))
        hs = np.round(ws * ratio)
        for s in scales:
            sw, sh = ws * s, hs * s
            out.append([cx - (sw - 1) / 2, cy - (sh - 1) / 2, cx + (sw - 1) / 2, cy + (sh - 1) / 2])
    return np.array(out, np.float64)


def py_cpu_nms(boxes: Array, scores: Array, thresh: float) -> list[int]:
    """Greedy NMS of rbgirshick/py-faster-rcnn lib/nms/py_cpu_nms.py, in the boxes' dtype.

    Areas with +1; a box survives a kept one when IoU <= thresh (the GPU kernel nms_kernel.cu
    also suppresses only IoU > thresh; the Cython cpu_nms.pyx suppresses IoU >= thresh).
    Order: scores.argsort()[::-1], taken here with kind="stable": ties come out
    highest-index first, which is what numpy's default argsort does on arrays of up to 16
    elements (insertion sort); on longer arrays numpy's tie order is unspecified.
    """
    x1, y1, x2, y2 = boxes.T
    one = boxes.dtype.type(1)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        ww = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        hh = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = (ww * hh).astype(boxes.dtype)
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[ovr <= thresh]
    return keep


def proposals(scores: Array, deltas: Array, im_info: Array, *, feat_stride: float,
              anchors: Array, pre_nms: int, post_nms: int, nms_thresh: float,
              min_size: float) -> tuple[Array, Array]:
    """One image of rbgirshick/py-faster-rcnn lib/rpn/proposal_layer.py ProposalLayer.forward.

    Float32 as in the source (bottoms are float32; bbox_transform_inv casts the anchors to the
    deltas' dtype). Returns rois (R, 5) with batch index 0 and scores (R, 1).
    """
    a = anchors.shape[0]
    fg = scores[a:].astype(F32)  # (A, H, W): the second half of the channels is foreground
    hh, ww = fg.shape[-2:]
    sx, sy = np.meshgrid(np.arange(ww) * feat_stride, np.arange(hh) * feat_stride)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    anc = (anchors[None] + shifts[:, None]).reshape(-1, 4).astype(F32)  # rows (h, w, a)
    d = deltas.astype(F32).transpose(1, 2, 0).reshape(-1, 4)
    s = fg.transpose(1, 2, 0).reshape(-1)
    widths, heights = anc[:, 2] - anc[:, 0] + F32(1), anc[:, 3] - anc[:, 1] + F32(1)
    cx, cy = anc[:, 0] + F32(0.5) * widths, anc[:, 1] + F32(0.5) * heights
    pcx, pcy = d[:, 0] * widths + cx, d[:, 1] * heights + cy
    pw, ph = np.exp(d[:, 2]) * widths, np.exp(d[:, 3]) * heights
    box = np.stack([pcx - F32(0.5) * pw, pcy - F32(0.5) * ph,
                    pcx + F32(0.5) * pw, pcy + F32(0.5) * ph], axis=1)
    info = im_info.astype(F32).reshape(-1)
    lim = np.array([info[1], info[0], info[1], info[0]], F32) - F32(1)
    box = np.maximum(np.minimum(box, lim), F32(0))
    ms = F32(min_size) * info[2]
    keep = np.where((box[:, 2] - box[:, 0] + F32(1) >= ms)
                    & (box[:, 3] - box[:, 1] + F32(1) >= ms))[0]
    box, s = box[keep], s[keep]
    order = np.argsort(s, kind="stable")[::-1]
    if pre_nms > 0:
        order = order[:pre_nms]
    box, s = box[order], s[order]
    kept = py_cpu_nms(box, s, nms_thresh) if len(s) else []
    if post_nms > 0:
        kept = kept[:post_nms]
    rois = np.concatenate([np.zeros((len(kept), 1), F32), box[kept].reshape(-1, 4)], axis=1)
    return rois, s[kept].reshape(-1, 1)


def _yaml_dict(text: str) -> dict[str, Any]:
    """The flat YAML mapping py-faster-rcnn's param_str holds (yaml.load in the source):
    "'key': value" entries, one a line or in {...}; lists in [...], !!python/tuple allowed.
    (PyYAML is not a dependency; this reads the subset real definitions use.)"""
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    out: dict[str, Any] = {}
    for entry in re.split(r"\n|,(?![^\[]*\])", body):
        if not entry.strip():
            continue
        key, sep, value = entry.partition(":")
        if not sep:
            raise ValueError(f"param_str entry {entry!r} is not 'key: value'")
        value = value.replace("!!python/tuple", "").strip()
        out[key.strip().strip("'\"")] = json.loads(value.replace("'", '"'))
    return out


def _run_proposal(inputs: list[Array], tops: int, **cfg: Any) -> list[Array]:
    scores, deltas, im_info = inputs[:3]
    if scores.shape[0] != 1:
        raise ValueError("the proposal layer supports only single-image batches")
    rois, sc = proposals(scores[0], deltas[0], np.asarray(im_info)[0], **cfg)
    return [rois.astype(np.float64), sc.astype(np.float64)][:tops]


def rpn_proposal_layer(layer: Any, inputs: list[Array]) -> list[Array]:
    """py-faster-rcnn's rpn.proposal_layer.ProposalLayer with the TEST configuration
    (lib/fast_rcnn/config.py: RPN_PRE_NMS_TOP_N 6000, RPN_POST_NMS_TOP_N 300, NMS 0.7,
    RPN_MIN_SIZE 16); param_str gives feat_stride and optional scales."""
    cfg = _yaml_dict(layer.param.python_param.param_str)
    anchors = generate_anchors(scales=tuple(cfg.get("scales", (8, 16, 32))))
    return _run_proposal(inputs, num_tops(layer), feat_stride=float(cfg["feat_stride"]),
                         anchors=anchors, pre_nms=6000, post_nms=300, nms_thresh=0.7,
                         min_size=16)


def proposal(layer: Any, inputs: list[Array]) -> list[Array]:
    """OpenCV's Proposal type, read with py-faster-rcnn's semantics (its proposal_param names
    the same quantities; OpenCV itself skips the min-size filter)."""
    p = layer.param.proposal_param
    anchors = generate_anchors(get(p, "base_size", 16),
                               tuple(values(p, "ratio") or (0.5, 1, 2)),
                               tuple(values(p, "scale") or (8, 16, 32)))
    return _run_proposal(inputs, num_tops(layer), feat_stride=float(get(p, "feat_stride", 16)),
                         anchors=anchors, pre_nms=int(get(p, "pre_nms_topn", 6000)),
                         post_nms=int(get(p, "post_nms_topn", 300)),
                         nms_thresh=float(F32(get(p, "nms_thresh", 0.7))),
                         min_size=float(get(p, "min_size", 16)))


LAYERS: dict[str, LayerFn] = {
    "ROIPooling": roi_pooling,
    "PSROIPooling": psroi_pooling,
    "Python:rpn.proposal_layer.ProposalLayer": rpn_proposal_layer,
    "Proposal": proposal,
}
