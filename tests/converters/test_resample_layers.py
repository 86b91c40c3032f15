"""Interp, Upsample (unpooling by a mask and nearest), the Pooling mask top and bilinear
Deconvolution against the numpy reference, with the traps of the naive PyTorch mappings."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffe_bridge.build import build_module
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.ir import with_weights
from tests.helpers.layer_check import check_batch, check_layer, layer_text, net_from_text, net_text

COVERS = {"Interp", "Upsample", "Pooling", "Deconvolution"}

INTERP = [
    ("zoom8", (2, 3, 5, 6), "zoom_factor: 8"),
    ("shrink2", (1, 2, 9, 8), "shrink_factor: 2"),
    ("shrink_zoom", (1, 2, 9, 8), "shrink_factor: 2 zoom_factor: 3"),
    ("height_width_up", (2, 2, 4, 5), "height: 11 width: 7"),
    ("height_width_down", (2, 2, 9, 10), "height: 4 width: 3"),
    ("out_size_1", (1, 2, 4, 5), "height: 1 width: 1"),
    ("same_size_copy", (1, 2, 4, 5), "height: 4 width: 5"),
    ("crop_pads", (1, 2, 9, 9), "zoom_factor: 2 pad_beg: -1 pad_end: -2"),
    ("crop_beg_only", (1, 2, 7, 8), "height: 10 width: 10 pad_beg: -2"),
    ("input_1x1", (1, 2, 1, 1), "height: 3 width: 4"),
]


@pytest.mark.parametrize(("shape", "param"), [c[1:] for c in INTERP], ids=[c[0] for c in INTERP])
def test_interp(shape, param):
    check_layer(net_text(layer_text("Interp", f"interp_param {{ {param} }}"), shape))


def test_interp_traps_of_the_naive_mapping():
    """scale_factor=zoom gives H*z outputs, and half-pixel (align_corners=False) sampling or
    ignoring the pads gives other values: the converter must match Caffe instead."""
    x = torch.randn(1, 2, 5, 6)
    net = net_from_text(net_text(layer_text("Interp", "interp_param { zoom_factor: 4 }"),
                                 tuple(x.shape)))
    assert net.blobs["out"].shape == (1, 2, 17, 21)  # 5 + 4 * 3, not 20
    got = build_module(net)(x)
    assert not torch.allclose(got, F.interpolate(x, size=(17, 21), mode="bilinear"))
    text = layer_text("Interp", "interp_param { height: 6 width: 6 pad_beg: -1 pad_end: -1 }")
    got = build_module(net_from_text(net_text(text, tuple(x.shape))))(x)
    naive = F.interpolate(x, size=(6, 6), mode="bilinear", align_corners=True)
    assert not torch.allclose(got, naive)
    assert torch.allclose(got, F.interpolate(x[:, :, 1:4, 1:5], size=(6, 6), mode="bilinear",
                                             align_corners=True))


@pytest.mark.parametrize(("shape", "out"), [((1, 2, 4, 5), (1, 1)), ((1, 2, 1, 1), (3, 4)),
                                           ((1, 2, 1, 5), (1, 9)), ((1, 2, 4, 5), (4, 5))])
def test_interp_degenerate_sizes_agree_with_align_corners(shape, out):
    """Where Caffe's formula has special cases (1-pixel output: r = 0, the top-left corner;
    1-pixel input; same size: a copy) PyTorch's align_corners=True agrees with the reference."""
    body = f"interp_param {{ height: {out[0]} width: {out[1]} }}"
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    check_layer(net_text(layer_text("Interp", body), shape), inputs={"data": x}, rtol=1e-6)
    torch_y = F.interpolate(torch.from_numpy(x), size=out, mode="bilinear", align_corners=True)
    assert torch.allclose(torch_y[..., 0, 0], torch.from_numpy(x)[..., 0, 0])


@pytest.mark.parametrize("param", ["pad_beg: 1 zoom_factor: 2", "height: 3",
                                   "zoom_factor: 0"])
def test_interp_refuses_bad_params(param):
    with pytest.raises(CaffeBridgeError):
        net_from_text(net_text(layer_text("Interp", f"interp_param {{ {param} }}"), (1, 1, 4, 4)))


def test_interp_batch():
    check_batch(layer_text("Interp", "interp_param { zoom_factor: 3 pad_end: -1 }"), (1, 2, 4, 5))


POOL_UNPOOL = """
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
  pooling_param {{ pool: MAX {pool} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "pool" top: "conv"
  convolution_param {{ num_output: {c} kernel_size: 1 }} }}
layer {{ name: "up" type: "Upsample" bottom: "conv" bottom: "mask" top: "up"
  upsample_param {{ {up} }} }}
"""
UNPOOL = [
    ("segnet_k2s2", (2, 3, 8, 6), "kernel_size: 2 stride: 2", "scale: 2"),
    ("odd_pad_out", (1, 3, 7, 9), "kernel_size: 2 stride: 2", "scale: 2 pad_out_h: true"),
    ("enet_upsample_hw", (1, 3, 7, 9), "kernel_size: 2 stride: 2",
     "upsample_h: 7 upsample_w: 9"),
    ("overlap_k3s2_dup_indices", (1, 3, 9, 9), "kernel_size: 3 stride: 2",
     "upsample_h: 9 upsample_w: 9"),
    ("scale_hw", (1, 2, 6, 9), "kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 3",
     "scale_h: 2 scale_w: 3"),
]


@pytest.mark.parametrize(("shape", "pool", "up"), [c[1:] for c in UNPOOL],
                         ids=[c[0] for c in UNPOOL])
def test_unpool(shape, pool, up):
    text = net_text(POOL_UNPOOL.format(pool=pool, up=up, c=shape[1]), shape)
    check_layer(text)


def test_unpool_duplicate_index_later_wins():
    """Overlapping windows pick one pixel twice: Caffe keeps the later value (max_unpool2d
    leaves it undefined)."""
    text = net_text(layer_text("Upsample", "upsample_param { scale: 2 }", n_bottoms=2),
                    (1, 1, 1, 3), (1, 1, 1, 3))
    x = np.array([[[[1.0, 2.0, 3.0]]]], dtype=np.float32)
    mask = np.array([[[[4.0, 4.0, 0.0]]]], dtype=np.float32)
    check_layer(text, inputs={"data": x, "b1": mask}, weights={})
    y = build_module(net_from_text(text))(torch.from_numpy(x), torch.from_numpy(mask))
    assert y[0, 0, 0, 4] == 2 and y[0, 0, 0, 0] == 3


def test_unpool_fx_traces_and_runs_other_batch():
    text = net_text(POOL_UNPOOL.format(pool="kernel_size: 2 stride: 2", up="scale: 2", c=2),
                    (1, 2, 4, 4))
    gm = torch.fx.symbolic_trace(build_module(net_from_text(text)))
    assert gm(torch.randn(3, 2, 4, 4)).shape == (3, 2, 4, 4)


MASK = [
    ("native_k3s2", (2, 3, 9, 10), "kernel_size: 3 stride: 2"),
    ("native_pad1", (2, 3, 9, 10), "kernel_size: 3 stride: 2 pad: 1"),
    ("explicit_pad2", (2, 3, 9, 10), "kernel_size: 3 stride: 2 pad: 2"),
    ("explicit_pad4_k5s3", (2, 2, 11, 8), "kernel_size: 5 stride: 3 pad: 4"),
    ("global", (2, 3, 5, 7), "global_pooling: true"),
    ("stride_past_image", (1, 2, 5, 5), "kernel_size: 1 stride: 3"),
]


@pytest.mark.parametrize(("shape", "param"), [c[1:] for c in MASK], ids=[c[0] for c in MASK])
def test_pooling_mask(shape, param):
    text = layer_text("Pooling", f"pooling_param {{ pool: MAX {param} }}", tops=("out", "mask"))
    check_layer(net_text(text, shape), rtol=0)


def test_pooling_mask_ties_first_wins():
    """Integer-valued inputs tie everywhere: the first maximum in row-major order wins."""
    rng = np.random.default_rng(3)
    for param in ("kernel_size: 3 stride: 2", "kernel_size: 3 stride: 2 pad: 2",
                  "kernel_size: 2 stride: 1 pad: 1"):
        x = rng.integers(0, 3, (2, 2, 7, 8)).astype(np.float32)
        text = layer_text("Pooling", f"pooling_param {{ pool: MAX {param} }}",
                          tops=("out", "mask"))
        check_layer(net_text(text, x.shape), inputs={"data": x}, rtol=0)
    x = np.full((1, 1, 2, 2), -7.0, dtype=np.float32)  # all tied and negative, with padding
    text = layer_text("Pooling", "pooling_param { pool: MAX kernel_size: 2 pad: 1 }",
                      tops=("out", "mask"))
    check_layer(net_text(text, x.shape), inputs={"data": x}, rtol=0)


def test_ave_pooling_has_no_mask():
    text = layer_text("Pooling", "pooling_param { pool: AVE kernel_size: 2 }",
                      tops=("out", "mask"))
    with pytest.raises(CaffeBridgeError):
        net_from_text(net_text(text, (1, 1, 4, 4)))


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_nearest_upsample(scale):
    body = f"upsample_param {{ scale: {scale} }}"
    check_layer(net_text(layer_text("Upsample", body), (2, 3, 4, 5)))
    check_batch(layer_text("Upsample", body), (1, 3, 4, 5))


def test_nearest_upsample_default_scale_1_and_refusals():
    check_layer(net_text(layer_text("Upsample"), (1, 2, 3, 3)))
    with pytest.raises(CaffeBridgeError):  # unpooling fields without the mask bottom
        net_from_text(net_text(layer_text("Upsample", "upsample_param { upsample_h: 4 "
                                          "upsample_w: 4 }"), (1, 1, 2, 2)))


def bilinear_kernel(k: int) -> np.ndarray:
    """Caffe's BilinearFiller (filler.hpp): f = ceil(k / 2), c = (2f - 1 - f % 2) / (2f)."""
    f = int(np.ceil(k / 2))
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    r = 1 - np.abs(np.arange(k) / f - c)
    return np.outer(r, r)


def test_deconvolution_as_fixed_bilinear_upsampling():
    """FCN/DeepLab-style: group = channels, kernel 2s - s % 2, stride s, pad ceil((s-1)/2),
    bilinear weights: interior outputs equal a hand-computed bilinear interpolation."""
    c, s = 3, 2
    k, pad = 2 * s - s % 2, int(np.ceil((s - 1) / 2))
    body = (f"convolution_param {{ num_output: {c} group: {c} kernel_size: {k} stride: {s} "
            f"pad: {pad} bias_term: false }}")
    text = net_text(layer_text("Deconvolution", body), (1, c, 4, 5))
    w = np.repeat(bilinear_kernel(k)[None, None], c, axis=0).astype(np.float32)
    check_layer(text, weights={"l": [w]})
    x = np.random.default_rng(0).standard_normal((1, c, 4, 5)).astype(np.float32)
    y = build_module(with_weights(net_from_text(text), {"l": [w]}))(torch.from_numpy(x))
    # out(i) for stride 2, pad 1, kernel 4: the input sample at (i - 0.5) / 2, linearly
    # interpolated between neighbours with weights 0.75 / 0.25.
    yy = y.detach().numpy()[0]
    assert yy.shape == (c, 8, 10)
    want = 0.75 * 0.75 * x[0, :, 1, 1] + 0.25 * 0.75 * (x[0, :, 0, 1] + x[0, :, 1, 0]) \
        + 0.25 * 0.25 * x[0, :, 0, 0]
    assert np.allclose(yy[:, 2, 2], want, atol=1e-6)  # output 2 ~ input 0.75
    want = 0.75 * 0.75 * x[0, :, 1, 1] + 0.25 * 0.75 * (x[0, :, 2, 1] + x[0, :, 1, 2]) \
        + 0.25 * 0.25 * x[0, :, 2, 2]
    assert np.allclose(yy[:, 3, 3], want, atol=1e-6)  # output 3 ~ input 1.25


@pytest.mark.skipif(importlib.util.find_spec("cv2") is None, reason="OpenCV is not installed")
def test_opencv_interp_traps(tmp_path):
    """OpenCV's Interp matches the source for zoom_factor and height/width, but ignores
    pad_beg/pad_end (no crop: a larger output) and cannot size a shrink_factor output.
    The source decides; the converter crops and shrinks as interp_layer.cpp does."""
    from caffe_bridge.opencv_reference import opencv_forward

    x = np.random.default_rng(0).standard_normal((1, 2, 5, 6)).astype(np.float32)

    def both(param: str):
        text = net_text(layer_text("Interp", f"interp_param {{ {param} }}"), x.shape)
        path = tmp_path / "interp.prototxt"
        path.write_text(text)
        ours = build_module(net_from_text(text))(torch.from_numpy(x)).detach().numpy()
        return ours, opencv_forward(path, {}, {"data": x})["out"]

    ours, cv = both("zoom_factor: 4")
    assert ours.shape == cv.shape == (1, 2, 17, 21) and np.abs(ours - cv).max() < 1e-5
    ours, cv = both("zoom_factor: 2 pad_beg: -1 pad_end: -1")
    assert ours.shape == (1, 2, 5, 7) and cv.shape == (1, 2, 9, 11)
    with pytest.raises(CaffeBridgeError):
        both("shrink_factor: 2")


def test_interp_random_geometries():
    """Seeded sweep: sizes 1..9, every way of giving the output size, crops."""
    rng = np.random.default_rng(11)
    done = 0
    while done < 25:
        h, w = (int(v) for v in rng.integers(1, 10, 2))
        beg, end = (int(v) for v in -rng.integers(0, 3, 2))
        if h + beg + end < 1 or w + beg + end < 1:
            continue
        kind = done % 4
        param = [f"zoom_factor: {rng.integers(1, 5)}", f"shrink_factor: {rng.integers(1, 4)}",
                 f"height: {rng.integers(1, 12)} width: {rng.integers(1, 12)}",
                 f"shrink_factor: {rng.integers(1, 4)} zoom_factor: {rng.integers(1, 4)}"][kind]
        body = f"interp_param {{ {param} pad_beg: {beg} pad_end: {end} }}"
        check_layer(net_text(layer_text("Interp", body), (2, 2, h, w)), seed=done)
        done += 1


def test_pooling_mask_random_geometries_with_ties():
    """Seeded sweep of MAX pooling with a mask top on small-integer (tie-rich) inputs."""
    rng = np.random.default_rng(12)
    for i in range(20):
        k = int(rng.integers(1, 4))
        s, p = int(rng.integers(1, 4)), int(rng.integers(0, k))
        h, w = (int(v) for v in rng.integers(k, 9, 2))
        x = rng.integers(-2, 2, (2, 2, h, w)).astype(np.float32)
        text = layer_text("Pooling", f"pooling_param {{ pool: MAX kernel_size: {k} stride: {s} "
                          f"pad: {p} }}", tops=("out", "mask"))
        check_layer(net_text(text, x.shape), inputs={"data": x}, rtol=0, seed=i)


def test_pool_unpool_random_overlapping_windows_with_ties():
    """Pooling mask straight into Upsample of the pooled input's size: overlapping windows
    and ties make duplicate indices, where the later input must win."""
    rng = np.random.default_rng(13)
    for i in range(12):
        k, s = int(rng.integers(2, 4)), int(rng.integers(1, 3))
        h, w = (int(v) for v in rng.integers(k + 1, 9, 2))
        x = rng.integers(-2, 2, (1, 2, h, w)).astype(np.float32)
        text = net_text(POOL_UNPOOL.format(pool=f"kernel_size: {k} stride: {s}",
                                           up=f"upsample_h: {h} upsample_w: {w}", c=2), x.shape)
        check_layer(text, inputs={"data": x}, seed=i)
