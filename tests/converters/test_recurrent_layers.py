"""Sequence layers (BVLC LSTM/RNN, jolibrain ContinuationIndicator, the OCR forks' Lstm, Reverse,
Transpose, CTCGreedyDecoder, BVLC Im2col) against the numpy reference, with their traps:
Caffe's gate order, cont resets in mid-sequence, expose_hidden, the static input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_bridge.build import build_module
from caffe_bridge.ir import with_weights
from caffe_bridge.random_weights import random_weights
from tests import reference
from tests.helpers.layer_check import check_layer, net_from_text, rel_err

COVERS = {"LSTM", "RNN", "ContinuationIndicator", "Lstm", "Reverse", "Transpose", "Im2col",
          "CTCGreedyDecoder", "DenseBlock", "Python:layers.text_proposal_layer.ProposalLayer"}


def seq_net(layer: str, inputs: dict[str, tuple[int, ...]]) -> str:
    """An Input layer with the named tops and shapes, then ``layer``."""
    tops = "".join(f' top: "{n}"' for n in inputs)
    dims = " ".join("shape {" + "".join(f" dim: {d}" for d in s) + " }" for s in inputs.values())
    return f'name: "t"\nlayer {{ name: "in" type: "Input"{tops} input_param {{ {dims} }} }}\n' \
           f"{layer}\n"


def recurrent(type_: str, bottoms: list[str], tops: list[str], hidden: int,
              expose: bool = False) -> str:
    b = "".join(f' bottom: "{n}"' for n in bottoms)
    t = "".join(f' top: "{n}"' for n in tops)
    extra = " expose_hidden: true" if expose else ""
    return f'layer {{ name: "r" type: "{type_}"{b}{t} recurrent_param {{ num_output: {hidden}' \
           f"{extra} }} }}"


def cont_with_reset(t: int, n: int) -> np.ndarray:
    """0 at t = 0 for every stream, and a new sequence in stream 0 at t = 2."""
    cont = np.ones((t, n), np.float32)
    cont[0] = 0
    cont[2, 0] = 0
    return cont


def feeds(rng: np.random.Generator, shapes: dict[str, tuple[int, ...]],
          cont: np.ndarray) -> dict[str, np.ndarray]:
    out = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    out["cont"] = cont
    return out


def big_weights(text: str, seed: int, scale: float = 0.6) -> dict[str, list[np.ndarray]]:
    """Weights large enough that the gates leave their linear range (gate mix-ups show)."""
    net = net_from_text(text)
    rng = np.random.default_rng(seed)
    return {layer.name: [(rng.standard_normal(s) * scale).astype(np.float32)
                         for s in layer.param_shapes] for layer in net.layers if layer.param_shapes}


CASES = {
    # name: (type, input shapes, extra bottoms, tops, hidden, expose)
    "lstm": ("LSTM", {"x": (5, 3, 4), "cont": (5, 3)}, [], ["h"], 6, False),
    "lstm-4d-x": ("LSTM", {"x": (4, 2, 3, 2), "cont": (4, 2)}, [], ["h"], 5, False),
    "lstm-static": ("LSTM", {"x": (4, 2, 3), "cont": (4, 2), "xs": (2, 5)}, ["xs"], ["h"], 4,
                    False),
    "lstm-expose": ("LSTM", {"x": (4, 3, 3), "cont": (4, 3), "h0": (1, 3, 5), "c0": (1, 3, 5)},
                    ["h0", "c0"], ["h", "hT", "cT"], 5, True),
    "lstm-static-expose": ("LSTM", {"x": (3, 2, 3), "cont": (3, 2), "xs": (2, 2, 2),
                                    "h0": (1, 2, 4), "c0": (1, 2, 4)},
                           ["xs", "h0", "c0"], ["h", "hT", "cT"], 4, True),
    "rnn": ("RNN", {"x": (5, 3, 4), "cont": (5, 3)}, [], ["o"], 6, False),
    "rnn-static": ("RNN", {"x": (4, 2, 3), "cont": (4, 2), "xs": (2, 3)}, ["xs"], ["o"], 4,
                   False),
    "rnn-expose": ("RNN", {"x": (4, 2, 3), "cont": (4, 2), "h0": (1, 2, 5)}, ["h0"],
                   ["o", "hT"], 5, True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_recurrent_matches_caffe(case: tuple) -> None:
    type_, shapes, extra, tops, hidden, expose = case
    text = seq_net(recurrent(type_, ["x", "cont", *extra], tops, hidden, expose), shapes)
    t, n = shapes["x"][:2]
    inputs = feeds(np.random.default_rng(1), shapes, cont_with_reset(t, n))
    check_layer(text, weights=big_weights(text, 2), inputs=inputs)


def _run(text: str, weights: dict, inputs: dict) -> tuple[list[np.ndarray], dict]:
    net = with_weights(net_from_text(text), weights)
    model = build_module(net)
    with torch.no_grad():
        out = model(*(torch.from_numpy(inputs[k]) for k in net.inputs))
    outs = list(out) if isinstance(out, tuple) else [out]
    return [o.numpy() for o in outs], reference.run_net(net, inputs)


def test_lstm_gate_order_is_caffes_ifog_not_torchs_ifgo() -> None:
    """nn.LSTM with Caffe's blobs as they are (i, f, g, o) disagrees; reordered, it agrees."""
    shapes = {"x": (4, 2, 3), "cont": (4, 2)}
    text = seq_net(recurrent("LSTM", ["x", "cont"], ["h"], 5), shapes)
    w = big_weights(text, 3)
    cont = np.ones((4, 2), np.float32)
    cont[0] = 0
    inputs = feeds(np.random.default_rng(4), shapes, cont)
    (ours,), ref = _run(text, w, inputs)
    assert rel_err(ours, ref["h"]) < 1e-5
    w_xc, b_c, w_hc = (torch.from_numpy(a) for a in w["r"])

    def torch_lstm(order: list[int]) -> np.ndarray:
        lstm = torch.nn.LSTM(3, 5)
        idx = torch.cat([torch.arange(k * 5, (k + 1) * 5) for k in order])
        with torch.no_grad():
            lstm.weight_ih_l0.copy_(w_xc[idx])
            lstm.weight_hh_l0.copy_(w_hc[idx])
            lstm.bias_ih_l0.copy_(b_c[idx])
            lstm.bias_hh_l0.zero_()
            return lstm(torch.from_numpy(inputs["x"]))[0].numpy()

    assert rel_err(torch_lstm([0, 1, 2, 3]), ref["h"]) > 1e-2  # Caffe's rows read as i, f, g, o
    assert rel_err(torch_lstm([0, 1, 3, 2]), ref["h"]) < 1e-5  # reordered to torch's i, f, g, o


def test_cont_zero_mid_sequence_restarts_the_stream() -> None:
    """Stream 0 restarted at t = 2 equals a fresh run on its steps 2.. alone."""
    shapes = {"x": (5, 2, 3), "cont": (5, 2)}
    text = seq_net(recurrent("LSTM", ["x", "cont"], ["h"], 4), shapes)
    w = big_weights(text, 5)
    inputs = feeds(np.random.default_rng(6), shapes, cont_with_reset(5, 2))
    (ours,), ref = _run(text, w, inputs)
    assert rel_err(ours, ref["h"]) < 1e-5
    tail_shapes = {"x": (3, 1, 3), "cont": (3, 1)}
    tail_text = seq_net(recurrent("LSTM", ["x", "cont"], ["h"], 4), tail_shapes)
    tail_cont = np.array([[0], [1], [1]], np.float32)
    tail = {"x": inputs["x"][2:, :1].copy(), "cont": tail_cont}
    (fresh,), _ = _run(tail_text, w, tail)
    assert rel_err(ours[2:, :1], fresh) < 1e-6
    # without the reset the same steps differ (the state carried over matters)
    no_reset = dict(inputs, cont=np.where(np.arange(5)[:, None] == 0, 0, 1).astype(np.float32)
                    .repeat(2, 1))
    (carried,), _ = _run(text, w, no_reset)
    assert rel_err(carried[2:, :1], fresh) > 1e-3


def test_lstm_fractional_cont_scales_h_and_c() -> None:
    """cont multiplies h_{t-1} and f (BVLC LSTMUnit), not a 0/1 switch."""
    shapes = {"x": (4, 2, 3), "cont": (4, 2)}
    text = seq_net(recurrent("LSTM", ["x", "cont"], ["h"], 4), shapes)
    cont = np.array([[0, 0], [0.5, 1], [1, 0.25], [2, 1]], np.float32)
    check_layer(text, weights=big_weights(text, 7),
                inputs=feeds(np.random.default_rng(8), shapes, cont))


def test_recurrent_other_batch_size() -> None:
    """Converted for N = 2, run on N = 5 (T is fixed, as in Caffe)."""
    small = {"x": (4, 2, 3), "cont": (4, 2)}
    big = {"x": (4, 5, 3), "cont": (4, 5)}
    layer = recurrent("LSTM", ["x", "cont"], ["h"], 4)
    w = big_weights(seq_net(layer, small), 9)
    model = build_module(with_weights(net_from_text(seq_net(layer, small)), w))
    inputs = feeds(np.random.default_rng(10), big, cont_with_reset(4, 5))
    ref = reference.run_net(with_weights(net_from_text(seq_net(layer, big)), w), inputs)
    with torch.no_grad():
        out = model(torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["cont"]))
    assert rel_err(out.numpy(), ref["h"]) < 1e-5


def test_recurrent_fx_traces() -> None:
    shapes = {"x": (3, 2, 3), "cont": (3, 2), "h0": (1, 2, 4), "c0": (1, 2, 4)}
    text = seq_net(recurrent("LSTM", ["x", "cont", "h0", "c0"], ["h", "hT", "cT"], 4, True),
                   shapes)
    net = with_weights(net_from_text(text), random_weights(net_from_text(text), 0))
    traced = torch.fx.symbolic_trace(build_module(net))
    args = [torch.randn(s) for s in shapes.values()]
    for a, b in zip(traced(*args), build_module(net)(*args), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("layer,shapes,msg", [
    (recurrent("LSTM", ["x", "cont"], ["h"], 4), {"x": (3, 2), "cont": (3, 2)}, "3 axes"),
    (recurrent("LSTM", ["x", "cont"], ["h"], 4), {"x": (3, 2, 2), "cont": (3, 1)}, "cont"),
    (recurrent("LSTM", ["x", "cont"], ["h"], 0), {"x": (3, 2, 2), "cont": (3, 2)}, "num_output"),
    (recurrent("LSTM", ["x", "cont", "h0"], ["h", "hT"], 4, True),
     {"x": (3, 2, 2), "cont": (3, 2), "h0": (1, 2, 4)}, "bottoms"),
    (recurrent("RNN", ["x", "cont", "h0"], ["o", "hT"], 4, True),
     {"x": (3, 2, 2), "cont": (3, 2), "h0": (1, 2, 3)}, "initial state"),
])
def test_recurrent_bad_definitions(layer: str, shapes: dict, msg: str) -> None:
    from caffe_bridge.errors import CaffeBridgeError

    with pytest.raises(CaffeBridgeError, match=msg):
        net_from_text(seq_net(layer, shapes))


# ---------------------------------------------------------------- ContinuationIndicator


@pytest.mark.parametrize("body,bottom,shape", [
    ("time_step: 4 axis: 1", True, (4, 3, 2)),
    ("time_step: 5", True, (3, 2)),
    ("time_step: 3 batch_size: 2", False, (3, 2)),
])
def test_continuation_indicator(body: str, bottom: bool, shape: tuple[int, ...]) -> None:
    b = ' bottom: "x"' if bottom else ""
    layer = (f'layer {{ name: "ci" type: "ContinuationIndicator"{b} top: "cont" '
             f"continuation_indicator_param {{ {body} }} }}")
    # a consumer keeps the Input from being an output when the indicator has no bottom
    text = seq_net(layer, {"x": shape})
    check_layer(text) if bottom else check_layer(text + 'layer { name: "s" type: "Eltwise" '
                                                 'bottom: "x" bottom: "cont" top: "y" }')


# ---------------------------------------------------------------- the OCR forks' layers


def lstm_fork(bottoms: list[str], hidden: int) -> str:
    b = "".join(f' bottom: "{n}"' for n in bottoms)
    return f'layer {{ name: "l" type: "Lstm"{b} top: "h" lstm_param {{ num_output: {hidden} }} }}'


@pytest.mark.parametrize("shapes", [{"x": (5, 3, 4)}, {"x": (4, 2, 3, 2)}, {"x": (4, 3)},
                                    {"x": (1, 2, 3)}], ids=["3d", "4d", "2d", "one-step"])
def test_fork_lstm_matches_fork(shapes: dict) -> None:
    text = seq_net(lstm_fork(["x"], 5), shapes)
    check_layer(text, weights=big_weights(text, 11))


def test_fork_lstm_clip_one_stream() -> None:
    shapes = {"x": (5, 1, 3), "clip": (5, 1)}
    text = seq_net(lstm_fork(["x", "clip"], 4), shapes)
    rng = np.random.default_rng(12)
    inputs = {"x": rng.standard_normal((5, 1, 3)).astype(np.float32),
              "clip": np.array([[0], [1], [0], [1], [1]], np.float32)}
    check_layer(text, weights=big_weights(text, 13), inputs=inputs)


def test_fork_lstm_clip_needs_one_stream() -> None:
    from caffe_bridge.errors import CaffeBridgeError

    with pytest.raises(CaffeBridgeError, match="one stream"):
        net_from_text(seq_net(lstm_fork(["x", "clip"], 4), {"x": (5, 2, 3), "clip": (5, 2)}))


def test_fork_lstm_follows_gpu_forward_not_cpu_stream0_bug() -> None:
    """The fork's CPU forward feeds stream 0's recurrence to every stream: we follow the GPU."""
    text = seq_net(lstm_fork(["x"], 4), {"x": (4, 3, 3)})
    net = with_weights(net_from_text(text), big_weights(text, 14))
    x = np.random.default_rng(15).standard_normal((4, 3, 3)).astype(np.float32)
    layer = net.layer("l")
    gpu = reference.ocr.lstm_fork(layer, [x])[0]
    cpu = reference.ocr.lstm_fork(layer, [x], cpu_stream0_bug=True)[0]
    with torch.no_grad():
        ours = build_module(net)(torch.from_numpy(x)).numpy()
    assert rel_err(ours, gpu) < 1e-5
    assert rel_err(ours[:, 1:], cpu[:, 1:]) > 1e-2
    assert rel_err(ours[:, :1], cpu[:, :1]) < 1e-5  # stream 0 is the same in both


@pytest.mark.parametrize("axis,shape", [(0, (4, 2, 3)), (2, (2, 3, 5)), (3, (1, 2, 3, 4))])
def test_reverse(axis: int, shape: tuple[int, ...]) -> None:
    layer = f'layer {{ name: "r" type: "Reverse" bottom: "data" top: "out" ' \
            f"reverse_param {{ axis: {axis} }} }}"
    check_layer(seq_net(layer, {"data": shape}))


def test_reverse_default_axis_is_time_and_negative_is_refused() -> None:
    from caffe_bridge.errors import CaffeBridgeError

    check_layer(seq_net('layer { name: "r" type: "Reverse" bottom: "data" top: "out" }',
                        {"data": (3, 2)}))
    with pytest.raises(CaffeBridgeError, match="axis"):
        net_from_text(seq_net('layer { name: "r" type: "Reverse" bottom: "data" top: "out" '
                              "reverse_param { axis: -1 } }", {"data": (3, 2)}))


@pytest.mark.parametrize("dims,shape", [((3, 2, 0, 1), (2, 3, 4, 5)), ((2, 3, 1, 0), (2, 3, 4, 5)),
                                        ((1, 0, 2), (2, 3, 4)), ((0, 1), (2, 3))])
def test_transpose(dims: tuple[int, ...], shape: tuple[int, ...]) -> None:
    d = " ".join(f"dim: {v}" for v in dims)
    layer = f'layer {{ name: "t" type: "Transpose" bottom: "data" top: "out" ' \
            f"transpose_param {{ {d} }} }}"
    check_layer(seq_net(layer, {"data": shape}))


def test_transpose_needs_a_permutation() -> None:
    from caffe_bridge.errors import CaffeBridgeError

    with pytest.raises(CaffeBridgeError, match="permutation"):
        net_from_text(seq_net('layer { name: "t" type: "Transpose" bottom: "data" top: "out" '
                              "transpose_param { dim: 0 dim: 0 } }", {"data": (2, 3)}))


@pytest.mark.parametrize("conv,shape", [
    ("kernel_size: 3 pad: 1", (2, 3, 5, 6)),
    ("kernel_size: 2 stride: 2", (1, 2, 5, 7)),
    ("kernel_h: 3 kernel_w: 1 pad_h: 1 stride_w: 2", (1, 2, 4, 5)),
    ("kernel_size: 3 dilation: 2 pad: 2", (1, 2, 6, 6)),
])
def test_im2col(conv: str, shape: tuple[int, ...]) -> None:
    layer = f'layer {{ name: "i" type: "Im2col" bottom: "data" top: "out" ' \
            f"convolution_param {{ {conv} }} }}"
    check_layer(seq_net(layer, {"data": shape}))


def ctc(body: str = "") -> str:
    return f'layer {{ name: "d" type: "CTCGreedyDecoder" bottom: "data" top: "out" {body} }}'


def test_ctc_greedy_decoder_hand_case() -> None:
    """argmax per step 1 1 0 1 2 0 2 1 1 (t = 3 a tie of 1 and 2), blank 0."""
    labels = [1, 1, 0, 2, 2, 0, 2, 1, 1]
    x = np.full((9, 1, 3), -1.0, np.float32)
    x[np.arange(9), 0, labels] = 1.0
    x[3, 0, 1] = 1.0  # a tie between 1 and 2 at t = 3: the first maximum (1) wins
    merged = [1, 1, 2, 2, 1]
    plain = [1, 1, 1, 2, 2, 1, 1]
    for body, want in [("", merged), ("ctc_decoder_param { ctc_merge_repeated: false }", plain)]:
        text = seq_net(ctc(body), {"data": (9, 1, 3)})
        (ours,), ref = _run(text, {}, {"data": x})
        expect = np.full(9, -1.0)
        expect[:len(want)] = want
        np.testing.assert_array_equal(ref["out"].reshape(9), expect)
        np.testing.assert_array_equal(ours.reshape(9), expect)


@pytest.mark.parametrize("body", ["", "ctc_decoder_param { blank_index: -1 }",
                                  "ctc_decoder_param { blank_index: 2 ctc_merge_repeated: false }"])
def test_ctc_greedy_decoder_random(body: str) -> None:
    text = seq_net(ctc(body), {"data": (12, 4, 3)})
    rng = np.random.default_rng(16)
    x = rng.standard_normal((12, 4, 3)).astype(np.float32)
    (ours,), ref = _run(text, {}, {"data": x})
    np.testing.assert_array_equal(ours, ref["out"])
    assert ours.shape == (4, 12, 1, 1)


@pytest.mark.parametrize("layer,shapes", [
    (lstm_fork(["x"], 3), {"x": (4, 2, 3)}),
    (lstm_fork(["x", "clip"], 3), {"x": (4, 1, 3), "clip": (4, 1)}),
    (recurrent("RNN", ["x", "cont", "xs"], ["o"], 3), {"x": (3, 2, 2), "cont": (3, 2),
                                                       "xs": (2, 4)}),
    ('layer { name: "r" type: "Reverse" bottom: "x" top: "y" }', {"x": (3, 2)}),
    ('layer { name: "t" type: "Transpose" bottom: "x" top: "y" transpose_param { dim: 1 dim: 0 } }',
     {"x": (3, 2)}),
    ('layer { name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 3 '
     "pad: 1 stride: 2 } }", {"x": (2, 3, 5, 6)}),
    (ctc(), {"data": (6, 2, 4)}),
    ('layer { name: "c" type: "ContinuationIndicator" bottom: "x" top: "y" '
     "continuation_indicator_param { time_step: 3 axis: 1 } }", {"x": (3, 2)}),
])
def test_modules_retrace_with_torch_fx_and_other_batch(layer: str, shapes: dict) -> None:
    """symbolic_trace of the converted net agrees with the module, also on a new batch size."""
    net = net_from_text(seq_net(layer, shapes))
    net = with_weights(net, random_weights(net, 0))
    model = build_module(net)
    traced = torch.fx.symbolic_trace(model)
    rng = np.random.default_rng(0)
    args = [torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in shapes.values()]
    with torch.no_grad():
        torch.testing.assert_close(traced(*args), model(*args), rtol=0, atol=0)
    if "Im2col" in layer:  # any N, and any spatial size too
        x = torch.randn(4, 3, 7, 9)
        want = reference.run_layer(net.layer("i"), [x.numpy()])[0]
        assert rel_err(traced(x).numpy(), want) < 1e-6


# ---------------------------------------------------------------- DenseBlock (caffe_ocr)


def dense_layer(n_t: int, growth: int, bc: bool = False) -> str:
    extra = " use_BC: true" if bc else ""
    return (f'layer {{ name: "db" type: "DenseBlock" bottom: "data" top: "out" denseblock_param '
            f"{{ numTransition: {n_t} initChannel: 99 growthRate: {growth}{extra} }} }}")


def dense_weights(text: str, seed: int) -> dict[str, list[np.ndarray]]:
    """Filters, BN scale/bias/mean and a positive variance per transition; the scalar 0."""
    net = net_from_text(text)
    layer = net.layer("db")
    n_t = layer.param.denseblock_param.numTransition
    rng = np.random.default_rng(seed)
    blobs = []
    for i, s in enumerate(layer.param_shapes):
        group = i // n_t
        if len(s) == 1:
            arr = np.zeros(s)
        elif group in (0, 5):
            arr = rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))
        elif group in (1, 6):
            arr = rng.uniform(0.5, 1.5, s)
        elif group in (4, 9):
            arr = rng.uniform(0.2, 2.0, s)
        else:
            arr = rng.standard_normal(s) * 0.3
        blobs.append(arr.astype(np.float32))
    return {"db": blobs}


@pytest.mark.parametrize("n_t,growth,bc,shape", [(3, 2, False, (2, 3, 4, 5)),
                                                (2, 3, True, (1, 2, 5, 4)),
                                                (1, 4, False, (1, 1, 1, 1))])
def test_dense_block(n_t: int, growth: int, bc: bool, shape: tuple[int, ...]) -> None:
    text = seq_net(dense_layer(n_t, growth, bc), {"data": shape})
    net = net_from_text(text)
    assert net.blobs[net.value("out")].shape == (shape[0], shape[1] + n_t * growth, *shape[2:])
    assert len(net.layer("db").param_shapes) == (10 if bc else 5) * n_t + 1
    check_layer(text, weights=dense_weights(text, 17))


def test_dense_block_convolves_not_correlates() -> None:
    """cuDNN's CUDNN_CONVOLUTION (and the fork's CPU loop) flip the kernel: Caffe's usual
    cross-correlation with the stored filters gives another result."""
    text = seq_net(dense_layer(1, 2), {"data": (1, 2, 4, 4)})
    w = dense_weights(text, 18)
    x = np.random.default_rng(19).standard_normal((1, 2, 4, 4)).astype(np.float32)
    (ours,), ref = _run(text, w, {"data": x})
    assert rel_err(ours, ref["out"]) < 1e-5
    scale, bias, mean, var = (torch.from_numpy(w["db"][k]).reshape(-1) for k in (1, 2, 3, 4))
    y = torch.relu(torch.nn.functional.batch_norm(torch.from_numpy(x), mean, var, scale, bias,
                                                  False, 0.0, 1e-5))
    correlated = torch.nn.functional.conv2d(y, torch.from_numpy(w["db"][0]), padding=1)
    assert rel_err(correlated.numpy(), ref["out"][:, 2:]) > 1e-2


@pytest.mark.parametrize("type_,top", [("LSTM", "h"), ("RNN", "o")])
def test_recurrent_without_cont_bottom_is_caffe_ocrs_all_zero_cont(type_: str, top: str) -> None:
    """caffe_ocr accepts x alone; its cont then stays 0: the same as feeding cont = 0."""
    alone = seq_net(recurrent(type_, ["x"], [top], 4), {"x": (4, 2, 3)})
    w = big_weights(alone, 20)
    check_layer(alone, weights=w)
    x = np.random.default_rng(21).standard_normal((4, 2, 3)).astype(np.float32)
    (ours,), _ = _run(alone, w, {"x": x})
    with_cont = seq_net(recurrent(type_, ["x", "cont"], [top], 4), {"x": (4, 2, 3), "cont": (4, 2)})
    (zero,), _ = _run(with_cont, w, {"x": x, "cont": np.zeros((4, 2), np.float32)})
    np.testing.assert_array_equal(ours, zero)


def test_dense_block_with_random_weights() -> None:
    """random_weights draws a DenseBlock with positive variances (finite, non-trivial output)."""
    errors = check_layer(seq_net(dense_layer(2, 2, True), {"data": (1, 3, 4, 4)}), seed=3)
    assert max(errors.values()) < 1e-5


# ---------------------------------------------------------------- CTPN's text proposals

PROPOSAL = ('layer { name: "p" type: "Python" bottom: "data" bottom: "b1" bottom: "b2" '
            'top: "rois" top: "scores" python_param { module: "layers.text_proposal_layer" '
            "layer: \"ProposalLayer\" param_str: \"'feat_stride': 16\" } }")


@pytest.mark.parametrize("hw,info", [((2, 3), (30.0, 40.0)), ((3, 4), (200.0, 300.0))])
def test_ctpn_text_proposals(hw: tuple[int, int], info: tuple[float, float]) -> None:
    text = seq_net(PROPOSAL, {"data": (1, 20, *hw), "b1": (1, 20, *hw), "b2": (1, 3)})
    rng = np.random.default_rng(22)
    probs = rng.uniform(0, 1, (1, 20, *hw)).astype(np.float32)
    inputs = {"data": probs, "b1": (rng.standard_normal((1, 20, *hw)) * 0.5).astype(np.float32),
              "b2": np.array([[*info, 1.0]], np.float32)}
    errors = check_layer(text, inputs=inputs)
    assert max(errors.values()) < 1e-5


def test_ctpn_text_proposals_needs_batch_one_and_ten_anchors() -> None:
    from caffe_bridge.errors import CaffeBridgeError

    for shape in [(2, 20, 2, 2), (1, 18, 2, 2)]:
        with pytest.raises(CaffeBridgeError, match="batch 1"):
            net_from_text(seq_net(PROPOSAL, {"data": shape, "b1": shape, "b2": (1, 3)}))


@pytest.mark.parametrize("n_t,growth,shape", [
    (2147483647, 8, (1, 128, 8, 70)),  # an output past INT_MAX values (found by fuzzing: hung)
    (1000000, 1, (1, 1, 1, 1)),  # a small output, but ~4.5e12 filter values
])
def test_dense_block_refuses_absurd_sizes_before_listing_blobs(
        n_t: int, growth: int, shape: tuple[int, ...]) -> None:
    """The shape rule listed n_t transitions' blob shapes before any size check (seconds to
    hours); it now refuses what no Caffe blob could hold, at once."""
    from caffe_bridge.errors import ShapeError

    dims = " ".join(f"dim: {d}" for d in shape)
    text = (f'layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}'
            f"\n{dense_layer(n_t, growth)}\n")
    with pytest.raises(ShapeError, match="DenseBlock"):
        net_from_text(text)
