"""Slice, Flatten, Reshape, Crop and ArgMax against the numpy Caffe reference, including the batch
sizes a converted model meets after conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_bridge.build import build_module
from tests.helpers.layer_check import check_batch, check_layer, net_from_text, net_text
from tests.helpers.layer_check import layer_text as layer

COVERS = {"Slice", "Flatten", "Reshape", "Crop", "ArgMax"}

X4 = (2, 3, 4, 5)


def reshape(dims: tuple[int, ...], extra: str = "") -> str:
    shape = "".join(f" dim: {d}" for d in dims)
    return layer("Reshape", f"reshape_param {{ shape {{{shape} }} {extra} }}")


T3 = ("t0", "t1", "t2")

CASES = {
    "slice-points": (layer("Slice", "slice_param { slice_point: 1 slice_point: 4 }", tops=T3),
                     [(2, 6, 3, 2)]),
    "slice-equal": (layer("Slice", tops=T3), [(2, 6, 3, 2)]),
    "slice-legacy-slice-dim": (layer("Slice", "slice_param { slice_dim: 2 slice_point: 3 }",
                                     tops=T3[:2]), [(2, 3, 5, 2)]),
    "slice-axis-last-equal": (layer("Slice", "slice_param { axis: -1 }", tops=T3[:2]), [X4[:3] +
                                                                                      (6,)]),
    "slice-axis-0": (layer("Slice", "slice_param { axis: 0 slice_point: 1 }", tops=T3[:2]),
                     [(3, 2, 2)]),
    "slice-one-top": (layer("Slice", tops=("t0",)), [X4]),
    "flatten": (layer("Flatten"), [X4]),
    "flatten-axis-2": (layer("Flatten", "flatten_param { axis: 2 }"), [X4]),
    "flatten-end-axis-2": (layer("Flatten", "flatten_param { end_axis: 2 }"), [X4]),
    "flatten-axis-0-end-1": (layer("Flatten", "flatten_param { axis: 0 end_axis: 1 }"), [X4]),
    "flatten-2d": (layer("Flatten"), [(3, 7)]),
    "reshape-copy-infer": (reshape((0, -1)), [X4]),
    "reshape-copy-copy-infer": (reshape((0, 0, -1)), [X4]),
    "reshape-infer-first": (reshape((-1, 10)), [X4]),
    "reshape-explicit": (reshape((4, 5, 6)), [X4]),
    "reshape-nc-to-nc11": (reshape((0, 0, 1, 1)), [(2, 6)]),
    "reshape-axis-1-num-axes-1": (reshape((3, 1), "axis: 1 num_axes: 1"), [X4]),
    "reshape-axis-2-infer": (reshape((-1,), "axis: 2"), [X4]),
    "reshape-append-axis": (reshape((1,), "axis: -1 num_axes: 0"), [X4]),
    "reshape-insert-axis": (reshape((1,), "axis: 1 num_axes: 0"), [X4]),
    "reshape-axis-1-zero": (reshape((0, 2, -1), "axis: 1 num_axes: 2"), [(2, 3, 4, 5)]),
    "reshape-replace-batch": (reshape((2, -1), "axis: 0 num_axes: 2"), [(4, 3, 5)]),
    "crop-default-offset": (layer("Crop", n_bottoms=2), [(2, 3, 8, 9), (2, 3, 5, 6)]),
    "crop-one-offset": (layer("Crop", "crop_param { offset: 2 }", n_bottoms=2),
                        [(2, 3, 8, 9), (2, 3, 5, 6)]),
    "crop-per-axis-offsets": (layer("Crop", "crop_param { axis: 1 offset: 1 offset: 2 offset: 3 }",
                                    n_bottoms=2), [(2, 4, 8, 9), (2, 2, 5, 6)]),
    "crop-axis-last": (layer("Crop", "crop_param { axis: -1 offset: 4 }", n_bottoms=2),
                       [(2, 3, 8, 9), (1, 1, 1, 5)]),
    "crop-axis-0": (layer("Crop", "crop_param { axis: 0 offset: 1 offset: 0 offset: 2 }",
                          n_bottoms=2), [(4, 2, 6), (2, 2, 3)]),
    "argmax": (layer("ArgMax"), [X4]),
    "argmax-top3": (layer("ArgMax", "argmax_param { top_k: 3 }"), [X4]),
    "argmax-out-max-val": (layer("ArgMax", "argmax_param { out_max_val: true top_k: 2 }"), [X4]),
    "argmax-2d": (layer("ArgMax", "argmax_param { top_k: 2 }"), [(3, 10)]),
    "argmax-2d-out-max-val": (layer("ArgMax", "argmax_param { out_max_val: true }"), [(3, 10)]),
    "argmax-axis-1": (layer("ArgMax", "argmax_param { axis: 1 }"), [X4]),
    "argmax-axis-1-top2-values": (
        layer("ArgMax", "argmax_param { axis: 1 top_k: 2 out_max_val: true }"), [X4]),
    "argmax-axis-last-top3": (layer("ArgMax", "argmax_param { axis: -1 top_k: 3 }"), [X4]),
}


@pytest.mark.parametrize("text,shapes", CASES.values(), ids=CASES.keys())
def test_layer_matches_caffe(text: str, shapes: list[tuple[int, ...]]) -> None:
    check_layer(net_text(text, *shapes), weights={})  # no parameters to draw


def _run(text: str, *xs: np.ndarray) -> torch.Tensor | tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return build_module(net_from_text(text))(*(torch.from_numpy(x) for x in xs))


def test_argmax_layout_without_axis() -> None:
    """N x 2 x top_k x 1: [:, 0] indices into the flattened sample, [:, 1] their values."""
    x = np.array([[[[1.0, 9.0], [5.0, 7.0]]], [[[4.0, 3.0], [2.0, 8.0]]]], np.float32)
    out = _run(net_text(layer("ArgMax", "argmax_param { out_max_val: true top_k: 2 }"), x.shape),
               x)
    assert tuple(out.shape) == (2, 2, 2, 1)
    np.testing.assert_array_equal(out[:, :, :, 0].numpy(), [[[1, 3], [9, 7]], [[3, 0], [8, 4]]])
    out = _run(net_text(layer("ArgMax"), x.shape), x)
    assert tuple(out.shape) == (2, 1, 1, 1) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.flatten().numpy(), [1, 3])


@pytest.mark.parametrize("body", ["argmax_param { top_k: 4 out_max_val: true }",
                                  "argmax_param { axis: 1 top_k: 3 }", "",
                                  "argmax_param { axis: 1 out_max_val: true }",
                                  "argmax_param { axis: 1 }"],
                         ids=["no-axis-top4", "axis-1-top3", "no-axis-top1",
                              "axis-1-top1-values", "axis-1-top1"])
def test_argmax_ties_put_larger_index_first(body: str) -> None:
    """Caffe sorts (value, index) pairs descending: among equal values the larger index wins."""
    x = np.random.default_rng(2).integers(0, 3, (2, 5, 2, 2)).astype(np.float32)
    text = net_text(layer("ArgMax", body), x.shape)
    check_layer(text, inputs={"data": x}, rtol=0)
    y = np.array([[2.0, 5.0, 5.0, 1.0, 5.0]], np.float32)
    out = _run(net_text(layer("ArgMax", "argmax_param { top_k: 3 }"), y.shape), y)
    np.testing.assert_array_equal(out.flatten().numpy(), [4, 2, 1])
    out = _run(net_text(layer("ArgMax"), y.shape), y)
    np.testing.assert_array_equal(out.flatten().numpy(), [4])


def test_slice_points_cut_where_asked() -> None:
    x = np.arange(12, dtype=np.float32).reshape(1, 6, 2)
    outs = _run(net_text(layer("Slice", "slice_param { slice_point: 1 slice_point: 4 }",
                               tops=T3), x.shape), x)
    assert [tuple(t.shape) for t in outs] == [(1, 1, 2), (1, 3, 2), (1, 2, 2)]
    np.testing.assert_array_equal(outs[2].numpy().ravel(), [8, 9, 10, 11])


def test_crop_per_axis_offsets_are_per_axis() -> None:
    """offsets (1, 2) on H, W: a converter applying the first offset to all axes gets (1, 1)."""
    x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    ref = np.zeros((1, 1, 2, 2), np.float32)
    text = net_text(layer("Crop", "crop_param { offset: 1 offset: 2 }", n_bottoms=2),
                    x.shape, ref.shape)
    out = _run(text, x, ref)
    np.testing.assert_array_equal(out.numpy()[0, 0], [[8, 9], [14, 15]])


BATCH = {
    "reshape-copy-infer": reshape((0, -1)),
    "reshape-infer-first": reshape((-1, 10)),
    "reshape-explicit-then-infer": reshape((10, -1)),
    "reshape-nc-to-nc11": reshape((0, 0, 1, 1)),
    "reshape-axis-1-num-axes-1": reshape((3, 1), "axis: 1 num_axes: 1"),
    "reshape-axis-2-infer": reshape((-1,), "axis: 2"),
    "reshape-copy-then-explicit": reshape((0, 3, 20)),
    "slice-points": layer("Slice", "slice_param { slice_point: 1 }", tops=T3[:2]),
    "slice-equal": layer("Slice", tops=T3[:2]),
    "flatten": layer("Flatten"),
    "argmax": layer("ArgMax", "argmax_param { out_max_val: true top_k: 2 }"),
    "argmax-axis": layer("ArgMax", "argmax_param { axis: 1 }"),
}


@pytest.mark.parametrize("text", BATCH.values(), ids=BATCH.keys())
def test_batch_size_independent(text: str) -> None:
    shape = (1, 6, 4, 5) if "Slice" in text else (1, 3, 4, 5)
    check_batch(text, (1, 6) if "dim: 1 dim: 1" in text else shape)


def test_crop_batch_size_independent() -> None:
    check_batch(layer("Crop", "crop_param { offset: 1 offset: 2 }", n_bottoms=2),
                (1, 3, 8, 9), (1, 3, 5, 6))


def test_reshape_keeps_batch_dynamic_but_not_constants() -> None:
    """A batch Caffe copies follows the input; an explicit leading dim does not."""
    net = net_from_text(net_text(reshape((0, -1)), (1, 3, 4, 5)))
    model = build_module(net)
    assert tuple(model(torch.zeros(7, 3, 4, 5)).shape) == (7, 60)
    fixed = build_module(net_from_text(net_text(reshape((1, 60)), (1, 3, 4, 5))))
    with pytest.raises(RuntimeError):
        fixed(torch.zeros(7, 3, 4, 5))


@pytest.mark.parametrize("key", ["slice-points", "reshape-axis-1-zero", "crop-per-axis-offsets",
                                 "argmax-out-max-val", "argmax-axis-1-top2-values", "argmax-axis-1",
                                 "flatten-axis-2"])
def test_modules_follow_the_device(key: str) -> None:
    """Nothing in forward is pinned to the CPU: the whole GraphModule runs on ``meta``."""
    text, shapes = CASES[key]
    net = net_from_text(net_text(text, *shapes))
    model = build_module(net).to("meta")
    out = model(*(torch.empty(s, device="meta") for s in shapes))
    outs = out if isinstance(out, tuple) else (out,)
    for value, got in zip(net.outputs, outs, strict=True):
        assert got.device.type == "meta" and tuple(got.shape) == net.blobs[value].shape
