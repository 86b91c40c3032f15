"""BVLC's sequence layers: `LSTM`, `RNN` (recurrent_param) and jolibrain's `ContinuationIndicator`.

Layout: x is T x N x ... (time first), cont is T x N. Caffe unrolls the recurrence into a net of
InnerProduct / Scale / Eltwise / LSTMUnit layers (recurrent_layer.cpp); the weight blobs are the
learnable parameters of that unrolled net in the order they first appear.

State: without expose_hidden, Caffe copies the previous Forward's final state into h_0 / c_0; a
Forward on a fresh net starts from zeros (that is what this reference does), and so does every
Forward whose first cont row is all 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._util import Array, LayerFn, f64, get


def _sigmoid(x: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-x))


def _split_bottoms(layer: Any, inputs: list[Array], n_recur: int) -> tuple[
        Array, Array, Array | None, list[Array] | None]:
    """(x, cont, x_static or None, exposed initial states or None), as recurrent_layer.cpp."""
    expose = bool(get(layer.param.recurrent_param, "expose_hidden", False))
    n_hidden = n_recur if expose else 0
    if len(inputs) == 1 and not expose:
        # senlinuc/caffe_ocr src/caffe/layers/recurrent_layer.cpp accepts x alone: the unrolled
        # net's cont input is then never written and keeps its zero-initialised memory.
        inputs = [inputs[0], np.zeros(np.shape(inputs[0])[:2])]
    if len(inputs) not in (2 + n_hidden, 3 + n_hidden):
        raise ValueError(f"{layer.type} needs x, cont, [x_static], {n_hidden} hidden bottoms")
    x, cont = f64(inputs[0]), f64(inputs[1])
    if x.ndim < 3 or cont.shape != x.shape[:2]:
        raise ValueError(f"x {x.shape} must be T x N x ..., cont {cont.shape} T x N")
    static = f64(inputs[2]) if len(inputs) == 3 + n_hidden else None
    if static is not None and static.shape[0] != x.shape[1]:
        raise ValueError(f"x_static {static.shape} must have N = {x.shape[1]} rows")
    hidden = [f64(v) for v in inputs[len(inputs) - n_hidden:]] if expose else None
    return x, cont, static, hidden


def lstm(layer: Any, inputs: list[Array]) -> list[Array]:
    """BVLC LSTM.

    Source: BVLC/caffe src/caffe/layers/lstm_layer.cpp (FillUnrolledNet), lstm_unit_layer.cpp
    (Forward_cpu), recurrent_layer.cpp (bottoms/tops, blob order).
    Blobs: W_xc (4H x I, bias b_c 4H) on x, [W_xc_static (4H x S) on x_static], W_hc (4H x H).
    Gate rows are i, f, o, g. Per step: h' = cont_t * h_{t-1}; a = W_hc h' + (W_xc x_t + b_c)
    [+ W_xc_static x_static]; i, f, o = sigmoid, g = tanh; f is multiplied by cont_t (0 when
    cont_t == 0); c_t = f * c_{t-1} + i * g; h_t = o * tanh(c_t).
    expose_hidden: bottoms h_0, c_0 (1 x N x H) after x_static; tops h, h_T, c_T.
    """
    x, cont, static, hidden = _split_bottoms(layer, inputs, 2)
    w_xc, b_c = f64(layer.blobs[0]), f64(layer.blobs[1])
    w_static = f64(layer.blobs[2]) if static is not None else None
    w_hc = f64(layer.blobs[-1])
    t_len, n = x.shape[:2]
    hdim = w_hc.shape[1]
    xw = x.reshape(t_len, n, -1) @ w_xc.T + b_c
    sw = static.reshape(n, -1) @ w_static.T if static is not None else 0.0
    h = hidden[0].reshape(n, hdim) if hidden else np.zeros((n, hdim))
    c = hidden[1].reshape(n, hdim) if hidden else np.zeros((n, hdim))
    out = np.empty((t_len, n, hdim))
    for t in range(t_len):
        ct = cont[t][:, None]
        a = (ct * h) @ w_hc.T + xw[t] + sw
        i, f, o = (_sigmoid(a[:, k * hdim:(k + 1) * hdim]) for k in range(3))
        g = np.tanh(a[:, 3 * hdim:])
        f = np.where(ct == 0, 0.0, ct * f)
        c = f * c + i * g
        h = o * np.tanh(c)
        out[t] = h
    if hidden is None:
        return [out]
    return [out, h[None], c[None]]


def rnn(layer: Any, inputs: list[Array]) -> list[Array]:
    """BVLC RNN (Elman, tanh, with a tanh output layer).

    Source: BVLC/caffe src/caffe/layers/rnn_layer.cpp (FillUnrolledNet), recurrent_layer.cpp.
    Blobs: W_xh (H x I), b_h (H), [W_xh_static (H x S)], W_hh (H x H), W_ho (H x H), b_o (H).
    h_t = tanh(W_hh (cont_t * h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]);
    top o_t = tanh(W_ho h_t + b_o). expose_hidden: bottom h_0 (1 x N x H), tops o, h_T.
    """
    x, cont, static, hidden = _split_bottoms(layer, inputs, 1)
    w_xh, b_h = f64(layer.blobs[0]), f64(layer.blobs[1])
    k = 3 if static is not None else 2
    w_static = f64(layer.blobs[2]) if static is not None else None
    w_hh, w_ho, b_o = (f64(b) for b in layer.blobs[k:k + 3])
    t_len, n = x.shape[:2]
    hdim = w_hh.shape[0]
    xw = x.reshape(t_len, n, -1) @ w_xh.T + b_h
    sw = static.reshape(n, -1) @ w_static.T if static is not None else 0.0
    h = hidden[0].reshape(n, hdim) if hidden else np.zeros((n, hdim))
    out = np.empty((t_len, n, hdim))
    for t in range(t_len):
        h = np.tanh((cont[t][:, None] * h) @ w_hh.T + xw[t] + sw)
        out[t] = np.tanh(h @ w_ho.T + b_o)
    return [out] if hidden is None else [out, h[None]]


def continuation_indicator(layer: Any, inputs: list[Array]) -> list[Array]:
    """jolibrain's ContinuationIndicator: time_step x B, row 0 all 0, every later row all 1.

    Source: jolibrain/caffe src/caffe/layers/continuation_indicator_layer.cpp (master: B is
    bottom[0].shape(axis)); its first version (jolibrain commit 0919edfb, kept in BVLC/caffe's
    network) had no bottom and took B from `batch_size`.
    """
    p = layer.param.continuation_indicator_param
    steps = int(get(p, "time_step", 0))
    if inputs:
        x = np.asarray(inputs[0])
        axis = int(get(p, "axis", 0))
        if not 0 <= axis < x.ndim:
            raise ValueError(f"axis {axis} out of range for {x.shape}")
        batch = x.shape[axis]
    else:
        batch = int(get(p, "batch_size", 0))
    if steps <= 0 or batch <= 0:
        raise ValueError(f"time_step {steps} and batch size {batch} must be > 0")
    out = np.ones((steps, batch))
    out[0] = 0.0
    return [out]


LAYERS: dict[str, LayerFn] = {
    "LSTM": lstm,
    "RNN": rnn,
    "ContinuationIndicator": continuation_indicator,
}
