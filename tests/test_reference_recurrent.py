"""Self-tests of the sequence references (tests/reference/recurrent.py, ocr.py): scalar cases
worked out by hand from Caffe's formulas, which the PyTorch way of doing them would miss."""

from __future__ import annotations

from math import exp, tanh
from types import SimpleNamespace
from typing import Any

import numpy as np
from google.protobuf import text_format

from caffe_bridge import schema
from tests import reference
from tests.reference import run_layer


def sig(v: float) -> float:
    return 1.0 / (1.0 + exp(-v))


def make_layer(type_: str, text: str = "", blobs: tuple[Any, ...] = ()) -> SimpleNamespace:
    param = schema.LayerParameter()
    text_format.Parse(text, param)
    param.type = type_
    return SimpleNamespace(name="l", type=type_, param=param,
                           blobs=tuple(np.asarray(b, dtype=np.float32) for b in blobs))


def run(layer: SimpleNamespace, *inputs: Any) -> list[np.ndarray]:
    return run_layer(layer, [np.asarray(x, dtype=np.float64) for x in inputs])


def test_sequence_types_are_in_the_reference() -> None:
    assert {"LSTM", "RNN", "ContinuationIndicator", "Lstm", "Reverse", "Transpose", "Im2col",
            "CTCGreedyDecoder", "DenseBlock"} <= reference.SUPPORTED


# ---------------------------------------------------------------- BVLC LSTM

# H = 1, I = 1: gate rows i, f, o, g of W_xc are 1, 2, 3, 4; W_hc rows all 0.5; b_c = 0.
W_XC, B_C, W_HC = [[1], [2], [3], [4]], [0, 0, 0, 0], [[0.5], [0.5], [0.5], [0.5]]


def lstm_by_hand(x: list[float], cont: list[float]) -> list[float]:
    h = c = 0.0
    out = []
    for xt, ct in zip(x, cont, strict=True):
        a = [w * xt + 0.5 * ct * h for w in (1, 2, 3, 4)]
        c = ct * sig(a[1]) * c + sig(a[0]) * tanh(a[3])
        h = sig(a[2]) * tanh(c)
        out.append(h)
    return out


def test_lstm_scalar_by_hand() -> None:
    layer = make_layer("LSTM", "recurrent_param { num_output: 1 }", (W_XC, B_C, W_HC))
    x = np.array([1.0, -1.0, 0.5]).reshape(3, 1, 1)
    cont = np.array([[0.0], [1.0], [1.0]])
    (h,) = run(layer, x, cont)
    # t = 1 spelled out: c1 = sig(1) tanh(4), h1 = sig(3) tanh(c1)
    c1 = sig(1) * tanh(4)
    h1 = sig(3) * tanh(c1)
    assert abs(h[0, 0, 0] - h1) < 1e-12
    c2 = sig(-2 + 0.5 * h1) * c1 + sig(-1 + 0.5 * h1) * tanh(-4 + 0.5 * h1)
    assert abs(h[1, 0, 0] - sig(-3 + 0.5 * h1) * tanh(c2)) < 1e-12
    np.testing.assert_allclose(h.ravel(), lstm_by_hand([1, -1, 0.5], [0, 1, 1]), atol=1e-12)


def test_lstm_third_row_is_the_output_gate() -> None:
    """Row 2 (o) at -50 closes the output: h = 0 though the cell is not; torch's row 2 is g."""
    w = [[3], [0], [-50], [1]]
    layer = make_layer("LSTM", "recurrent_param { num_output: 1 }", (w, [0] * 4, [[0]] * 4))
    (h,) = run(layer, np.ones((2, 1, 1)), np.array([[0.0], [1.0]]))
    assert np.all(np.abs(h) < 1e-20)


def test_lstm_cont_zero_resets_h_and_c() -> None:
    layer = make_layer("LSTM", "recurrent_param { num_output: 1 }", (W_XC, B_C, W_HC))
    x = np.array([1.0, -1.0, 0.5, 2.0]).reshape(4, 1, 1)
    (h,) = run(layer, x, np.array([[0.0], [1.0], [0.0], [1.0]]))
    np.testing.assert_allclose(h.ravel()[2:], lstm_by_hand([0.5, 2.0], [0, 1]), atol=1e-12)
    np.testing.assert_allclose(h.ravel()[:2], lstm_by_hand([1, -1], [0, 1]), atol=1e-12)


def test_lstm_static_input_and_exposed_state() -> None:
    """x_static adds W_xc_static x_static to every step; h_0/c_0 come in, h_T/c_T go out."""
    w_static = [[1], [0], [0], [-1]]
    layer = make_layer("LSTM", "recurrent_param { num_output: 1 expose_hidden: true }",
                       ([[0]] * 4, [0] * 4, w_static, [[1]] * 4))
    h0, c0 = 0.5, 2.0
    h, h_t, c_t = run(layer, np.zeros((1, 1, 1)), np.ones((1, 1)), [[3.0]], [[[h0]]], [[[c0]]])
    a = [3 + h0, h0, h0, -3 + h0]  # W_xc_static x_static + W_hc h0 (cont = 1)
    c = sig(a[1]) * c0 + sig(a[0]) * tanh(a[3])
    assert abs(c_t.item() - c) < 1e-12
    assert abs(h.item() - sig(a[2]) * tanh(c)) < 1e-12
    assert h_t.shape == c_t.shape == (1, 1, 1) and h_t.item() == h.item()


# ---------------------------------------------------------------- BVLC RNN


def test_rnn_scalar_by_hand() -> None:
    """h_t = tanh(w_hh cont h + w_xh x + b_h), o_t = tanh(w_ho h_t + b_o); blob order W_xh, b_h,
    W_hh, W_ho, b_o."""
    layer = make_layer("RNN", "recurrent_param { num_output: 1 }",
                       ([[2]], [0.1], [[0.5]], [[-1]], [0.3]))
    x = np.array([1.0, -1.0, 2.0]).reshape(3, 1, 1)
    (o,) = run(layer, x, np.array([[0.0], [1.0], [0.0]]))
    h1 = tanh(2 + 0.1)
    h2 = tanh(0.5 * h1 - 2 + 0.1)
    h3 = tanh(4 + 0.1)  # cont = 0: h2 forgotten
    np.testing.assert_allclose(o.ravel(), [tanh(-h + 0.3) for h in (h1, h2, h3)], atol=1e-12)


def test_rnn_exposed_state() -> None:
    layer = make_layer("RNN", "recurrent_param { num_output: 1 expose_hidden: true }",
                       ([[1]], [0], [[2]], [[1]], [0]))
    o, h_t = run(layer, np.zeros((1, 1, 1)), np.ones((1, 1)), [[[0.25]]])
    assert abs(h_t.item() - tanh(0.5)) < 1e-12
    assert abs(o.item() - tanh(tanh(0.5))) < 1e-12


# ---------------------------------------------------------------- ContinuationIndicator


def test_continuation_indicator() -> None:
    layer = make_layer("ContinuationIndicator",
                       "continuation_indicator_param { time_step: 3 axis: 1 }")
    (out,) = run(layer, np.zeros((3, 2, 5)))
    np.testing.assert_array_equal(out, [[0, 0], [1, 1], [1, 1]])
    old = make_layer("ContinuationIndicator",
                     "continuation_indicator_param { time_step: 2 batch_size: 3 }")
    np.testing.assert_array_equal(run(old)[0], [[0, 0, 0], [1, 1, 1]])


# ---------------------------------------------------------------- the OCR forks


def test_fork_lstm_scalar_by_hand() -> None:
    """Blob order W_i, W_h, b; gates i, f, o, g; no cont bottom: the recurrence starts at t = 1."""
    layer = make_layer("Lstm", "lstm_param { num_output: 1 }",
                       ([[1], [2], [3], [4]], [[0.5]] * 4, [0.1, 0, 0, -0.1]))
    (h,) = run(layer, np.array([1.0, -1.0]).reshape(2, 1, 1))
    c1 = sig(1.1) * tanh(3.9)
    h1 = sig(3) * tanh(c1)
    a = [-1 + 0.1 + 0.5 * h1, -2 + 0.5 * h1, -3 + 0.5 * h1, -4 - 0.1 + 0.5 * h1]
    c2 = sig(a[1]) * c1 + sig(a[0]) * tanh(a[3])
    np.testing.assert_allclose(h.ravel(), [h1, sig(a[2]) * tanh(c2)], atol=1e-12)


def test_fork_lstm_cpu_stream0_bug() -> None:
    """The fork's CPU forward hands stream 0's recurrent term to stream 1."""
    layer = make_layer("Lstm", "lstm_param { num_output: 1 }",
                       ([[1], [1], [1], [1]], [[1]] * 4, [0] * 4))
    x = np.array([[1.0, -1.0], [0.0, 0.0]]).reshape(2, 2, 1)
    (gpu,) = reference.ocr.lstm_fork(layer, [x])
    (cpu,) = reference.ocr.lstm_fork(layer, [x], cpu_stream0_bug=True)
    assert gpu[1, 0, 0] == cpu[1, 0, 0]
    # stream 1 at t = 1 sees stream 0's h (positive) on the CPU, its own (negative) on the GPU
    h_own, h_s0 = gpu[0, 1, 0], gpu[0, 0, 0]
    c1 = sig(-1) * tanh(-1)
    c_gpu = sig(h_own) * c1 + sig(h_own) * tanh(h_own)
    c_cpu = sig(h_s0) * c1 + sig(h_s0) * tanh(h_s0)
    assert abs(gpu[1, 1, 0] - sig(h_own) * tanh(c_gpu)) < 1e-12
    assert abs(cpu[1, 1, 0] - sig(h_s0) * tanh(c_cpu)) < 1e-12


def test_reverse_and_transpose() -> None:
    x = np.arange(6.0).reshape(2, 3)
    rev = make_layer("Reverse", "reverse_param { axis: 1 }")
    np.testing.assert_array_equal(run(rev, x)[0], [[2, 1, 0], [5, 4, 3]])
    np.testing.assert_array_equal(run(make_layer("Reverse"), x)[0], [[3, 4, 5], [0, 1, 2]])
    y = np.arange(24.0).reshape(2, 3, 4)
    tr = make_layer("Transpose", "transpose_param { dim: 2 dim: 0 dim: 1 }")
    (out,) = run(tr, y)
    assert out.shape == (4, 2, 3)
    assert out[3, 1, 2] == y[1, 2, 3]


def test_im2col_by_hand() -> None:
    """1 x 1 x 3 x 3, kernel 2: rows (ki, kj) = (0,0), (0,1), (1,0), (1,1); 2 x 2 positions."""
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    (out,) = run(make_layer("Im2col", "convolution_param { kernel_size: 2 }"), x)
    want = [[[0, 1], [3, 4]], [[1, 2], [4, 5]], [[3, 4], [6, 7]], [[4, 5], [7, 8]]]
    np.testing.assert_array_equal(out, [want])
    (padded,) = run(make_layer("Im2col", "convolution_param { kernel_size: 3 pad: 1 }"), x)
    assert padded.shape == (1, 9, 3, 3)
    assert padded[0, 0, 0, 0] == 0 and padded[0, 4].tolist() == x[0, 0].tolist()


def test_ctc_greedy_decoder_by_hand() -> None:
    """Steps argmax a a _ a b b with blank _ = 0: merged -> a a b; -1 pads to T."""
    labels = [1, 1, 0, 1, 2, 2]
    x = np.zeros((6, 1, 3))
    x[np.arange(6), 0, labels] = 1.0
    (out,) = run(make_layer("CTCGreedyDecoder"), x)
    assert out.shape == (1, 6, 1, 1)
    assert out.ravel().tolist() == [1, 1, 2, -1, -1, -1]
    plain = make_layer("CTCGreedyDecoder", "ctc_decoder_param { ctc_merge_repeated: false }")
    assert run(plain, x)[0].ravel().tolist() == [1, 1, 1, 2, 2, -1]
    last = make_layer("CTCGreedyDecoder", "ctc_decoder_param { blank_index: -1 }")
    assert run(last, x)[0].ravel().tolist() == [1, 0, 1, -1, -1, -1]


def test_dense_block_by_hand() -> None:
    """One transition, growth 1: BN-ReLU then a 3 x 3 kernel with one 1 at (0, 0), which as a
    true convolution reads the input at (h + 1, w + 1): the new channel is shifted up-left."""
    x = np.arange(9.0).reshape(1, 1, 3, 3) - 4.0
    kernel = np.zeros((1, 1, 3, 3))
    kernel[0, 0, 0, 0] = 1.0
    mean, var = 1.0, 4.0 - 1e-5  # (x - 1) / 2
    blobs = (kernel, [[[[2.0]]]], [[[[0.5]]]], [[[[mean]]]], [[[[var]]]], [0.0])
    layer = make_layer("DenseBlock", "denseblock_param { numTransition: 1 growthRate: 1 }", blobs)
    (out,) = run(layer, x)
    y = np.maximum(2.0 * (x[0, 0] - 1.0) / 2.0 + 0.5, 0.0)
    want = np.zeros((3, 3))
    want[:2, :2] = y[1:, 1:]
    assert out.shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(out[0, 0], x[0, 0])
    np.testing.assert_allclose(out[0, 1], want, atol=1e-6)


def test_lstm_with_x_alone_never_recurs() -> None:
    """caffe_ocr's one-bottom LSTM: cont is all 0, so each step sees only its own x."""
    layer = make_layer("LSTM", "recurrent_param { num_output: 1 }", (W_XC, B_C, W_HC))
    (h,) = run(layer, np.array([1.0, -1.0, 0.5]).reshape(3, 1, 1))
    np.testing.assert_allclose(h.ravel(), [lstm_by_hand([v], [0])[0] for v in (1, -1, 0.5)],
                               atol=1e-12)


def test_ctpn_text_proposals_by_hand() -> None:
    """Python 2.7 anchors: h = 11 spans y 2..12 (int(7.5 - 5), int(7.5 + 5)), h = 283 spans
    -133..148; x spans 0..15. A box keeps the anchor's centre and (height + 1) for zero deltas:
    2..12 -> 1.5..12.5. Two positions (x = 0, 1; stride 16)."""
    layer = make_layer("Python", 'python_param { module: "layers.text_proposal_layer" '
                       "layer: \"ProposalLayer\" param_str: \"'feat_stride': 16\" }")
    probs = np.zeros((1, 20, 1, 2))
    probs[0, 10:, 0, 1] = np.arange(10) / 10.0
    deltas = np.zeros((1, 20, 1, 2))
    deltas[0, 1, 0, 1] = np.log(2.0)  # anchor 0 at x = 1: twice as tall
    boxes, scores = run(layer, probs, deltas, [[1000.0, 1000.0, 1.0]])
    assert boxes.shape == (20, 4) and scores.shape == (20, 1)
    np.testing.assert_array_equal(scores[10:, 0], np.arange(10) / 10.0)
    np.testing.assert_array_equal(boxes[0], [0, 1.5, 15, 12.5])
    np.testing.assert_array_equal(boxes[9], [0, 0, 15, 148.5])  # -133.5 clipped to 0
    # x = 1, anchor 0: centre 7, height 11 -> 22: y from 7 - 11 = -4 (clipped to 0) to 18
    np.testing.assert_allclose(boxes[10], [16, 0, 31, 18], atol=1e-12)
    clipped, _ = run(layer, probs, deltas, [[10.0, 20.0, 1.0]])
    np.testing.assert_allclose(clipped[10], [16, 0, 19, 9], atol=1e-12)
