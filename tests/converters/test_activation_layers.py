"""Neuron layers and Softmax against the numpy Caffe reference, on the settings that differ from
PyTorch's defaults (Softmax axis, Exp/Log base, Threshold at equality, BNLL at large |x|)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_bridge.build import build_module
from caffe_bridge.errors import PrototxtError, UnsupportedLayerError
from caffe_bridge.ir import with_weights
from caffe_bridge.random_weights import random_inputs, random_weights
from tests import reference
from tests.helpers.layer_check import check_batch, check_layer, net_from_text, net_text, rel_err
from tests.helpers.layer_check import layer_text as one

COVERS = {"ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log", "BNLL",
          "Threshold", "Dropout", "Softmax", "Python:spatial_dropout.SpatialDropoutLayer"}

X4 = (2, 3, 4, 5)


CASES = {
    "relu": (one("ReLU"), X4),
    "relu-leaky": (one("ReLU", "relu_param { negative_slope: 0.1 }"), X4),
    "relu-negative-slope-above-1": (one("ReLU", "relu_param { negative_slope: -1.5 }"), X4),
    "prelu-per-channel": (one("PReLU"), X4),
    "prelu-shared": (one("PReLU", "prelu_param { channel_shared: true }"), X4),
    "prelu-2d": (one("PReLU"), (4, 6)),
    "elu": (one("ELU"), X4),
    "elu-alpha": (one("ELU", "elu_param { alpha: 0.3 }"), X4),
    "sigmoid": (one("Sigmoid"), X4),
    "tanh": (one("TanH"), X4),
    "absval": (one("AbsVal"), X4),
    "power-square-affine": (one("Power", "power_param { power: 2 scale: 0.5 shift: 1 }"), X4),
    "power-cube": (one("Power", "power_param { power: 3 }"), X4),
    "power-affine-only": (one("Power", "power_param { scale: -2 shift: 0.25 }"), X4),
    "power-zero-power": (one("Power", "power_param { power: 0 scale: 3 shift: 2 }"), X4),
    "power-zero-scale": (one("Power", "power_param { power: 3 scale: 0 shift: 2 }"), X4),
    "exp": (one("Exp"), X4),
    "exp-base2-affine": (one("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }"), X4),
    "exp-e-shift": (one("Exp", "exp_param { shift: -1.5 scale: 0.25 }"), X4),
    "exp-base-fraction": (one("Exp", "exp_param { base: 0.5 shift: 2 }"), X4),
    "bnll": (one("BNLL"), X4),
    "threshold": (one("Threshold", "threshold_param { threshold: 0.3 }"), X4),
    "dropout": (one("Dropout", "dropout_param { dropout_ratio: 0.3 }"), X4),
    "dropout-scale-at-test": (one("Dropout", "dropout_param { dropout_ratio: 0.3 "
                                             "scale_train: false }"), X4),
    "softmax-4d-default-axis": (one("Softmax"), X4),
    "softmax-axis-last": (one("Softmax", "softmax_param { axis: -1 }"), X4),
    "softmax-axis-2": (one("Softmax", "softmax_param { axis: 2 }"), X4),
    "softmax-2d": (one("Softmax"), (3, 10)),
}


@pytest.mark.parametrize("layer,shape", CASES.values(), ids=CASES.keys())
def test_layer_matches_caffe(layer: str, shape: tuple[int, ...]) -> None:
    check_layer(net_text(layer, shape))


LOG_CASES = {
    "log": "",
    "log-base10-affine": "log_param { base: 10 scale: 2 shift: 0.5 }",
    "log-base2": "log_param { base: 2 }",
    "log-e-shift": "log_param { shift: 1 scale: 0.5 }",
}


@pytest.mark.parametrize("body", LOG_CASES.values(), ids=LOG_CASES.keys())
def test_log_matches_caffe(body: str) -> None:
    x = np.random.default_rng(1).uniform(0.05, 4.0, X4).astype(np.float32)
    check_layer(net_text(one("Log", body), X4), inputs={"data": x})


def test_log_base_is_not_natural() -> None:
    """log_10(100) is 2; a converter ignoring ``base`` gives 4.6."""
    x = np.full((1, 1, 1, 2), 100.0, dtype=np.float32)
    out = _run(net_text(one("Log", "log_param { base: 10 }"), (1, 1, 1, 2)), x)
    np.testing.assert_allclose(out, 2.0, rtol=1e-6)


def test_exp_base_2() -> None:
    """2^(1 + 0.5 * 4) = 8."""
    x = np.full((1, 1, 1, 1), 4.0, dtype=np.float32)
    out = _run(net_text(one("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }"), (1, 1, 1, 1)), x)
    np.testing.assert_allclose(out, 8.0, rtol=1e-6)


def _run(text: str, x: np.ndarray) -> np.ndarray:
    model = build_module(net_from_text(text))
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_dropout_without_train_scaling_scales_at_test_time() -> None:
    """py-faster-rcnn's ``scale_train: false``: y = x * (1 - ratio) at test time; the identity
    (Caffe's usual test-time Dropout) is off by 1 / (1 - ratio) at every following fc layer."""
    x = np.full((1, 4), 10.0, dtype=np.float32)
    text = net_text(one("Dropout", "dropout_param { dropout_ratio: 0.5 scale_train: false }"),
                    (1, 4))
    np.testing.assert_allclose(_run(text, x), 5.0, rtol=1e-7)
    usual = net_text(one("Dropout", "dropout_param { dropout_ratio: 0.5 }"), (1, 4))
    np.testing.assert_array_equal(_run(usual, x), x)


def test_threshold_at_exact_equality_is_zero() -> None:
    """Caffe's Threshold is strict: x == threshold gives 0 (``>=`` would give 1)."""
    x = np.array([[0.5, 0.5, 0.4999, 0.5001, -1.0, 2.0]], dtype=np.float32)
    text = net_text(one("Threshold", "threshold_param { threshold: 0.5 }"), (1, 6))
    check_layer(text, inputs={"data": x})
    np.testing.assert_array_equal(_run(text, x), [[0, 0, 0, 1, 0, 1]])


def test_bnll_large_magnitudes_are_finite_and_exact() -> None:
    """log(1 + exp(x)) naively overflows to inf at x = 100 and underflows to 0 at x = -50."""
    x = np.array([[-1000, -100, -50, -20, -1e-3, 0, 1e-3, 20, 50, 100, 1000]], dtype=np.float32)
    text = net_text(one("BNLL"), x.shape)
    check_layer(text, inputs={"data": x})
    got = _run(text, x)
    want = reference.run_net(net_from_text(text), {"data": x})["out"]
    assert np.isfinite(got).all()
    # elementwise, so tiny values count too (float32 subnormals below 1e-38 excepted)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-38)
    assert got[0, 2] > 0  # exp(-50) = 2e-22, representable in float32


def test_softmax_default_axis_is_channels_not_last() -> None:
    """The 4-D case above would fail with PyTorch's habitual dim=-1: show the gap is large."""
    text = net_text(one("Softmax"), X4)
    net = net_from_text(text)
    x = random_inputs(net, 3)["data"]
    ref = reference.run_net(net, {"data": x})["out"]
    wrong = torch.softmax(torch.from_numpy(x), dim=-1).numpy()
    assert rel_err(wrong, ref) > 0.1
    assert rel_err(_run(text, x), ref) < 1e-6


def test_power_zero_scale_is_a_constant_even_for_inf() -> None:
    """Caffe ignores the input when power * scale == 0: shift^power, 1 for power 0."""
    x = np.array([[np.inf, -np.inf, np.nan, 1.0]], dtype=np.float32)
    out = _run(net_text(one("Power", "power_param { power: 3 scale: 0 shift: 2 }"), (1, 4)), x)
    np.testing.assert_array_equal(out, [[8, 8, 8, 8]])
    out = _run(net_text(one("Power", "power_param { power: 0 shift: -2 }"), (1, 4)), x)
    np.testing.assert_array_equal(out, [[1, 1, 1, 1]])


def test_prelu_without_weights_uses_caffe_initial_slope() -> None:
    x = np.array([[-4.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(_run(net_text(one("PReLU"), (1, 2)), x), [[-1.0, 2.0]])
    body = 'prelu_param { filler { type: "constant" value: 0.5 } }'
    np.testing.assert_allclose(_run(net_text(one("PReLU", body), (1, 2)), x), [[-2.0, 2.0]])


def test_prelu_slopes_follow_channels() -> None:
    """Channel c gets slope c (a slope per spatial position or per sample would not)."""
    text = net_text(one("PReLU"), (2, 3, 1, 2))
    net = with_weights(net_from_text(text), {"l": [np.array([0.1, 0.2, 0.3], np.float32)]})
    x = -np.ones((2, 3, 1, 2), np.float32)
    with torch.no_grad():
        got = build_module(net)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got[:, :, 0, 0], [[-0.1, -0.2, -0.3]] * 2, rtol=1e-6)


BAD = {
    "exp-negative-base": one("Exp", "exp_param { base: -2 }"),
    "exp-zero-base": one("Exp", "exp_param { base: 0 }"),
    "log-base-1": one("Log", "log_param { base: 1 }"),
    "log-negative-base": one("Log", "log_param { base: -3 }"),
}


@pytest.mark.parametrize("layer", BAD.values(), ids=BAD.keys())
def test_invalid_base_is_rejected_with_location(layer: str) -> None:
    with pytest.raises(PrototxtError, match=r"<test>:3: layer 'l' \((Exp|Log)\): .*base"):
        build_module(net_from_text(net_text(layer, X4)))


BATCH = {
    "prelu": one("PReLU"),
    "softmax": one("Softmax"),
    "softmax-axis-0": one("Softmax", "softmax_param { axis: 0 }"),
    "power-constant": one("Power", "power_param { power: 0 }"),
    "log": one("Log", "log_param { shift: 10 }"),
}


@pytest.mark.parametrize("layer", BATCH.values(), ids=BATCH.keys())
def test_batch_size_independent(layer: str) -> None:
    check_batch(layer, (1, 3, 4, 5))


@pytest.mark.parametrize("layer", [CASES[k][0] for k in ("prelu-shared", "power-zero-scale",
                                                         "bnll", "threshold", "softmax-axis-2")],
                         ids=["prelu", "power-constant", "bnll", "threshold", "softmax"])
def test_modules_follow_the_device(layer: str) -> None:
    """Nothing in forward is pinned to the CPU: the whole GraphModule runs on ``meta``."""
    net = net_from_text(net_text(layer, X4))
    model = build_module(with_weights(net, random_weights(net, 0))).to("meta")
    out = model(torch.empty(X4, device="meta"))
    assert out.device.type == "meta" and tuple(out.shape) == X4


def _spatial_dropout(param_str: str) -> str:
    """ENet's Python SpatialDropoutLayer, as its deploy prototxt writes it."""
    return one("Python", 'python_param { module: "spatial_dropout" layer: "SpatialDropoutLayer" '
                         f'param_str: "{param_str}" }}')


def test_enet_spatial_dropout_scales_at_test_time() -> None:
    """ENet's spatial dropout at TEST multiplies by 1 / (1 - p) (its Python source does): with
    p = 0.01 the identity a dropout usually is would be 1% off at every bottleneck."""
    text = net_text(_spatial_dropout("{\\'phase\\': \\'TEST\\', \\'p\\': \\'0.01\\'}"), X4)
    check_layer(text)
    x = np.full(X4, 99.0, dtype=np.float32)
    np.testing.assert_allclose(_run(text, x), 100.0, rtol=1e-6)


def test_enet_spatial_dropout_in_train_phase_is_refused() -> None:
    text = net_text(_spatial_dropout("{\\'phase\\': \\'TRAIN\\', \\'p\\': 0.1}"), X4)
    with pytest.raises(UnsupportedLayerError, match=r"<test>:3: layer 'l' \(Python\): .*TRAIN"):
        build_module(net_from_text(text))
