"""SENet's Axpy: bottoms (a, X, Y) -> a * X + Y, against the numpy reference and against the
operand swap OpenCV's importer makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_bridge.build import build_module
from caffe_bridge.random_weights import random_inputs
from tests import reference
from tests.helpers.layer_check import check_layer, net_from_text, rel_err

COVERS = {"Axpy"}

AXPY = 'layer { name: "axpy" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "out" }'


def net_text(a: tuple[int, ...], x: tuple[int, ...]) -> str:
    """Inputs a, x, y (y shaped like x), then the Axpy layer on line 3."""
    dims = " ".join("shape {" + "".join(f" dim: {d}" for d in s) + " }" for s in (a, x, x))
    return (f'name: "t"\nlayer {{ name: "in" type: "Input" top: "a" top: "x" top: "y" '
            f"input_param {{ {dims} }} }}\n{AXPY}\n")


CASES = {
    "scale-nc11": ((2, 3, 1, 1), (2, 3, 4, 5)),
    "scale-nc": ((2, 3), (2, 3, 4, 5)),
    "scale-nc1-3d": ((2, 4, 1), (2, 4, 6)),
    "one-by-one-spatial": ((2, 3, 1, 1), (2, 3, 1, 1)),
}


@pytest.mark.parametrize("a,x", CASES.values(), ids=CASES.keys())
def test_axpy_matches_caffe(a: tuple[int, ...], x: tuple[int, ...]) -> None:
    check_layer(net_text(a, x))


@pytest.mark.parametrize("a,x", [CASES["scale-nc11"], CASES["scale-nc"]],
                         ids=["scale-nc11", "scale-nc"])
def test_swapped_operands_differ(a: tuple[int, ...], x: tuple[int, ...]) -> None:
    """OpenCV's a * Y + X (gates on the shortcut) is far from Caffe's a * X + Y: the check above
    has teeth, and this converter follows Caffe."""
    net = net_from_text(net_text(a, x))
    feeds = random_inputs(net, 11)
    ref = reference.run_net(net, feeds)["out"]
    gate = feeds["a"].reshape(*a[:2], *([1] * (len(x) - 2)))
    swapped = gate * feeds["y"] + feeds["x"]
    assert rel_err(swapped, ref) > 0.2
    with torch.no_grad():
        got = build_module(net)(*(torch.from_numpy(feeds[n]) for n in ("a", "x", "y")))
    assert rel_err(got.numpy(), ref) < 1e-6
    assert rel_err(got.numpy(), swapped) > 0.2


def test_gate_is_per_sample_and_channel() -> None:
    """a[n, c] scales X[n, c] at every position (not a[c] for all n, not a per position)."""
    a = np.array([[2.0, 0.0], [-1.0, 3.0]], np.float32)
    x = np.ones((2, 2, 2, 2), np.float32)
    y = np.full((2, 2, 2, 2), 10.0, np.float32)
    model = build_module(net_from_text(net_text(a.shape, x.shape)))
    with torch.no_grad():
        out = model(*(torch.from_numpy(v) for v in (a, x, y))).numpy()
    np.testing.assert_array_equal(out[:, :, 1, 1], [[12.0, 10.0], [9.0, 13.0]])
    assert (out == out[:, :, :1, :1]).all()


def test_batch_size_independent() -> None:
    model = build_module(net_from_text(net_text((1, 3, 1, 1), (1, 3, 4, 5))))
    big = net_from_text(net_text((3, 3, 1, 1), (3, 3, 4, 5)))
    feeds = random_inputs(big, 4)
    with torch.no_grad():
        got = model(*(torch.from_numpy(feeds[n]) for n in ("a", "x", "y"))).numpy()
    assert rel_err(got, reference.run_net(big, feeds)["out"]) < 1e-6


def test_module_follows_the_device() -> None:
    model = build_module(net_from_text(net_text((2, 3), (2, 3, 4, 5)))).to("meta")
    out = model(*(torch.empty(s, device="meta") for s in ((2, 3), (2, 3, 4, 5), (2, 3, 4, 5))))
    assert out.device.type == "meta" and tuple(out.shape) == (2, 3, 4, 5)
