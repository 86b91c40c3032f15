"""The OCR forks' layers: `Lstm` (lstm_param), `Reverse`, `Transpose`, `CTCGreedyDecoder`,
`DenseBlock`, and BVLC's `Im2col` (which CTPN feeds into its Lstm).

Homes: tianzhi0549/CTPN (caffe/src/caffe/layers/) and senlinuc/caffe_ocr (src/caffe/layers/),
whose Lstm (caffe_ocr: lstm_layer_Junhyuk.cpp), Reverse and Transpose agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._util import Array, LayerFn, f64, get, values
from .conv import spatial_params


def _sigmoid(x: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-x))


def lstm_fork(layer: Any, inputs: list[Array], cpu_stream0_bug: bool = False) -> list[Array]:
    """The OCR forks' Lstm: x (T x N x ...) [, clip (T x N)] -> h (T x N x num_output).

    Source: tianzhi0549/CTPN caffe/src/caffe/layers/lstm_layer.cu (Forward_gpu) and .cpp.
    Blobs: W_i (4H x I), W_h (4H x H), b (4H); gate rows i, f, o, g (i, f, o sigmoid, g tanh).
    clip_t = clip[t, n] if a clip bottom is given, else (t > 0); h_0 = c_0 = 0 on a fresh net.
    a_t = W_i x_t + b + clip_t * W_h h_{t-1}; c_t = clip_t * f * c_{t-1} + i * g;
    h_t = o * tanh(c_t).

    The fork's CPU forward differs: it adds stream 0's W_h h_{t-1} to *every* stream (it passes
    the unadvanced h_to_gate pointer to caffe_add) and treats clip as a boolean. The GPU forward,
    the one CTPN is trained and run with by default, is per stream; this follows it.
    ``cpu_stream0_bug=True`` reproduces the CPU forward instead (tests only).
    """
    x = f64(inputs[0])
    if x.ndim < 2:
        raise ValueError(f"Lstm input {x.shape} must be T x N x ... (I = count(2), 1 for 2-D)")
    t_len, n = x.shape[:2]
    clip = f64(inputs[1]).reshape(t_len, n) if len(inputs) > 1 else None
    w_i, w_h, b = (f64(v) for v in layer.blobs)
    hdim = w_h.shape[1]
    pre = x.reshape(t_len, n, -1) @ w_i.T + b
    h, c = np.zeros((n, hdim)), np.zeros((n, hdim))
    out = np.empty((t_len, n, hdim))
    for t in range(t_len):
        ct = (clip[t] if clip is not None else np.full(n, float(t > 0)))[:, None]
        rec = h @ w_h.T
        if cpu_stream0_bug:
            ct = (ct != 0).astype(np.float64)
            rec = np.broadcast_to(rec[:1], rec.shape)
        a = pre[t] + ct * rec
        i, f, o = (_sigmoid(a[:, k * hdim:(k + 1) * hdim]) for k in range(3))
        g = np.tanh(a[:, 3 * hdim:])
        c = ct * f * c + i * g
        h = o * np.tanh(c)
        out[t] = h
    return [out]


def reverse(layer: Any, inputs: list[Array]) -> list[Array]:
    """Reverse the order along reverse_param.axis (default 0; negative axes are rejected).

    Source: tianzhi0549/CTPN caffe/src/caffe/layers/reverse_layer.cpp (reverse_cpu).
    """
    x = f64(inputs[0])
    axis = int(get(layer.param.reverse_param, "axis", 0))
    if not 0 <= axis < x.ndim:
        raise ValueError(f"Reverse axis {axis} out of range for {x.shape}")
    return [np.flip(x, axis).copy()]


def transpose(layer: Any, inputs: list[Array]) -> list[Array]:
    """Top axis i is bottom axis dim[i] (numpy's transpose with axes = dim).

    Source: tianzhi0549/CTPN caffe/src/caffe/layers/transpose_layer.cpp (transpose_cpu).
    """
    x = f64(inputs[0])
    dims = [int(d) for d in values(layer.param.transpose_param, "dim")]
    if sorted(dims) != list(range(x.ndim)):
        raise ValueError(f"Transpose dim {dims} is not a permutation of {x.ndim} axes")
    return [np.transpose(x, dims).copy()]


def im2col(layer: Any, inputs: list[Array]) -> list[Array]:
    """BVLC Im2col, 2-D: N x C x H x W -> N x (C*kh*kw) x H' x W', row (c, ki, kj) like im2col.

    Source: BVLC/caffe src/caffe/layers/im2col_layer.cpp and src/caffe/util/im2col.cpp
    (im2col_cpu; zero padding; dilation as in convolution).
    """
    x = f64(inputs[0])
    if x.ndim != 4:
        raise ValueError(f"Im2col reference handles N x C x H x W, got {x.shape}")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = spatial_params(layer.param.convolution_param, 2)
    n, c, hgt, wid = x.shape
    oh = (hgt + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wid + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.empty((n, c, kh, kw, oh, ow))
    for ki in range(kh):
        for kj in range(kw):
            r0, c0 = ki * dh, kj * dw
            out[:, :, ki, kj] = xp[:, :, r0:r0 + sh * (oh - 1) + 1:sh, c0:c0 + sw * (ow - 1) + 1:sw]
    return [out.reshape(n, c * kh * kw, oh, ow)]


def ctc_greedy_decoder(layer: Any, inputs: list[Array]) -> list[Array]:
    """Best path per stream: T x N x C scores -> N x T x 1 x 1 labels, padded with -1.

    Source: senlinuc/caffe_ocr src/caffe/layers/ctc_decoder_layer.cpp (one bottom, one top:
    CTCGreedyDecoderLayer::Decode without sequence indicators). Argmax takes the first maximum;
    the blank (ctc_decoder_param.blank_index, default 0, negative = C - 1) is dropped; with
    ctc_merge_repeated (default true) a label equal to the previous step's argmax is dropped
    (so a blank between two equal labels keeps both).
    """
    if len(inputs) != 1:
        raise ValueError("reference CTCGreedyDecoder handles the decoding form (one bottom)")
    x = f64(inputs[0])
    t_len, n, c = x.shape[:3]
    p = layer.param.ctc_decoder_param
    blank = int(get(p, "blank_index", 0))
    blank = c - 1 if blank < 0 else blank
    merge = bool(get(p, "ctc_merge_repeated", True))
    best = x.reshape(t_len, n, c).argmax(axis=2)
    out = np.full((n, t_len), -1.0)
    for s in range(n):
        seq, prev = [], -1
        for t in range(t_len):
            k = int(best[t, s])
            if k != blank and not (merge and k == prev):
                seq.append(k)
            prev = k
        out[s, :len(seq)] = seq
    return [out.reshape(n, t_len, 1, 1)]


def _conv_flipped_same(x: Array, w: Array) -> Array:
    """A true convolution (kernel flipped, as CUDNN_CONVOLUTION), 'same' size, stride 1."""
    k = w.shape[2]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    n, _, hgt, wid = x.shape
    out = np.zeros((n, w.shape[0], hgt, wid))
    for fx in range(k):
        for fy in range(k):
            # output (h, w) reads input (h + p - fx, w + p - fy)
            patch = xp[:, :, 2 * p - fx:2 * p - fx + hgt, 2 * p - fy:2 * p - fy + wid]
            out += np.einsum("oc,nchw->nohw", w[:, :, fx, fy], patch)
    return out


def _bn_relu(x: Array, scale: Array, bias: Array, mean: Array, var: Array) -> Array:
    c = x.shape[1]
    shape = (1, c, 1, 1)
    y = scale.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5)
    return np.maximum(y + bias.reshape(shape), 0.0)


def dense_block(layer: Any, inputs: list[Array]) -> list[Array]:
    """caffe_ocr's DenseBlock at test time: numTransition x (BN-ReLU-[Conv1x1-BN-ReLU]-Conv3x3),
    each transition's growthRate channels appended to its input.

    Source: senlinuc/caffe_ocr src/caffe/layers/DenseBlock_layer.cu (Forward_gpu, TEST) and
    DenseBlock_layer.cpp (LayerSetUp: blob layout; Forward_cpu, convolution_Fwd, BN_inf_Fwd).
    Kernels are flipped (CUDNN_CONVOLUTION; the CPU loop flips too), pad 1, stride 1 whatever
    the geometry fields say; BN eps 1e-5 (CUDNN_BN_MIN_EPSILON of the cuDNN of its time, and the
    CPU's constant). Blobs (nT transitions): 3x3 filters [0, nT), BN scale [nT, 2nT), BN bias,
    mean, var, then with use_BC the 1x1 filters [5nT, 6nT) and the bottleneck BN scale, bias,
    mean, var; last a scalar. The GPU uses mean and var as stored; the CPU forward divides them
    by that scalar (0 after GPU training, zeroing them): this follows the GPU.
    """
    x = f64(inputs[0])
    p = layer.param.denseblock_param
    n_t = int(get(p, "numTransition", 40))
    bc = bool(get(p, "use_BC", False))
    b = [f64(v) for v in layer.blobs]
    feats = x
    for t in range(n_t):
        y = _bn_relu(feats, *(b[k * n_t + t] for k in (1, 2, 3, 4)))
        if bc:
            y = _conv_flipped_same(y, b[5 * n_t + t])
            y = _bn_relu(y, *(b[k * n_t + t] for k in (6, 7, 8, 9)))
        feats = np.concatenate([feats, _conv_flipped_same(y, b[t])], axis=1)
    return [feats]


def _py2_half(v: int) -> int:
    return v // 2  # Python 2.7 `v/2` on ints


def ctpn_text_proposals(layer: Any, inputs: list[Array]) -> list[Array]:
    """CTPN's Python text proposal layer: an anchor per (row y, column x, height a), its box
    from (dy, dh) and its foreground score; clipped to the image; no NMS, no sorting.

    Source: tianzhi0549/CTPN src/layers/text_proposal_layer.py (forward), src/anchor.py
    (AnchorText: heights 11..283, width 16, int32 corners from Python 2.7 integer `h/2`),
    src/other.py (clip_boxes). Rows are ordered y, x, a; scores are channels A.. of the probs;
    deltas are channel pairs (2a, 2a + 1) = (dy, dh); box y = dy*h_a + cy_a - exp(dh)*h_a/2,
    height exp(dh)*h_a, x from the anchor; x clipped to [0, W_img - 1], y to [0, H_img - 1].
    """
    from .rcnn import _yaml_dict

    stride = float(_yaml_dict(layer.param.python_param.param_str)["feat_stride"])
    probs, deltas, info = (f64(v) for v in inputs)
    if probs.shape[0] != 1:
        raise ValueError("CTPN's proposal layer asserts single-item batches")
    basic = []
    for h in (11, 16, 23, 33, 48, 68, 97, 139, 198, 283):
        x_ctr = y_ctr = (0 + 15) * 0.5
        corners = [x_ctr - _py2_half(16), y_ctr - _py2_half(h), x_ctr + _py2_half(16),
                   y_ctr + _py2_half(h)]
        basic.append(np.trunc(corners))  # stored into an int32 array
    basic = np.array(basic)
    n_a = len(basic)
    _, _, fh, fw = probs.shape
    rows = []
    for y in range(fh):
        for x in range(fw):
            for a in range(n_a):
                ax1, ay1, ax2, ay2 = basic[a] + np.array([x, y, x, y]) * stride
                dy, dh = deltas[0, 2 * a, y, x], deltas[0, 2 * a + 1, y, x]
                cy, ha = (ay1 + ay2) / 2.0, ay2 - ay1 + 1.0
                bh = np.exp(dh) * ha
                top = dy * ha + cy - bh / 2.0
                rows.append([ax1, top, ax2, top + bh, probs[0, n_a + a, y, x]])
    out = np.array(rows)
    img_h, img_w = info.reshape(-1)[:2]
    out[:, 0:4:2] = np.clip(out[:, 0:4:2], None, img_w - 1).clip(0, None)
    out[:, 1:4:2] = np.clip(out[:, 1:4:2], None, img_h - 1).clip(0, None)
    return [out[:, :4], out[:, 4:]]


LAYERS: dict[str, LayerFn] = {
    "Lstm": lstm_fork,
    "Reverse": reverse,
    "Transpose": transpose,
    "Im2col": im2col,
    "CTCGreedyDecoder": ctc_greedy_decoder,
    "DenseBlock": dense_block,
    "Python:layers.text_proposal_layer.ProposalLayer": ctpn_text_proposals,
}
