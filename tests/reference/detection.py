"""SSD layers (weiliu89/caffe, branch ``ssd``): Permute, Normalize, PriorBox, DetectionOutput.

Written from the fork's CPU forwards (commit 4817bf8b of branch ssd):
src/caffe/layers/{permute,normalize,prior_box,detection_output}_layer.cpp and
src/caffe/util/bbox_util.cpp (DecodeBBox, JaccardOverlap, BBoxSize, GetMaxScoreIndex,
ApplyNMSFast). Loops follow the C++ literally; this is the spec, not the fast path.
Fork variants of DetectionOutput: RefineDet's ARM bottoms (sfzhang15/RefineDet) and OpenCV's
``clip`` field (opencv/opencv modules/dnn/src/layers/detection_output_layer.cpp).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._util import Array, LayerFn, blob, f64, get, has, values

F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)


def permute(layer: Any, inputs: list[Array]) -> list[Array]:
    """permute_layer.cpp: listed axes first, the unlisted ones after them in natural order."""
    x = f64(inputs[0])
    order: list[int] = []
    for o in values(layer.param.permute_param, "order"):
        if o >= x.ndim or o in order:
            raise ValueError(f"Permute order {o} invalid for a {x.ndim}-D blob")
        order.append(int(o))
    order += [i for i in range(x.ndim) if i not in order]
    return [np.ascontiguousarray(np.transpose(x, order))]


def normalize(layer: Any, inputs: list[Array]) -> list[Array]:
    """normalize_layer.cpp: x / sqrt(sum(x^2) + eps) * scale, eps inside the square root.

    across_spatial (default true): one norm per sample over C*H*W; else one per (n, h, w)
    over channels. The scale blob has one value (channel_shared, default) or one per channel.
    """
    x = f64(inputs[0])
    p = layer.param.norm_param
    eps = float(F32(get(p, "eps", 1e-10)))
    n = x.shape[0]
    if get(p, "across_spatial", True):
        norm = np.sqrt((x.reshape(n, -1) ** 2).sum(1) + eps).reshape((n,) + (1,) * (x.ndim - 1))
    else:
        norm = np.sqrt((x**2).sum(1, keepdims=True) + eps)
    y = x / norm
    scale = blob(layer, 0).reshape(-1)
    if get(p, "channel_shared", True):
        if scale.size != 1:
            raise ValueError("channel_shared Normalize needs a single scale")
        return [y * scale[0]]
    if scale.size != x.shape[1]:
        raise ValueError("Normalize needs one scale per channel")
    return [y * scale.reshape((1, -1) + (1,) * (x.ndim - 2))]


def _prior_setup(p: Any) -> tuple[list[int], list[int], list[float], list[float]]:
    """(min sizes, max sizes, aspect ratios, variances) as LayerSetUp builds them.

    Sizes are read as ``int min_size_ = min_sizes_[s]`` in the forward: truncated to integers.
    Aspect ratios start with 1; a new one (|ar - existing| >= 1e-6) is appended, then 1/ar
    when flip (default true).
    """
    mins = [int(v) for v in values(p, "min_size")]
    if not mins or min(values(p, "min_size")) <= 0:
        raise ValueError("PriorBox needs positive min_size")
    maxs = [int(v) for v in values(p, "max_size")]
    if maxs and len(maxs) != len(mins):
        raise ValueError("PriorBox needs as many max_size as min_size")
    ars = [1.0]
    for ar in values(p, "aspect_ratio"):
        ar = float(F32(ar))
        if all(abs(ar - e) >= 1e-6 for e in ars):
            ars.append(ar)
            if get(p, "flip", True):
                ars.append(float(F32(1.0 / ar)))
    var = [float(F32(v)) for v in values(p, "variance")] or [0.1]
    if len(var) not in (1, 4):
        raise ValueError("PriorBox needs 1 or 4 variances")
    return mins, maxs, ars, var


def _img_and_step(p: Any, fh: int, fw: int, img: tuple[int, int]) -> tuple[int, int, float, float]:
    if has(p, "img_h") or has(p, "img_w"):
        ih, iw = get(p, "img_h", 0), get(p, "img_w", 0)
    elif has(p, "img_size"):
        ih = iw = p.img_size
    else:
        ih = iw = 0
    if ih == 0 or iw == 0:
        ih, iw = img
    if has(p, "step_h") or has(p, "step_w"):
        sh, sw = float(get(p, "step_h", 0.0)), float(get(p, "step_w", 0.0))
    elif has(p, "step"):
        sh = sw = float(p.step)
    else:
        sh = sw = 0.0
    if sh == 0 or sw == 0:  # float division, as static_cast<float>(img_width) / layer_width
        sw, sh = float(F32(iw) / F32(fw)), float(F32(ih) / F32(fh))
    return ih, iw, sh, sw


def prior_box(layer: Any, inputs: list[Array]) -> list[Array]:
    """prior_box_layer.cpp: 1 x 2 x (H*W*num_priors*4); channel 0 boxes, channel 1 variances.

    Per cell (h outer, w inner) and per min size: the square min box, then (with max_size) the
    square sqrt(min*max) box, then one box per aspect ratio != 1 in setup order. Coordinates
    are normalised by the image size; clip clamps them to [0, 1].
    """
    p = layer.param.prior_box_param
    fh, fw = inputs[0].shape[2], inputs[0].shape[3]
    ih, iw, sh, sw = _img_and_step(p, fh, fw, inputs[1].shape[2:4])
    mins, maxs, ars, var = _prior_setup(p)
    off = float(F32(get(p, "offset", 0.5)))
    boxes = []
    for h in range(fh):
        for w in range(fw):
            cx, cy = float(F32((w + off) * F32(sw))), float(F32((h + off) * F32(sh)))
            for s, mn in enumerate(mins):
                sizes = [(mn, mn)]
                if maxs:
                    side = float(F32(math.sqrt(mn * maxs[s])))
                    sizes.append((side, side))
                for ar in ars:
                    if abs(ar - 1.0) < 1e-6:
                        continue
                    r = np.sqrt(F32(ar))  # float overload: min_size_ * sqrt(ar) in float
                    sizes.append((float(F32(mn) * r), float(F32(mn) / r)))
                for bw, bh in sizes:
                    boxes.append([(cx - bw / 2) / iw, (cy - bh / 2) / ih,
                                  (cx + bw / 2) / iw, (cy + bh / 2) / ih])
    out = np.asarray(boxes, np.float64).reshape(-1)
    if get(p, "clip", False):
        out = np.clip(out, 0.0, 1.0)
    variances = np.tile(np.asarray(var if len(var) == 4 else var * 4), out.size // 4)
    return [np.stack([out, variances])[None]]


CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3


def bbox_size(b: Array) -> float:
    """BBoxSize(normalized=true): 0 for an inverted box, else width * height."""
    if b[2] < b[0] or b[3] < b[1]:
        return 0.0
    return (b[2] - b[0]) * (b[3] - b[1])


def jaccard(a: Array, b: Array) -> float:
    """JaccardOverlap(normalized=true); sizes come from BBoxSize as DecodeBBox stores them."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (bbox_size(a) + bbox_size(b) - inter)


def decode(prior: Array, var: Array, code: int, in_target: bool, loc: Array) -> Array:
    """DecodeBBox for one prior (clip_bbox is false in DetectionOutput)."""
    if in_target:
        var = np.ones(4)
    if code == CORNER:
        return prior + var * loc
    pw, ph = prior[2] - prior[0], prior[3] - prior[1]
    if pw <= 0 or ph <= 0:
        raise ValueError("DetectionOutput: a prior with non-positive width or height")
    if code == CORNER_SIZE:
        return prior + var * loc * np.array([pw, ph, pw, ph])
    if code != CENTER_SIZE:
        raise ValueError(f"unknown code_type {code}")
    cx = var[0] * loc[0] * pw + (prior[0] + prior[2]) / 2
    cy = var[1] * loc[1] * ph + (prior[1] + prior[3]) / 2
    w, h = math.exp(var[2] * loc[2]) * pw, math.exp(var[3] * loc[3]) * ph
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def nms_fast(boxes: Array, scores: Array, conf_thr: float, nms_thr: float, eta: float,
             top_k: int) -> list[int]:
    """ApplyNMSFast: candidates with score > conf_thr, stable-sorted by descending score
    (ties keep prior order), cut to top_k; a candidate is kept when its overlap with every
    kept box is <= the adaptive threshold, which is multiplied by eta after each keep while
    it is > 0.5."""
    cand = [i for i in range(len(scores)) if scores[i] > conf_thr]
    cand.sort(key=lambda i: -scores[i])  # Python's sort is stable, like std::stable_sort
    if top_k > -1:
        cand = cand[:top_k]
    kept: list[int] = []
    thr = float(F32(nms_thr))
    for i in cand:
        if all(jaccard(boxes[i], boxes[k]) <= thr for k in kept):
            kept.append(i)
            if eta < 1 and thr > 0.5:
                thr = float(F32(thr * F32(eta)))
    return kept


def _do_params(p: Any) -> dict[str, Any]:
    nms = p.nms_param
    return {
        "C": int(p.num_classes), "share": get(p, "share_location", True),
        "bg": get(p, "background_label_id", 0), "code": get(p, "code_type", CORNER),
        "in_target": get(p, "variance_encoded_in_target", False),
        "keep_top_k": get(p, "keep_top_k", -1),
        "conf_thr": float(F32(p.confidence_threshold)) if has(p, "confidence_threshold")
        else -FLT_MAX,
        "nms_thr": get(nms, "nms_threshold", 0.3), "eta": float(F32(get(nms, "eta", 1.0))),
        # a top_k beside nms_param is not Caffe's; OpenCV flattens parameters and reads it
        "top_k": get(nms, "top_k", get(p, "top_k", -1)),
        # OpenCV's fork field (opencv/opencv modules/dnn/src/layers/detection_output_layer.cpp,
        # DecodeBBox): clamp every decoded coordinate to [0, 1] before NMS and output
        "clip": get(p, "clip", False),
    }


def _decode(q: dict[str, Any], prior: Array, var: Array, loc: Array) -> Array:
    box = decode(prior, var, q["code"], q["in_target"], loc)
    return np.clip(box, 0.0, 1.0) if q["clip"] else box


def _image_detections(q: dict[str, Any], loc: Array, conf: Array, priors: Array,
                      var: Array) -> list[tuple[int, int]]:
    """(label, prior index) of one image's detections, in Caffe's output order."""
    n_loc = 1 if q["share"] else q["C"]
    loc = loc.reshape(len(priors), n_loc, 4)
    conf = conf.reshape(len(priors), q["C"])
    decoded = [[_decode(q, priors[i], var[i], loc[i, lc]) for i in range(len(priors))]
               for lc in range(n_loc)]
    indices: dict[int, list[int]] = {}
    for c in range(q["C"]):
        if c == q["bg"]:
            continue
        boxes = decoded[0 if q["share"] else c]
        indices[c] = nms_fast(boxes, conf[:, c], q["conf_thr"], q["nms_thr"], q["eta"],
                              q["top_k"])
    n_det = sum(len(v) for v in indices.values())
    if -1 < q["keep_top_k"] < n_det:
        pairs = [(conf[i, c], c, i) for c in sorted(indices) for i in indices[c]]
        # Caffe uses std::sort (unspecified order among equal scores); we keep build order.
        pairs = sorted(pairs, key=lambda t: -t[0])[: q["keep_top_k"]]
        indices = {}
        for _, c, i in pairs:
            indices.setdefault(c, []).append(i)
    return [(c, i) for c in sorted(indices) for i in indices[c]]


def detection_output(layer: Any, inputs: list[Array]) -> list[Array]:
    """detection_output_layer.cpp: rows [image, label, score, xmin, ymin, xmax, ymax] of shape
    1 x 1 x N x 7, images in order, labels ascending, then NMS order. Boxes are not clipped.
    With no detection in the whole batch: one row per image, [i, -1, -1, -1, -1, -1, -1].

    RefineDet (sfzhang15/RefineDet src/caffe/layers/detection_output_layer.cpp, bbox_util.cpp
    OSGetConfidenceScores and CasRegDecodeBBoxesAll): a 4th bottom arm_conf (N x P*2) turns a
    prior whose objectness arm_conf[p*2+1] < objectness_score into scores 1 (class 0) and 0 (the
    others); a 5th bottom arm_loc (N x P*4) is decoded against the priors first, and the
    locations are decoded against those refined priors with the same variances.
    """
    if not 3 <= len(inputs) <= 5:
        raise ValueError("DetectionOutput reference takes (loc, conf, priors[, arm_conf[, "
                         "arm_loc]])")
    if not get(layer.param.detection_output_param, "normalized_bbox", True):
        raise ValueError("DetectionOutput normalized_bbox: false is not modelled")
    q = _do_params(layer.param.detection_output_param)
    loc, conf, pri = (f64(v) for v in inputs[:3])
    num = loc.shape[0]
    n_pri = pri.shape[2] // 4
    priors, var = pri[0, 0].reshape(n_pri, 4), pri[0, 1].reshape(n_pri, 4)
    obj_thr = float(F32(get(layer.param.detection_output_param, "objectness_score", 0.01)))
    rows = []
    for n in range(num):
        pr = priors
        if len(inputs) == 5:  # CasRegDecodeBBoxesAll: refine the priors by the ARM's offsets
            arm_loc = f64(inputs[4])[n].reshape(n_pri, 4)
            pr = np.array([decode(priors[i], var[i], q["code"], q["in_target"], arm_loc[i])
                           for i in range(n_pri)])
        cf = conf[n].reshape(n_pri, q["C"]).copy()
        if len(inputs) >= 4:  # OSGetConfidenceScores
            easy = f64(inputs[3])[n].reshape(n_pri, 2)[:, 1] < obj_thr
            cf[easy] = 0.0
            cf[easy, 0] = 1.0
        lc = loc[n].reshape(n_pri, -1)
        dets = _image_detections(q, lc, cf.reshape(-1), pr, var)
        n_loc = 1 if q["share"] else q["C"]
        lc = lc.reshape(n_pri, n_loc, 4)
        for c, i in dets:
            box = _decode(q, pr[i], var[i], lc[i, 0 if q["share"] else c])
            rows.append([n, c, cf[i, c], *box])
    if not rows:
        rows = [[n] + [-1.0] * 6 for n in range(num)]
    return [np.asarray(rows, np.float64).reshape(1, 1, -1, 7)]


LAYERS: dict[str, LayerFn] = {
    "Permute": permute,
    "Normalize": normalize,
    "PriorBox": prior_box,
    "DetectionOutput": detection_output,
}
