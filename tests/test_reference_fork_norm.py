"""Self-tests of the fork BN variants and MVN references (hand-computed)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.reference_layers import make_layer, run1
from tests.reference.fork_norm import bn_variant

C1 = (1, 1, 1, 1)


def blobs(*values: float) -> tuple[np.ndarray, ...]:
    return tuple(np.full(C1, v) for v in values)


def test_pspnet_bn_stored_stats_eps_added_to_var():
    lay = make_layer("BN", "bn_param { frozen: true eps: 1 }", blobs(2, 1, 1, 3))
    assert np.isclose(run1(lay, np.full(C1, 3.0)), (3 - 1) / np.sqrt(3 + 1) * 2 + 1)


def test_segnet_bn_inference_is_affine():
    lay = make_layer("BN", "bn_param { bn_mode: INFERENCE }", blobs(2, 1))
    assert run1(lay, np.full(C1, 3.0)) == 7


def test_segnet_bn_learn_uses_batch_moments():
    lay = make_layer("BN", "bn_param { scale_filler { type: 'constant' value: 1 } }", blobs(2, 1))
    y = run1(lay, np.array([1.0, 3.0]).reshape(2, 1, 1, 1))  # mean 2, var 5 - 4 = 1
    assert np.allclose(y.ravel(), [-1, 3])


def test_pspnet_initial_moving_average_and_batch_stats():
    lay = make_layer("BN", "bn_param { moving_average: true }", blobs(2, 1, 1, 4))
    assert np.isclose(run1(lay, np.full(C1, 3.0)), 3.0)  # (3 - 1) / 2 * 2 + 1
    lay = make_layer("BN", "bn_param { var_eps: 1 }", blobs(2, 1, 100, 100))
    y = run1(lay, np.array([1.0, 3.0]).reshape(2, 1, 1, 1))  # batch: mean 2, var 1
    assert np.allclose(y.ravel(), [-1 / np.sqrt(2) * 2 + 1, 1 / np.sqrt(2) * 2 + 1])


def test_bn_variant_rules():
    assert bn_variant(make_layer("BN", "").param) == "pspnet"
    assert bn_variant(make_layer("BN", "").param, 2) == "segnet"
    assert bn_variant(make_layer("BN", "bn_param { shift_filler {} }").param, 4) \
        == "pspnet-initial"
    with pytest.raises(ValueError, match="mix"):
        bn_variant(make_layer("BN", "bn_param { bn_mode: LEARN frozen: true }").param)
    with pytest.raises(ValueError, match="stores 2 blobs"):
        bn_variant(make_layer("BN", "bn_param { bn_mode: INFERENCE }").param, 4)


def test_mvn_eps_is_added_to_the_std_not_the_variance():
    x = np.array([1.0, 3.0]).reshape(1, 1, 1, 2)
    y = run1(make_layer("MVN", "mvn_param { eps: 1 }"), x)
    assert np.allclose(y.ravel(), [-0.5, 0.5])  # /(1 + 1), not /sqrt(1 + 1)


def test_mvn_across_channels_and_mean_only():
    x = np.array([1.0, 3.0]).reshape(1, 2, 1, 1)
    assert np.allclose(run1(make_layer("MVN", "mvn_param { eps: 1 }"), x), 0)
    y = run1(make_layer("MVN", "mvn_param { eps: 1 across_channels: true }"), x)
    assert np.allclose(y.ravel(), [-0.5, 0.5])
    y = run1(make_layer("MVN", "mvn_param { normalize_variance: false }"), x.reshape(1, 1, 1, 2))
    assert np.allclose(y.ravel(), [-1, 1])
