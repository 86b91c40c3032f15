"""The OCR forks' layers: `Lstm` (lstm_param), `Reverse`, `Transpose`, `CTCGreedyDecoder`, and
BVLC's `Im2col` (which CTPN feeds into its Lstm).

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


LAYERS: dict[str, LayerFn] = {
    "Lstm": lstm_fork,
    "Reverse": reverse,
    "Transpose": transpose,
    "Im2col": im2col,
    "CTCGreedyDecoder": ctc_greedy_decoder,
}
