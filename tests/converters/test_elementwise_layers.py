"""Eltwise, Concat and Split against the numpy Caffe reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_bridge.build import build_module
from caffe_bridge.errors import ShapeError
from tests.helpers.layer_check import check_batch, check_layer, layer_text, net_from_text, net_text

COVERS = {"Eltwise", "Concat", "Split"}

X4 = (2, 3, 4, 5)


def layer(type_: str, n_bottoms: int, body: str = "", tops: tuple[str, ...] = ("out",)) -> str:
    """:func:`layer_text` with the bottom count first (every case here names it)."""
    return layer_text(type_, body, n_bottoms, tops)


CASES = {
    "eltwise-sum": (layer("Eltwise", 2), [X4] * 2),
    "eltwise-sum-coeff": (layer("Eltwise", 3, "eltwise_param { coeff: 1 coeff: -1 coeff: 0.5 }"),
                          [X4] * 3),
    "eltwise-sum-coeff-first-scaled": (layer("Eltwise", 2, "eltwise_param { coeff: -2 coeff: 1 }"),
                                       [X4] * 2),
    "eltwise-prod": (layer("Eltwise", 3, "eltwise_param { operation: PROD }"), [X4] * 3),
    "eltwise-max": (layer("Eltwise", 3, "eltwise_param { operation: MAX }"), [X4] * 3),
    "eltwise-max-ignores-coeff": (
        layer("Eltwise", 2, "eltwise_param { operation: MAX coeff: 2 coeff: -3 }"), [X4] * 2),
    "eltwise-2d": (layer("Eltwise", 2, "eltwise_param { operation: SUM }"), [(3, 7)] * 2),
    "concat-default-axis": (layer("Concat", 2), [(2, 3, 4, 5), (2, 2, 4, 5)]),
    "concat-axis-0": (layer("Concat", 2, "concat_param { axis: 0 }"), [(2, 3, 4), (1, 3, 4)]),
    "concat-axis-last": (layer("Concat", 3, "concat_param { axis: -1 }"),
                         [(2, 3, 4, 1), (2, 3, 4, 2), (2, 3, 4, 3)]),
    "concat-legacy-concat-dim": (layer("Concat", 2, "concat_param { concat_dim: 2 }"),
                                 [(2, 3, 4, 5), (2, 3, 1, 5)]),
    "concat-one-bottom": (layer("Concat", 1), [X4]),
    "split-2": (layer("Split", 1, tops=("t0", "t1")), [X4]),
    "split-3": (layer("Split", 1, tops=("t0", "t1", "t2")), [X4]),
    "split-1": (layer("Split", 1, tops=("t0",)), [X4]),
}


@pytest.mark.parametrize("text,shapes", CASES.values(), ids=CASES.keys())
def test_layer_matches_caffe(text: str, shapes: list[tuple[int, ...]]) -> None:
    errors = check_layer(net_text(text, *shapes))
    assert len(errors) == len(net_from_text(net_text(text, *shapes)).outputs)


def test_eltwise_coeff_is_applied() -> None:
    """coeff 1, -1 is a difference: a converter dropping coeff returns the sum."""
    text = net_text(layer("Eltwise", 2, "eltwise_param { coeff: 1 coeff: -1 }"), (1, 3), (1, 3))
    a = np.array([[1.0, 2.0, 3.0]], np.float32)
    b = np.array([[0.5, 4.0, -1.0]], np.float32)
    with torch.no_grad():
        got = build_module(net_from_text(text))(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_array_equal(got.numpy(), [[0.5, -2.0, 4.0]])


def test_eltwise_prod_with_coeff_is_rejected() -> None:
    text = net_text(layer("Eltwise", 2, "eltwise_param { operation: PROD coeff: 1 coeff: 2 }"),
                    X4, X4)
    with pytest.raises(ShapeError, match=r"<test>:3: layer 'l' \(Eltwise\)"):
        net_from_text(text)


def test_split_returns_one_tensor_per_top() -> None:
    text = net_text(layer("Split", 1, tops=("t0", "t1", "t2")), X4)
    x = torch.randn(X4, generator=torch.Generator().manual_seed(0))
    out = build_module(net_from_text(text))(x)
    assert isinstance(out, tuple) and len(out) == 3
    assert all(torch.equal(t, x) for t in out)


BATCH = {
    "eltwise-coeff": (layer("Eltwise", 2, "eltwise_param { coeff: 2 coeff: -1 }"), [X4] * 2),
    "concat-axis-1": (layer("Concat", 2), [(1, 3, 4, 5), (1, 2, 4, 5)]),
    "concat-axis-0": (layer("Concat", 2, "concat_param { axis: 0 }"), [(1, 3, 4), (1, 3, 4)]),
    "split": (layer("Split", 1, tops=("t0", "t1")), [X4]),
}


@pytest.mark.parametrize("text,shapes", BATCH.values(), ids=BATCH.keys())
def test_batch_size_independent(text: str, shapes: list[tuple[int, ...]]) -> None:
    check_batch(text, *[(1, *s[1:]) for s in shapes])


@pytest.mark.parametrize("key", ["eltwise-sum-coeff", "eltwise-prod", "eltwise-max",
                                 "concat-legacy-concat-dim", "split-3"])
def test_modules_follow_the_device(key: str) -> None:
    """Nothing in forward is pinned to the CPU: the whole GraphModule runs on ``meta``."""
    text, shapes = CASES[key]
    net = net_from_text(net_text(text, *shapes))
    model = build_module(net).to("meta")
    out = model(*(torch.empty(s, device="meta") for s in shapes))
    outs = out if isinstance(out, tuple) else (out,)
    for value, got in zip(net.outputs, outs, strict=True):
        assert got.device.type == "meta" and tuple(got.shape) == net.blobs[value].shape
