"""The forks' BN variants and MVN against the numpy reference: variant detection from fields
and blob counts, eps placement, batch statistics at test time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_bridge.build import build_module
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.ir import with_weights
from tests.helpers.layer_check import check_batch, check_layer, layer_text, net_from_text, net_text

COVERS = {"BN", "MVN"}

BN = [
    ("pspnet_frozen", "bn_param { slope_filler { type: 'constant' value: 1 } frozen: true "
     "momentum: 0.95 }"),
    ("pspnet_eps", "bn_param { eps: 0.5 }"),
    ("tsn_no_param", ""),
    ("segnet_inference", "bn_param { bn_mode: INFERENCE }"),
    ("segnet_learn", "bn_param { scale_filler { type: 'constant' value: 1 } "
     "shift_filler { type: 'constant' value: 0 } }"),
    ("enet_learn_explicit", "bn_param { bn_mode: LEARN }"),
    ("initial_moving_average", "bn_param { moving_average: true var_eps: 1e-3 }"),
    ("initial_batch_stats", "bn_param { var_eps: 1e-3 decay: 0.1 }"),
    ("initial_axis2", "bn_param { axis: 2 var_eps: 1e-3 }"),
]


@pytest.mark.parametrize("body", [c[1] for c in BN], ids=[c[0] for c in BN])
def test_bn(body):
    check_layer(net_text(layer_text("BN", body), (2, 3, 5, 4)))


@pytest.mark.parametrize("body", ["bn_param { bn_mode: LEARN }", "bn_param { moving_average: "
                                  "true }", "bn_param { frozen: true }"])
def test_bn_batch(body):
    check_batch(layer_text("BN", body), (1, 3, 4, 4))


def test_bn_blob_count_decides_without_fields():
    text = net_text(layer_text("BN"), (2, 3, 4, 4))
    net = net_from_text(text)
    assert len(net.layers[1].param_shapes) == 4  # no fields: PSPNet's 4 blobs
    with pytest.raises(CaffeBridgeError):  # 2 blobs there: the shape check refuses
        with_weights(net, {"l": [np.ones((1, 3, 1, 1), np.float32)] * 2})


@pytest.mark.parametrize("body", ["bn_param { bn_mode: INFERENCE frozen: true }",
                                  "bn_param { var_eps: 1e-5 eps: 1e-5 }"])
def test_bn_mixed_variants_fail_clearly(body):
    with pytest.raises(CaffeBridgeError, match="cannot tell"):
        net_from_text(net_text(layer_text("BN", body), (1, 2, 3, 3)))


def test_segnet_learn_trap_batch_statistics_not_blobs():
    """LEARN (SegNet's default) normalises with the batch's moments even at test: a module that
    only applies scale/shift is wrong."""
    text = net_text(layer_text("BN", "bn_param { bn_mode: LEARN }"), (2, 2, 3, 3))
    ones = [np.ones((1, 2, 1, 1), np.float32), np.zeros((1, 2, 1, 1), np.float32)]
    model = build_module(with_weights(net_from_text(text), {"l": ones}))
    x = torch.randn(2, 2, 3, 3) * 3 + 5
    y = model(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert not torch.allclose(y, x)


def test_bn_eps_default_differs_by_variant():
    x = np.full((1, 1, 1, 1), 1.0, np.float32)
    w = [np.ones((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.float32),
         np.zeros((1, 1, 1, 1), np.float32), np.full((1, 1, 1, 1), 1e-6, np.float32)]
    pspnet = check_layer(net_text(layer_text("BN", "bn_param { frozen: true }"), (1, 1, 1, 1)),
                         weights={"l": w}, inputs={"data": x})
    initial = check_layer(net_text(layer_text("BN", "bn_param { moving_average: true }"),
                                   (1, 1, 1, 1)), weights={"l": w}, inputs={"data": x})
    assert pspnet["out"] < 1e-5 and initial["out"] < 1e-5  # 1/sqrt(1.1e-5) vs 1/sqrt(1e-6)


MVN = [
    ("default", ""),
    ("eps_big", "mvn_param { eps: 0.5 }"),
    ("across", "mvn_param { across_channels: true eps: 0.1 }"),
    ("mean_only", "mvn_param { normalize_variance: false }"),
    ("across_mean_only", "mvn_param { normalize_variance: false across_channels: true }"),
]


@pytest.mark.parametrize("body", [c[1] for c in MVN], ids=[c[0] for c in MVN])
def test_mvn(body):
    check_layer(net_text(layer_text("MVN", body), (2, 3, 4, 5)))
    check_batch(layer_text("MVN", body), (1, 3, 4, 5))


def test_mvn_eps_on_std_trap():
    """A near-constant channel: eps added to the std (Caffe) vs to the variance differ a lot."""
    x = np.zeros((1, 1, 2, 2), np.float32)
    x[0, 0, 0, 0] = 1e-3
    text = net_text(layer_text("MVN", "mvn_param { eps: 1e-3 }"), x.shape)
    check_layer(text, inputs={"data": x}, weights={})
    y = build_module(net_from_text(text))(torch.from_numpy(x)).detach().numpy()
    y_var = (x - x.mean()) / np.sqrt(x.var() + 1e-3)
    assert not np.allclose(y, y_var, rtol=0.1)


def test_mvn_2d():
    check_layer(net_text(layer_text("MVN", "mvn_param { across_channels: true }"), (3, 6)))


def test_tsn_blobs_stored_2d():
    """yjxiong/caffe (TSN) stores the four blobs as 1 x C: accepted by count."""
    text = net_text(layer_text("BN", "bn_param { frozen: true }"), (2, 3, 4, 4))
    rng = np.random.default_rng(0)
    blobs = [rng.uniform(0.5, 1.5, (1, 3)).astype(np.float32) for _ in range(4)]
    check_layer(text, weights={"l": blobs})


@pytest.mark.parametrize(("body", "tops"), [("bn_param { axis: 3 }", ("out",)),
                                            ("bn_param { bn_mode: LEARN }", ("out", "mean"))])
def test_bn_refusals(body, tops):
    """axis other than 1/2 (initial variant), SegNet's batch mean/variance tops (training)."""
    with pytest.raises(CaffeBridgeError):
        net_from_text(net_text(layer_text("BN", body, tops=tops), (1, 2, 3, 3)))


def test_modules_retrace_with_fx():
    """Every module here re-traces with torch.fx and runs at another batch size."""
    text = net_text("""
layer { name: "a" type: "BN" bottom: "data" top: "a" bn_param { bn_mode: LEARN } }
layer { name: "b" type: "BN" bottom: "a" top: "b" bn_param { bn_mode: INFERENCE } }
layer { name: "c" type: "BN" bottom: "b" top: "c" bn_param { axis: 2 } }
layer { name: "d" type: "BN" bottom: "c" top: "d" bn_param { frozen: true } }
layer { name: "e" type: "MVN" bottom: "d" top: "e" }
layer { name: "f" type: "Interp" bottom: "e" top: "f" interp_param { zoom_factor: 2 } }
layer { name: "g" type: "Upsample" bottom: "f" top: "g" upsample_param { scale: 2 } }
""", (2, 3, 4, 4))
    net = net_from_text(text)
    from caffe_bridge.random_weights import random_weights
    gm = torch.fx.symbolic_trace(build_module(with_weights(net, random_weights(net, 0))))
    assert gm(torch.randn(3, 3, 4, 4)).shape == (3, 3, 14, 14)
