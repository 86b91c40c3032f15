"""BatchNorm, Scale, Bias, LRN converters and the BatchNorm + Scale fusion, against the numpy
Caffe reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from caffe_bridge.build import build_module
from caffe_bridge.converters.norm import (
    Affine,
    BroadcastBias,
    BroadcastScale,
    ChannelNorm,
    WithinChannelLRN,
)
from caffe_bridge.ir import with_weights
from caffe_bridge.random_weights import random_weights
from tests import reference
from tests.helpers.layer_check import check_layer, net_from_text

COVERS = {"BatchNorm", "Scale", "Bias", "LRN"}

def net_text(inputs: dict[str, tuple[int, ...]], body: str) -> str:
    """Input layer(s) for ``inputs`` (name -> shape), then ``body``."""
    layers = []
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        layers.append(f'layer {{ name: "in_{name}" type: "Input" top: "{name}" '
                      f"input_param {{ shape {{ {dims} }} }} }}")
    return "\n".join([*layers, body])


def modules(text: str, weights: dict | None = None) -> dict[str, nn.Module]:
    net = net_from_text(text)
    net = with_weights(net, weights if weights is not None else random_weights(net))
    return dict(build_module(net).named_children())


def bn_weights(c: int, f: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(c) * f).astype(np.float32),
            (rng.uniform(0.5, 2.0, c) * f).astype(np.float32), np.array([f], np.float32)]


BN = 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" %s }'
SCALE = 'layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { %s } }'


# ---------------------------------------------------------------- BatchNorm


@pytest.mark.parametrize(("shape", "factor", "param"), [
    ((2, 3, 4, 5), 0.999, ""),
    ((2, 3, 4, 5), 999.98, ""),
    ((2, 3, 4, 5), 1.0, "batch_norm_param { eps: 0.001 }"),
    ((2, 3, 4, 5), 0.999, "batch_norm_param { use_global_stats: true }"),
    ((4, 6), 0.999, ""),
    ((2, 3, 7), 0.5, ""),
    ((2, 3, 2, 3, 4), 0.999, ""),
    ((2, 3, 2, 2, 2, 2), 0.999, ""),
], ids=["factor_0.999", "factor_999.98_open_nsfw", "eps_1e-3", "global_stats_explicit",
        "2d", "3d", "5d", "6d"])
def test_batch_norm_global_stats(shape, factor, param):
    text = net_text({"x": shape}, BN % param)
    weights = {"bn": bn_weights(shape[1], factor)}
    check_layer(text, weights=weights)
    mod = modules(text, weights)["bn"]
    if len(shape) <= 5:
        assert isinstance(mod, nn.modules.batchnorm._BatchNorm) and not mod.affine
    else:
        assert isinstance(mod, ChannelNorm)


def test_batch_norm_factor_zero_means_zero_stats():
    """f == 0: mean and variance both become 0, so y = x / sqrt(eps) (not NaN or inf)."""
    text = net_text({"x": (2, 3, 4, 4)}, BN % "")
    weights = {"bn": bn_weights(3, 0.0)}
    weights["bn"][0][:] = 5.0  # stored statistics that must be ignored
    weights["bn"][1][:] = 7.0
    check_layer(text, weights=weights)
    x = torch.randn(2, 3, 4, 4)
    mod = modules(text, weights)["bn"]
    torch.testing.assert_close(mod(x), x / np.sqrt(np.float32(1e-5)), rtol=1e-5, atol=1e-5)


def test_batch_norm_factor_is_applied():
    """The third blob divides mean and variance: ignoring f = 0.5 would be off by a lot."""
    text = net_text({"x": (1, 1, 1, 2)}, BN % "batch_norm_param { eps: 0 }")
    weights = {"bn": [np.array([1.0], np.float32), np.array([2.0], np.float32),
                      np.array([0.5], np.float32)]}
    x = np.array([2.0, 6.0], np.float32).reshape(1, 1, 1, 2)
    check_layer(text, weights=weights, inputs={"x": x})
    y = modules(text, weights)["bn"](torch.from_numpy(x))
    np.testing.assert_allclose(y.reshape(-1).numpy(), [0.0, 2.0], atol=1e-6)  # (x - 2) / 2


def test_batch_norm_use_global_stats_false_uses_batch_statistics():
    """Caffe: an explicit ``use_global_stats: false`` normalises with the batch's own mean and
    (biased) variance even in the TEST phase; the stored blobs are not used."""
    text = net_text({"x": (3, 2, 4, 4)}, BN % "batch_norm_param { use_global_stats: false }")
    weights = {"bn": bn_weights(2, 0.999)}
    check_layer(text, weights=weights)
    x = torch.randn(3, 2, 4, 4) * 3 + 1
    y = modules(text, weights)["bn"](x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(2), atol=1e-3,
                               rtol=0)


# ---------------------------------------------------------------- BatchNorm + Scale fusion


@pytest.mark.parametrize(("shape", "scale_param", "kind"), [
    ((2, 3, 5, 4), "bias_term: true", nn.BatchNorm2d),
    ((2, 3, 5, 4), "bias_term: false", nn.BatchNorm2d),
    ((2, 3, 5, 4), "axis: -3 num_axes: 1 bias_term: true", nn.BatchNorm2d),
    ((4, 5), "bias_term: true", nn.BatchNorm1d),
    ((2, 3, 2, 3, 4), "bias_term: true", nn.BatchNorm3d),
], ids=["4d_with_beta", "4d_no_beta", "axis_minus3", "2d", "5d"])
def test_batch_norm_scale_fused_into_one_module(shape, scale_param, kind):
    text = net_text({"x": shape}, BN % "" + "\n" + SCALE % scale_param)
    check_layer(text)
    mods = modules(text)
    assert list(mods) == ["sc"], mods  # one module, named after the layer producing the value
    bn = mods["sc"]
    assert type(bn) is kind and bn.affine and not bn.training


def test_fused_batch_norm_values():
    """gamma * (x - mean/f) / sqrt(var/f + eps) + beta, checked on one hand-made channel."""
    text = net_text({"x": (1, 1, 1, 2)}, BN % "batch_norm_param { eps: 0 }" + "\n"
                    + SCALE % "bias_term: true")
    weights = {"bn": [np.array([2.0], np.float32), np.array([8.0], np.float32),
                      np.array([2.0], np.float32)],
               "sc": [np.array([3.0], np.float32), np.array([0.5], np.float32)]}
    x = np.array([1.0, 5.0], np.float32).reshape(1, 1, 1, 2)
    check_layer(text, weights=weights, inputs={"x": x})
    y = modules(text, weights)["sc"](torch.from_numpy(x))
    np.testing.assert_allclose(y.detach().reshape(-1).numpy(), [0.5, 6.5], atol=1e-6)


@pytest.mark.parametrize(("body", "expect"), [
    (BN % "" + "\n" + SCALE % "axis: 1 num_axes: 2 bias_term: true", ["bn", "sc"]),
    (BN % "" + "\n" + SCALE % "axis: 2 bias_term: true", ["bn", "sc"]),
    (BN % "batch_norm_param { use_global_stats: false }" + "\n" + SCALE % "bias_term: true",
     ["bn", "sc"]),
    ('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }\n'
     'layer { name: "sc" type: "Scale" bottom: "y" top: "z" scale_param { bias_term: true } }\n'
     'layer { name: "other" type: "Scale" bottom: "y" top: "w" }', ["bn", "sc", "other"]),
], ids=["num_axes_2", "axis_2", "batch_stats", "bn_top_used_twice"])
def test_batch_norm_scale_not_fused_when_inexact(body, expect):
    text = net_text({"x": (2, 3, 4, 5)}, body)
    check_layer(text)
    assert list(modules(text)) == expect


# ---------------------------------------------------------------- Scale and Bias


@pytest.mark.parametrize(("shape", "param"), [
    ((2, 3, 4, 5), "bias_term: true"),
    ((2, 3, 4, 5), ""),
    ((2, 3, 4, 5), "axis: 2 num_axes: 2 bias_term: true"),
    ((2, 3, 4, 5), "num_axes: 0 bias_term: true"),
    ((2, 3, 4, 5), "axis: 1 num_axes: -1"),
    ((2, 3, 4, 5), "axis: -1 bias_term: true"),
    ((2, 3, 4, 5), "axis: 0 num_axes: 2"),
    ((6, 4), "bias_term: true"),
], ids=["per_channel_beta", "per_channel", "axis2_num_axes2", "num_axes0_scalar",
        "num_axes_minus1", "axis_minus1", "axis0_num_axes2", "2d"])
def test_scale_one_bottom(shape, param):
    text = net_text({"x": shape}, SCALE.replace('top: "x"', 'top: "y"') % param)
    check_layer(text)
    assert isinstance(modules(text)["sc"], Affine)


def unbatched_weights(text: str, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Seeded blobs drawn without testing.random_weights' calibration run, which resizes the
    first axis of every input (bottom[1] of these nets has no batch axis)."""
    rng = np.random.default_rng(seed)
    return {layer.name: [rng.standard_normal(s).astype(np.float32) for s in layer.param_shapes]
            for layer in net_from_text(text).layers if layer.param_shapes}


TWO = ('layer { name: "sc" type: "%s" bottom: "x" bottom: "s" top: "y" %s }')


@pytest.mark.parametrize(("x", "s", "param"), [
    ((2, 3, 4, 5), (2, 3), "scale_param { axis: 0 }"),
    ((2, 3, 4, 5), (3,), "scale_param { axis: 1 }"),
    ((2, 3, 4, 5), (3, 4, 5), ""),
    ((2, 3, 4, 5), (4, 5), "scale_param { axis: -2 }"),
    ((2, 3, 4, 5), (3, 4), "scale_param { bias_term: true }"),
], ids=["axis0_NxC_se_bn_inception", "axis1_C", "axis1_CxHxW", "axis_minus2_HxW",
        "bias_term_CxH"])
def test_scale_two_bottoms(x, s, param):
    text = net_text({"x": x, "s": s}, TWO % ("Scale", param))
    weights = unbatched_weights(text)
    check_layer(text, weights=weights)
    assert isinstance(modules(text, weights)["sc"], BroadcastScale)


def test_scale_axis0_follows_the_batch():
    """SE-BN-Inception's N x C gate with another batch than the definition's, fx-traced."""
    text = net_text({"x": (2, 3, 4, 5), "s": (2, 3)}, TWO % ("Scale", "scale_param { axis: 0 }"))
    net = net_from_text(text)
    rng = np.random.default_rng(5)
    feeds = {"x": rng.standard_normal((5, 3, 4, 5)).astype(np.float32),
             "s": rng.standard_normal((5, 3)).astype(np.float32)}
    want = reference.run_net(net, feeds)["y"]
    gm = torch.fx.symbolic_trace(build_module(net))
    got = gm(torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["s"]))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


@pytest.mark.parametrize(("shape", "param"), [
    ((2, 3, 4, 5), ""),
    ((2, 3, 4, 5), "bias_param { axis: 1 num_axes: 3 }"),
    ((2, 3, 4, 5), "bias_param { num_axes: 0 }"),
    ((2, 3, 4, 5), "bias_param { axis: 2 num_axes: -1 }"),
], ids=["per_channel", "num_axes3", "num_axes0_scalar", "axis2_rest"])
def test_bias_one_bottom(shape, param):
    text = net_text({"x": shape}, f'layer {{ name: "b" type: "Bias" bottom: "x" top: "y" '
                                  f"{param} }}")
    check_layer(text)
    assert isinstance(modules(text)["b"], Affine)


@pytest.mark.parametrize(("x", "s", "param"), [
    ((2, 3, 4, 5), (3,), ""),
    ((2, 3, 4, 5), (2, 3), "bias_param { axis: 0 }"),
    ((2, 3, 4, 5), (4, 5), "bias_param { axis: 2 }"),
], ids=["axis1_C", "axis0_NxC", "axis2_HxW"])
def test_bias_two_bottoms(x, s, param):
    text = net_text({"x": x, "s": s}, TWO % ("Bias", param))
    check_layer(text, weights={})
    assert isinstance(modules(text, {})["sc"], BroadcastBias)


# ---------------------------------------------------------------- LRN


@pytest.mark.parametrize(("shape", "param", "kind"), [
    ((2, 7, 5, 5), "local_size: 5 alpha: 0.5 beta: 0.75", nn.LocalResponseNorm),
    ((2, 7, 5, 5), "local_size: 3 alpha: 2.0 beta: 0.6 k: 2.0", nn.LocalResponseNorm),
    ((2, 3, 4, 4), "local_size: 7 alpha: 1.5 beta: 0.9 k: 0.5", nn.LocalResponseNorm),
    ((2, 3, 6, 7), "local_size: 3 alpha: 0.8 beta: 0.75 norm_region: WITHIN_CHANNEL",
     WithinChannelLRN),
    ((2, 3, 6, 7), "local_size: 5 alpha: 2.0 beta: 0.5 k: 3.0 norm_region: WITHIN_CHANNEL",
     WithinChannelLRN),
], ids=["across_n5", "across_n3_k2", "across_n_gt_channels", "within_n3",
        "within_n5_k_ignored"])
def test_lrn(shape, param, kind):
    text = net_text({"x": shape}, f'layer {{ name: "lrn" type: "LRN" bottom: "x" top: "y" '
                                  f"lrn_param {{ {param} }} }}")
    x = (np.random.default_rng(2).standard_normal(shape) * 2).astype(np.float32)
    check_layer(text, inputs={"x": x})
    assert type(modules(text)["lrn"]) is kind


def test_lrn_within_channel_ignores_k_and_does_not_divide_alpha():
    """One pixel of value 2 in a 1x1 map, n = 3: avg = 4 / 9 (padding counted), so
    y = 2 * (1 + 0.9 * 4/9)^-1 = 2 / 1.4, whatever k is."""
    text = net_text({"x": (1, 1, 1, 1)}, 'layer { name: "lrn" type: "LRN" bottom: "x" top: "y" '
                    "lrn_param { local_size: 3 alpha: 0.9 beta: 1 k: 5 "
                    "norm_region: WITHIN_CHANNEL } }")
    x = np.full((1, 1, 1, 1), 2.0, np.float32)
    check_layer(text, inputs={"x": x})
    y = modules(text)["lrn"](torch.from_numpy(x))
    assert float(y) == pytest.approx(2 / 1.4, rel=1e-6)


CHAIN = """
layer { name: "lrn" type: "LRN" bottom: "x" top: "a"
        lrn_param { local_size: 3 alpha: 0.5 norm_region: WITHIN_CHANNEL } }
layer { name: "sc1" type: "Scale" bottom: "a" top: "b" scale_param { num_axes: -1 } }
layer { name: "b1" type: "Bias" bottom: "b" bottom: "s" top: "c" }
layer { name: "sc2" type: "Scale" bottom: "c" bottom: "g" top: "y"
        scale_param { bias_term: true } }
"""


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_custom_modules_trace_batch_and_device(device):
    """The non-native modules run fx-traced, at another batch size, and after .to(device)."""
    text = net_text({"x": (2, 3, 6, 7), "s": (3,), "g": (3, 6)}, CHAIN)
    weights = unbatched_weights(text)
    check_layer(text, weights=weights)
    net = with_weights(net_from_text(text), weights)
    rng = np.random.default_rng(9)
    feeds = {"x": rng.standard_normal((4, 3, 6, 7)).astype(np.float32),
             "s": rng.standard_normal(3).astype(np.float32),
             "g": rng.standard_normal((3, 6)).astype(np.float32)}
    want = reference.run_net(net, feeds)["y"]
    gm = torch.fx.symbolic_trace(build_module(net)).to(device)
    with torch.no_grad():
        got = gm(*(torch.from_numpy(feeds[k]).to(device) for k in ("x", "s", "g")))
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-5, atol=1e-5)
