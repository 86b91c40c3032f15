"""Self-tests of the numpy Caffe reference (tests/reference/): hand-computed numbers that an
implementation done the PyTorch way, or a plausible misreading of Caffe, would miss."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests import reference
from tests.helpers.reference_layers import make_layer, rng, run1
from tests.reference import pooling as ref_pooling
from tests.reference import run_layer, run_net

# ---------------------------------------------------------------- registry


def test_supported_is_the_dispatch_table():
    assert frozenset(reference.DISPATCH) == reference.SUPPORTED
    expected = {
        "Input", "Convolution", "Deconvolution", "InnerProduct", "BatchNorm", "Scale", "Bias",
        "Pooling", "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log",
        "BNLL", "Threshold", "Softmax", "Eltwise", "Concat", "Slice", "Split", "Flatten",
        "Reshape", "Crop", "Dropout", "LRN", "ArgMax", "Axpy",
    }  # fmt: skip
    assert expected <= reference.SUPPORTED


def test_unknown_type_raises():
    with pytest.raises(NotImplementedError):
        run_layer(make_layer("Python"), [np.zeros(1)])


# ---------------------------------------------------------------- pooling


def test_senet_first_pool_112_to_56():
    x = rng().standard_normal((1, 2, 112, 112))
    y = run1(make_layer("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"), x)
    assert y.shape == (1, 2, 56, 56)
    # the last window starts at 110 and is clipped to rows/cols 110..111
    assert y[0, 1, 55, 55] == x[0, 1, 110:, 110:].max()
    assert y[0, 0, 3, 7] == x[0, 0, 6:9, 14:17].max()
    floor = make_layer(
        "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR }"
    )
    assert run1(floor, x).shape == (1, 2, 55, 55)
    fork = make_layer(
        "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false }"
    )
    assert run1(fork, x).shape == (1, 2, 55, 55)
    # ceil_mode wins over round_mode when both are set
    both = make_layer(
        "Pooling",
        "pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR ceil_mode: true }",
    )
    assert run1(both, x).shape == (1, 2, 56, 56)


def test_ave_pool_5x5_k3_s2_p1_padding_counts():
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y = run1(
        make_layer("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"), x
    )
    # windows cover rows {0,1}, {1,2,3}, {3,4} (+ padding); every divisor is 3*3 = 9
    # e.g. corner: (0 + 1 + 5 + 6) / 9; centre: sum(x[1:4, 1:4]) / 9 = 108 / 9
    expected = np.array([[12, 27, 24], [63, 108, 81], [72, 117, 84]]) / 9.0
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-12)


def test_ave_pool_overhang_past_pad_not_counted():
    # 6x6, k3 s2 p1: pooled = ceil(5/2) + 1 = 4; the last window starts at 5 and would reach 8,
    # but hend = min(5 + 3, H + p = 7) = 7: divisor 2 per axis (padding row 6 counts, 7 not).
    x = np.ones((1, 1, 6, 6))
    y = run1(
        make_layer("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"), x
    )
    real = np.array([2, 3, 3, 1.0])  # image pixels in each window along one axis
    div = np.array([3, 3, 3, 2.0])
    np.testing.assert_allclose(y[0, 0], np.outer(real, real) / np.outer(div, div), rtol=1e-12)
    assert y[0, 0, 3, 3] == pytest.approx(0.25)  # count_include_pad=False would give 1


def test_pool_clip_rule_drops_window_starting_in_padding():
    # 5x5, k2 s2 p1: ceil((5 + 2 - 2) / 2) + 1 = 4, but window 3 would start at 6 - 1 = 5 >= H
    x = rng(1).standard_normal((2, 3, 5, 5))
    y = run1(
        make_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }"), x
    )
    assert y.shape == (2, 3, 3, 3)
    assert y[1, 2, 0, 0] == x[1, 2, 0, 0]  # the window is one pixel plus padding
    assert y[1, 2, 2, 1] == x[1, 2, 3:5, 1:3].max()


def test_pool_max_ignores_padding_and_stride_defaults_to_1():
    x = -np.ones((1, 1, 3, 3)) - np.arange(9.0).reshape(1, 1, 3, 3)  # all negative
    y = run1(make_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 pad: 1 }"), x)
    assert y.shape == (1, 1, 4, 4)  # stride 1: (3 + 2 - 2) / 1 + 1
    assert y[0, 0, 0, 0] == -1.0  # padding (0) never wins
    assert y.max() < 0


def test_pool_large_pad_and_hw_fields():
    # pad may be up to k - 1 (PyTorch refuses pad > k/2)
    x = rng(2).standard_normal((1, 2, 4, 6))
    layer = make_layer(
        "Pooling",
        "pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 "
        "pad_h: 2 pad_w: 1 }",
    )
    y = run1(layer, x)
    # h: ceil((4 + 4 - 3) / 1) + 1 = 6, (6-1)*1 = 5 < 6 keep; w: ceil((6 + 2 - 2)/2) + 1 = 4,
    # (4-1)*2 = 6 >= 6 + 1? no -> 4
    assert y.shape == (1, 2, 6, 4)
    # first window: rows -2..0, cols -1..0 -> only x[0, 0] real; divisor 3 * 2
    assert y[0, 1, 0, 0] == pytest.approx(x[0, 1, 0, 0] / 6)


def test_pool_ceil_without_pad_can_leave_the_image():
    # no pad -> no clip rule: k1 s3 on 5 gives ceil(4/3) + 1 = 3 windows, the last at 6 >= H
    x = np.arange(5.0).reshape(1, 1, 1, 5) + 1
    mx = run1(
        make_layer("Pooling", "pooling_param { pool: MAX kernel_h: 1 kernel_w: 1 stride: 3 }"), x
    )
    assert mx.shape == (1, 1, 1, 3)
    assert mx.ravel()[:2].tolist() == [1.0, 4.0]
    assert mx.ravel()[2] == np.finfo(np.float32).min  # Caffe's -FLT_MAX initial value
    ave = run1(
        make_layer("Pooling", "pooling_param { pool: AVE kernel_h: 1 kernel_w: 1 stride: 3 }"), x
    )
    # AVE divisor (min(6 + 1, 5) - 6) * 1 = -1 over an empty sum: -0.0
    assert ave.ravel().tolist() == [1.0, 4.0, 0.0]


def test_global_pooling():
    x = rng(3).standard_normal((2, 3, 7, 5))
    ave = run1(make_layer("Pooling", "pooling_param { pool: AVE global_pooling: true }"), x)
    mx = run1(make_layer("Pooling", "pooling_param { pool: MAX global_pooling: true }"), x)
    np.testing.assert_allclose(ave[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-12)
    np.testing.assert_array_equal(mx[..., 0, 0], x.max(axis=(2, 3)))


def test_pool_matches_direct_definition_random():
    r = rng(4)
    for _ in range(30):
        k = int(r.integers(1, 5))
        s = int(r.integers(1, 4))
        p = int(r.integers(0, k))
        h, w = (int(v) for v in r.integers(k, 12, size=2))
        x = r.standard_normal((1, 2, h, w))
        for method in (ref_pooling.MAX, ref_pooling.AVE):
            y = ref_pooling.pool2d(x, method, (k, k), (s, s), (p, p))
            assert y.shape[2:] == (_caffe_pooled(h, k, s, p), _caffe_pooled(w, k, s, p))
            for i, j in itertools.product(range(y.shape[2]), range(y.shape[3])):
                hs, ws = i * s - p, j * s - p
                win = x[:, :, max(hs, 0) : min(hs + k, h), max(ws, 0) : min(ws + k, w)]
                if method == ref_pooling.MAX:
                    want = win.max(axis=(2, 3)) if win.size else np.finfo(np.float32).min
                else:
                    div = (min(hs + k, h + p) - hs) * (min(ws + k, w + p) - ws)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        want = np.divide(win.sum(axis=(2, 3)), div)
                np.testing.assert_allclose(y[:, :, i, j], want, rtol=1e-12)


def _caffe_pooled(n: int, k: int, s: int, p: int) -> int:
    out = -(-(n + 2 * p - k) // s) + 1
    if p and (out - 1) * s >= n + p:
        out -= 1
    return out


# ---------------------------------------------------------------- convolution


def direct_conv(x, w, b, stride, pad, dil, group):
    """The 7-loop definition of Caffe's convolution (per-dimension stride/pad/dilation)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h + 2 * pad[0] - (dil[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dil[1] * (kw - 1) + 1)) // stride[1] + 1
    og = o // group
    y = np.zeros((n, o, oh, ow))
    for b_, oc, i, j, ci, u, v in itertools.product(
        range(n), range(o), range(oh), range(ow), range(cg), range(kh), range(kw)
    ):
        hi = i * stride[0] - pad[0] + u * dil[0]
        wi = j * stride[1] - pad[1] + v * dil[1]
        if 0 <= hi < h and 0 <= wi < wd:
            y[b_, oc, i, j] += w[oc, ci, u, v] * x[b_, (oc // og) * cg + ci, hi, wi]
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def test_conv_matches_seven_loop_definition():
    r = rng(5)
    x = r.standard_normal((2, 4, 7, 9))
    w = r.standard_normal((6, 2, 3, 2))
    b = r.standard_normal(6)
    layer = make_layer(
        "Convolution",
        "convolution_param { num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 "
        "stride_w: 1 pad_h: 1 pad_w: 2 dilation: 2 dilation: 1 }",
        blobs=(w, b),
    )
    y = run1(layer, x)
    want = direct_conv(x, w.astype(np.float32), b.astype(np.float32), (2, 1), (1, 2), (2, 1), 2)
    assert y.shape == want.shape == (2, 6, 3, 12)
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)


def test_conv_repeated_fields_and_no_bias():
    r = rng(6)
    x = r.standard_normal((1, 3, 8, 8))
    w = r.standard_normal((4, 3, 3, 3))
    layer = make_layer(
        "Convolution",
        "convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 bias_term: false }",
        blobs=(w,),
    )
    y = run1(layer, x)
    want = direct_conv(x, w.astype(np.float32), None, (2, 2), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)
    # per-dimension repeated values: kernel 3 x 1, stride 1 x 2
    layer2 = make_layer(
        "Convolution",
        "convolution_param { num_output: 4 kernel_size: 3 kernel_size: 1 stride: 1 stride: 2 "
        "bias_term: false }",
        blobs=(w[:, :, :, :1],),
    )
    y2 = run1(layer2, x)
    want2 = direct_conv(x, w[:, :, :, :1].astype(np.float32), None, (1, 2), (0, 0), (1, 1), 1)
    np.testing.assert_allclose(y2, want2, rtol=1e-10, atol=1e-12)


def test_conv_64ch_56x56_is_fast():
    r = rng(7)
    x = r.standard_normal((1, 64, 56, 56)).astype(np.float32)
    w = (r.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    text = "convolution_param { num_output: 64 kernel_size: 3 pad: 1 }"
    layer = make_layer("Convolution", text, blobs=(w, np.zeros(64)))
    t0 = time.perf_counter()
    y = run_layer(layer, [x])[0]
    assert time.perf_counter() - t0 < 1.0
    assert y.shape == (1, 64, 56, 56)


def direct_deconv(x, w, stride, pad, dil, group):
    """Deconvolution by definition: every input pixel scatters w * x into the output."""
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    oh = stride[0] * (h - 1) + dil[0] * (kh - 1) + 1 - 2 * pad[0]
    ow = stride[1] * (wd - 1) + dil[1] * (kw - 1) + 1 - 2 * pad[1]
    cg = c // group
    y = np.zeros((n, og * group, oh, ow))
    for b_, ci, i, j, oc, u, v in itertools.product(
        range(n), range(c), range(h), range(wd), range(og), range(kh), range(kw)
    ):
        ho = i * stride[0] - pad[0] + u * dil[0]
        wo = j * stride[1] - pad[1] + v * dil[1]
        if 0 <= ho < oh and 0 <= wo < ow:
            y[b_, (ci // cg) * og + oc, ho, wo] += w[ci, oc, u, v] * x[b_, ci, i, j]
    return y


def test_deconvolution_output_size_and_values():
    r = rng(8)
    x = r.standard_normal((2, 4, 4, 5))
    w = r.standard_normal((4, 3, 4, 4))  # (C_in, num_output / group, kh, kw)
    b = r.standard_normal(6)
    layer = make_layer(
        "Deconvolution",
        "convolution_param { num_output: 6 group: 2 kernel_size: 4 stride: 2 pad: 1 }",
        blobs=(w, b),
    )
    y = run1(layer, x)
    # s(in - 1) + d(k - 1) + 1 - 2p: 2*3 + 3 + 1 - 2 = 8 and 2*4 + 3 + 1 - 2 = 10
    assert y.shape == (2, 6, 8, 10)
    want = direct_deconv(x, w.astype(np.float32), (2, 2), (1, 1), (1, 1), 2)
    want += b.astype(np.float32).reshape(1, -1, 1, 1)
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)
    # dilation 2, kernel 3, stride 1, no pad on 5 -> 4 + 4 + 1 = 9
    w2 = r.standard_normal((4, 2, 3, 3))
    dil = make_layer(
        "Deconvolution",
        "convolution_param { num_output: 2 kernel_size: 3 dilation: 2 bias_term: false }",
        blobs=(w2,),
    )
    y2 = run1(dil, x)
    assert y2.shape == (2, 2, 8, 9)
    np.testing.assert_allclose(
        y2,
        direct_deconv(x, w2.astype(np.float32), (1, 1), (0, 0), (2, 2), 1),
        rtol=1e-10,
        atol=1e-12,
    )


def test_inner_product_axis_transpose_legacy_blob():
    r = rng(9)
    x = r.standard_normal((2, 3, 2, 2))
    w = r.standard_normal((5, 12)).astype(np.float32)
    b = r.standard_normal(5).astype(np.float32)
    want = x.reshape(2, 12) @ w.T.astype(np.float64) + b
    text = "inner_product_param { num_output: 5 }"
    np.testing.assert_allclose(run1(make_layer("InnerProduct", text, (w, b)), x), want, rtol=1e-12)
    # old 4-D blobs (1, 1, N, K) and (1, 1, 1, N)
    legacy = make_layer("InnerProduct", text, (w.reshape(1, 1, 5, 12), b.reshape(1, 1, 1, 5)))
    np.testing.assert_allclose(run1(legacy, x), want, rtol=1e-12)
    text_t = "inner_product_param { num_output: 5 transpose: true }"
    tr = make_layer("InnerProduct", text_t, (w.T.copy(), b))  # weight (K, N)
    np.testing.assert_allclose(run1(tr, x), want, rtol=1e-12)
    ax2 = make_layer("InnerProduct", "inner_product_param { num_output: 5 axis: 2 }", (w[:, :4], b))
    y = run1(ax2, x)
    assert y.shape == (2, 3, 5)
    want2 = x[1, 2].reshape(4) @ w[:, :4].T.astype(np.float64) + b
    np.testing.assert_allclose(y[1, 2], want2, rtol=1e-12)


# ---------------------------------------------------------------- normalisation


def test_batchnorm_moving_average_factor():
    x = np.array([4.0, 0.0]).reshape(1, 2, 1, 1)
    f = 0.999
    layer = make_layer(
        "BatchNorm", blobs=(np.array([2.0 * f, 1.0 * f]), np.array([4.0 * f, 1.0 * f]), [f])
    )
    y = run1(layer, x)
    # mean = [2, 1], var = [4, 1] after dividing by f; ignoring f would give ~1.0015 for c0
    eps = float(np.float32(1e-5))
    np.testing.assert_allclose(
        y.ravel(), [2.0 / np.sqrt(4.0 + eps), -1.0 / np.sqrt(1.0 + eps)], rtol=1e-6
    )
    assert abs(y.ravel()[0] - 0.99999875) < 1e-7


def test_batchnorm_factor_zero_and_eps():
    x = np.full((1, 1, 1, 1), 1e-3)
    layer = make_layer("BatchNorm", blobs=([5.0], [7.0], [0.0]))
    # f == 0: mean and variance become 0: y = x / sqrt(1e-5)
    assert run1(layer, x).item() == pytest.approx(1e-3 / np.sqrt(1e-5), rel=1e-6)
    eps = make_layer("BatchNorm", "batch_norm_param { eps: 0.01 }", blobs=([5.0], [7.0], [0.0]))
    assert run1(eps, x).item() == pytest.approx(1e-2, rel=1e-6)


def test_batchnorm_explicit_batch_statistics():
    x = rng(10).standard_normal((3, 2, 4, 4))
    layer = make_layer(
        "BatchNorm", "batch_norm_param { use_global_stats: false }", blobs=([9, 9], [9, 9], [1])
    )
    y = run1(layer, x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)


def test_scale_learned_with_bias_and_num_axes():
    r = rng(11)
    x = r.standard_normal((2, 3, 4, 5))
    g, b = r.standard_normal(3), r.standard_normal(3)
    y = run1(make_layer("Scale", "scale_param { bias_term: true }", blobs=(g, b)), x)
    g32, b32 = g.astype(np.float32), b.astype(np.float32)
    np.testing.assert_allclose(y, x * g32.reshape(1, 3, 1, 1) + b32.reshape(1, 3, 1, 1), rtol=1e-12)
    s2 = r.standard_normal((3, 4)).astype(np.float32)
    y2 = run1(make_layer("Scale", "scale_param { num_axes: 2 }", blobs=(s2,)), x)
    np.testing.assert_allclose(y2, x * s2[None, :, :, None], rtol=1e-12)
    s3 = r.standard_normal((4, 5)).astype(np.float32)
    y3 = run1(make_layer("Scale", "scale_param { axis: -2 num_axes: -1 }", blobs=(s3,)), x)
    np.testing.assert_allclose(y3, x * s3, rtol=1e-12)
    y4 = run1(make_layer("Scale", "scale_param { num_axes: 0 }", blobs=(np.array(2.5),)), x)
    np.testing.assert_allclose(y4, 2.5 * x, rtol=1e-12)


def test_scale_two_bottoms_axis0_se_bn_inception():
    r = rng(12)
    x = r.standard_normal((2, 3, 4, 4))
    gate = r.standard_normal((2, 3, 1, 1))
    # Reshape {dim: 0 dim: 0} turns the N x C x 1 x 1 gate into N x C ...
    g2 = run1(make_layer("Reshape", "reshape_param { shape { dim: 0 dim: 0 } }"), gate)
    assert g2.shape == (2, 3)
    # ... and Scale axis: 0 broadcasts it over x from axis 0
    y = run1(make_layer("Scale", "scale_param { axis: 0 bias_term: false }"), x, g2)
    np.testing.assert_allclose(y, x * gate, rtol=1e-12)
    assert y[1, 2, 3, 0] == pytest.approx(x[1, 2, 3, 0] * g2[1, 2])
    # two bottoms with bias: the bias is blobs[0]
    b = r.standard_normal(3).astype(np.float32)
    yb = run1(
        make_layer("Scale", "scale_param { bias_term: true }", blobs=(b,)), x, gate[0, :, 0, 0]
    )
    np.testing.assert_allclose(yb, x * gate[0].reshape(1, 3, 1, 1) + b.reshape(1, 3, 1, 1))


def test_bias_one_and_two_bottoms():
    r = rng(13)
    x = r.standard_normal((2, 3, 4))
    b = r.standard_normal(3).astype(np.float32)
    np.testing.assert_allclose(run1(make_layer("Bias", blobs=(b,)), x), x + b[None, :, None])
    b2 = r.standard_normal((2, 3))
    y = run1(make_layer("Bias", "bias_param { axis: 0 }"), x, b2)
    np.testing.assert_allclose(y, x + b2[:, :, None])


def test_lrn_within_channel_divides_by_n_squared_at_borders():
    x = np.ones((1, 1, 3, 3))
    layer = make_layer(
        "LRN", "lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 9 beta: 1 k: 5 }"
    )
    y = run1(layer, x)
    # avg = (#pixels of the 3x3 window inside the image) / 9; scale = 1 + 9 * avg; k ignored
    # corner 4 pixels -> 1/5, edge 6 -> 1/7, centre 9 -> 1/10
    expected = 1.0 / np.array([[5, 7, 5], [7, 10, 7], [5, 7, 5.0]])
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-12)


def test_lrn_within_channel_random_default_params():
    x = rng(14).standard_normal((2, 2, 6, 7))
    y = run1(make_layer("LRN", "lrn_param { norm_region: WITHIN_CHANNEL }"), x)
    sq = np.pad(x * x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    s = sum(sq[:, :, i : i + 6, j : j + 7] for i in range(5) for j in range(5))
    np.testing.assert_allclose(y, x * (1 + s / 25.0) ** -0.75, rtol=1e-12)


def test_lrn_across_channels():
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    layer = make_layer("LRN", "lrn_param { local_size: 3 alpha: 3 beta: 1 k: 1 }")
    # scale_c = 1 + (3/3) * sum x^2 over c-1..c+1: 6, 15, 14
    np.testing.assert_allclose(run1(layer, x).ravel(), [1 / 6, 2 / 15, 3 / 14], rtol=1e-12)
    x5 = rng(15).standard_normal((2, 7, 3, 2))
    y5 = run1(make_layer("LRN", "lrn_param { alpha: 0.5 k: 2 }"), x5)
    sq = np.pad(x5**2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    s = sum(sq[:, i : i + 7] for i in range(5))
    np.testing.assert_allclose(y5, x5 * (2 + 0.5 / 5 * s) ** -0.75, rtol=1e-12)


# ---------------------------------------------------------------- activations


def test_activations():
    x = np.array([-30.0, -2.0, -0.5, 0.0, 0.5, 2.0, 800.0]).reshape(1, 7)
    relu = run1(make_layer("ReLU", "relu_param { negative_slope: 0.1 }"), x)
    np.testing.assert_allclose(relu, np.where(x > 0, x, 0.1 * x))
    elu = run1(make_layer("ELU", "elu_param { alpha: 0.5 }"), x)
    np.testing.assert_allclose(elu, np.where(x > 0, x, 0.5 * np.expm1(np.minimum(x, 0))))
    sig = run1(make_layer("Sigmoid"), x)
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-np.clip(x, -700, 700))), rtol=1e-12)
    np.testing.assert_allclose(run1(make_layer("TanH"), x), np.tanh(x))
    np.testing.assert_allclose(run1(make_layer("AbsVal"), x), np.abs(x))
    bnll = run1(make_layer("BNLL"), x)
    assert np.isfinite(bnll).all()
    assert bnll[0, -1] == 800.0  # x + log(1 + exp(-x)): no overflow
    assert bnll[0, 3] == pytest.approx(np.log(2))
    assert bnll[0, 1] == pytest.approx(np.log1p(np.exp(-2.0)))
    thr = run1(make_layer("Threshold", "threshold_param { threshold: 0.5 }"), x)
    np.testing.assert_array_equal(thr.ravel(), [0, 0, 0, 0, 0, 1, 1])  # strictly greater


def test_prelu_channelwise_and_shared():
    x = np.array([-1.0, -2.0, 3.0, -4.0]).reshape(1, 2, 2, 1)
    y = run1(make_layer("PReLU", blobs=([0.1, 0.5],)), x)
    np.testing.assert_allclose(y.ravel(), [-0.1, -0.2, 3.0, -2.0], rtol=1e-6)
    ys = run1(make_layer("PReLU", "prelu_param { channel_shared: true }", blobs=([0.25],)), x)
    np.testing.assert_allclose(ys.ravel(), [-0.25, -0.5, 3.0, -1.0])


def test_power_exp_log():
    x = np.array([0.5, 1.0, 2.0])
    pw = make_layer("Power", "power_param { power: 2 scale: 3 shift: 1 }")
    np.testing.assert_allclose(run1(pw, x), (1 + 3 * x) ** 2)
    const = make_layer("Power", "power_param { power: 3 scale: 0 shift: 2 }")
    np.testing.assert_allclose(run1(const, np.array([np.inf, 1.0])), [8.0, 8.0])
    assert run1(make_layer("Power", "power_param { power: 0 }"), np.array([0.0])).item() == 1.0
    ex = make_layer("Exp", "exp_param { base: 2 scale: 3 shift: 1 }")
    np.testing.assert_allclose(run1(ex, x), 2.0 ** (1 + 3 * x), rtol=1e-12)
    np.testing.assert_allclose(run1(make_layer("Exp"), x), np.exp(x), rtol=1e-12)
    lg = make_layer("Log", "log_param { base: 10 scale: 2 shift: 1 }")
    np.testing.assert_allclose(run1(lg, x), np.log10(1 + 2 * x), rtol=1e-12)
    np.testing.assert_allclose(run1(make_layer("Log"), x), np.log(x), rtol=1e-12)


def test_dropout_is_identity_at_test():
    x = rng(16).standard_normal((2, 3))
    np.testing.assert_array_equal(
        run1(make_layer("Dropout", "dropout_param { dropout_ratio: 0.7 }"), x), x
    )


def test_softmax_default_axis_is_1():
    x = rng(17).standard_normal((2, 3, 4))
    y = run1(make_layer("Softmax"), x)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-12)
    e = np.exp(x)
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    y2 = run1(make_layer("Softmax", "softmax_param { axis: -1 }"), x)
    np.testing.assert_allclose(y2.sum(axis=2), 1.0, rtol=1e-12)
    big = run1(make_layer("Softmax"), np.array([[1000.0, 1000.0]]))
    np.testing.assert_allclose(big, [[0.5, 0.5]])


# ---------------------------------------------------------------- element-wise


def test_eltwise_coeff_prod_max():
    a, b = np.array([1.0, 2.0]), np.array([10.0, -20.0])
    assert run1(make_layer("Eltwise"), a, b).tolist() == [11.0, -18.0]
    coeff = make_layer("Eltwise", "eltwise_param { operation: SUM coeff: 1 coeff: -0.5 }")
    assert run1(coeff, a, b).tolist() == [-4.0, 12.0]
    prod = make_layer("Eltwise", "eltwise_param { operation: PROD }")
    assert run1(prod, a, b, a).tolist() == [10.0, -80.0]
    mx = make_layer("Eltwise", "eltwise_param { operation: MAX }")
    assert run1(mx, a, b).tolist() == [10.0, 2.0]


def test_axpy_scales_the_second_bottom_not_the_shortcut():
    a = np.array([2.0, -1.0]).reshape(1, 2, 1, 1)
    x = np.full((1, 2, 2, 2), 3.0)
    y = np.full((1, 2, 2, 2), 5.0)
    out = run1(make_layer("Axpy"), a, x, y)
    # a * X + Y = 2*3 + 5 = 11 and -3 + 5 = 2 (OpenCV's a * Y + X would give 13 and -2)
    np.testing.assert_array_equal(out[0, :, 0, 0], [11.0, 2.0])
    out2 = run1(make_layer("Axpy"), a.reshape(1, 2), x, y)  # N x C form of a
    np.testing.assert_array_equal(out2, out)


# ---------------------------------------------------------------- shape ops


def test_reshape_zero_and_minus_one():
    x = np.arange(120.0).reshape(2, 3, 4, 5)
    shape = lambda t: run1(make_layer("Reshape", f"reshape_param {{ {t} }}"), x).shape  # noqa: E731
    assert shape("shape { dim: 0 dim: -1 }") == (2, 60)
    assert shape("shape { dim: 0 dim: 0 dim: -1 dim: 2 }") == (2, 3, 10, 2)
    assert shape("shape { dim: -1 } axis: 1 num_axes: 2") == (2, 12, 5)
    assert shape("shape { dim: 0 dim: 2 dim: -1 } axis: 1 num_axes: 2") == (2, 3, 2, 2, 5)
    assert shape("shape { dim: 1 } axis: -1 num_axes: 0") == (2, 3, 4, 5, 1)
    assert shape("shape { dim: 6 } axis: 0 num_axes: 2") == (6, 4, 5)
    y = run1(make_layer("Reshape", "reshape_param { shape { dim: -1 dim: 4 } }"), x)
    np.testing.assert_array_equal(y.ravel(), x.ravel())  # row-major, order kept


def test_flatten():
    x = np.zeros((2, 3, 4, 5))
    assert run1(make_layer("Flatten"), x).shape == (2, 60)
    shape = lambda t: run1(make_layer("Flatten", f"flatten_param {{ {t} }}"), x).shape  # noqa: E731
    assert shape("axis: 1 end_axis: 2") == (2, 12, 5)
    assert shape("axis: 0 end_axis: -2") == (24, 5)


def test_concat_slice_split():
    r = rng(18)
    a, b = r.standard_normal((2, 3, 4)), r.standard_normal((2, 5, 4))
    c = run1(make_layer("Concat"), a, b)
    np.testing.assert_array_equal(c, np.concatenate([a, b], axis=1))
    legacy = run1(make_layer("Concat", "concat_param { concat_dim: 2 }"), a, a)
    assert legacy.shape == (2, 3, 8)
    parts = run_layer(
        make_layer("Slice", "slice_param { slice_point: 1 slice_point: 6 }", tops=3), [c]
    )
    assert [p.shape[1] for p in parts] == [1, 5, 2]
    np.testing.assert_array_equal(parts[1], c[:, 1:6])
    equal = run_layer(make_layer("Slice", "slice_param { axis: -1 }", tops=2), [c])
    np.testing.assert_array_equal(equal[1], c[:, :, 2:])
    legacy_s = run_layer(make_layer("Slice", "slice_param { slice_dim: 0 }", tops=2), [c])
    assert legacy_s[0].shape == (1, 8, 4)
    copies = run_layer(make_layer("Split", tops=3), [a])
    assert len(copies) == 3 and all(np.array_equal(p, a) for p in copies)


def test_crop_offsets():
    x = np.arange(2 * 3 * 6 * 7.0).reshape(2, 3, 6, 7)
    ref = np.zeros((1, 1, 3, 4))
    y = run1(make_layer("Crop", "crop_param { offset: 2 }"), x, ref)
    np.testing.assert_array_equal(y, x[:, :, 2:5, 2:6])  # axis 2 default, one offset for all
    y2 = run1(make_layer("Crop", "crop_param { offset: 1 offset: 3 }"), x, ref)
    np.testing.assert_array_equal(y2, x[:, :, 1:4, 3:7])
    y3 = run1(make_layer("Crop", "crop_param { axis: 1 offset: 1 }"), x, np.zeros((1, 2, 3, 4)))
    np.testing.assert_array_equal(y3, x[:, 1:3, 1:4, 1:5])


def test_argmax_shapes_and_ties():
    x = np.array([[3.0, 1.0, 3.0, 2.0], [0.0, 5.0, 4.0, 5.0]]).reshape(2, 4, 1, 1)
    y = run1(make_layer("ArgMax"), x)
    assert y.shape == (2, 1, 1, 1)  # (N, 1, top_k) padded to the bottom's rank
    # ties: std::greater on (value, index) pairs puts the larger index first
    np.testing.assert_array_equal(y.ravel(), [2, 3])
    y2 = run1(make_layer("ArgMax", "argmax_param { top_k: 3 out_max_val: true }"), x)
    assert y2.shape == (2, 2, 3, 1)
    np.testing.assert_array_equal(y2[0, 0, :, 0], [2, 0, 3])
    np.testing.assert_array_equal(y2[1, 1, :, 0], [5, 5, 4])
    y3 = run1(make_layer("ArgMax", "argmax_param { axis: 1 top_k: 2 }"), x)
    assert y3.shape == (2, 2, 1, 1)
    np.testing.assert_array_equal(y3[:, :, 0, 0], [[2, 0], [3, 1]])
    y4 = run1(make_layer("ArgMax", "argmax_param { axis: 1 out_max_val: true }"), x)
    np.testing.assert_array_equal(y4.ravel(), [3, 5])
    assert run1(make_layer("ArgMax"), np.zeros((3, 5))).shape == (3, 1, 1)


# ---------------------------------------------------------------- whole nets


def test_run_net_in_place_values_and_inputs_by_caffe_name():
    def layer(name, type_, bottoms, tops, text="", blobs=(), caffe_tops=None):
        lay = make_layer(type_, text, blobs, name=name)
        lay.bottoms, lay.tops = tuple(bottoms), tuple(tops)
        lay.caffe_tops = tuple(caffe_tops or tops)
        return lay

    net = SimpleNamespace(
        layers=(
            layer("data", "Input", [], ["data"]),
            layer("bn", "BatchNorm", ["data"], ["data@1"], blobs=([1.0], [4.0], [1.0]),
                  caffe_tops=["data"]),
            layer("relu", "ReLU", ["data@1"], ["data@2"], caffe_tops=["data"]),
            layer("pow", "Power", ["data"], ["sq"], "power_param { power: 2 }"),
        )
    )  # fmt: skip
    x = np.array([-1.0, 3.0]).reshape(1, 1, 2, 1)
    vals = run_net(net, {"data": x})
    assert set(vals) == {"data", "data@1", "data@2", "sq"}
    np.testing.assert_allclose(vals["data@2"].ravel(), [0.0, 1.0], atol=1e-5)
    np.testing.assert_array_equal(vals["sq"].ravel(), [1.0, 9.0])  # reads the original value


# ---------------------------------------------------------------- released definitions

_FAST = [
    "senet/SE-BN-Inception.prototxt",  # two-bottom Scale axis 0, Reshape 0 0, Concat, AVE pad
    "zoo/densenet121_deploy.prototxt",  # fork field ceil_mode: false
    "zoo/squeezenet_v1.1_deploy.prototxt",  # CEIL pooling on odd sizes
]
_SLOW = [
    "senet/SE-ResNet-50.prototxt",
    "senet/SE-ResNeXt-50.prototxt",
    "senet/SE-ResNet-101.prototxt",
    "senet/SE-ResNet-152.prototxt",
    "senet/SE-ResNeXt-101.prototxt",
    "senet/SENet-154.prototxt",
    "senet/nsfw_deploy.prototxt",
    "zoo/mobilenet_v1_deploy.prototxt",
    "zoo/mobilenet_v2_deploy.prototxt",
    "zoo/squeezenet_v1.0_deploy.prototxt",
    "zoo/resnet50_kaiming_deploy.prototxt",
    "zoo/resnet152_kaiming_deploy.prototxt",
]


def _calibrated_run(net: Any, seed: int = 0) -> tuple[dict[str, tuple], dict[str, np.ndarray]]:
    """Run `net` (batch 1) through the reference, drawing seeded weights from each layer's
    param_shapes as it goes; BatchNorm gets its input's statistics times a factor 0.999."""
    r = rng(seed)
    feed = {n: r.standard_normal((1, *s[1:])) for n, s in net.inputs.items()}
    vals: dict[str, np.ndarray] = {}
    weights: dict[str, tuple] = {}
    for layer in net.layers:
        if layer.type == "Input":
            outs = run_layer(layer, [feed[c] for c in layer.caffe_tops])
        else:
            ins = [vals[b] for b in layer.bottoms]
            blobs: list[Any] = []
            if layer.type == "BatchNorm":
                red = tuple(i for i in range(ins[0].ndim) if i != 1)
                f = 0.999
                blobs = [ins[0].mean(axis=red) * f, ins[0].var(axis=red) * f, [f]]
            else:
                for i, shape in enumerate(layer.param_shapes):
                    if i == 0 and layer.type in ("Convolution", "InnerProduct"):
                        blobs.append(r.standard_normal(shape) / np.sqrt(np.prod(shape[1:])))
                    elif i == 0 and layer.type == "Scale":
                        blobs.append(r.uniform(0.5, 1.5, shape))
                    else:
                        blobs.append(r.standard_normal(shape) * 0.1)
            arrays = tuple(np.asarray(b, dtype=np.float32) for b in blobs)
            lay = SimpleNamespace(name=layer.name, type=layer.type, param=layer.param, blobs=arrays)
            weights[layer.name] = lay.blobs
            outs = run_layer(lay, ins)
        for top, value in zip(layer.tops, outs, strict=True):
            vals[top] = value
    return weights, vals


@pytest.mark.parametrize("rel", _FAST + [pytest.param(p, marks=pytest.mark.slow) for p in _SLOW])
def test_released_definitions_run_with_the_ir_shapes(shared_dir, rel):
    """Every layer of the released definitions runs, giving the shapes the IR infers."""
    ir = pytest.importorskip("caffe_bridge.ir")
    path = shared_dir / rel
    net = ir.load_net(str(path))
    assert {layer.type for layer in net.layers} <= reference.SUPPORTED
    weights, vals = _calibrated_run(net)
    for name, value in vals.items():
        assert value.shape[1:] == tuple(net.blobs[name].shape)[1:], name
        assert np.isfinite(value).all(), name
    # run_net over the IR with the same weights reproduces the layer-by-layer run
    net_w = ir.with_weights(net, weights)
    feed = {n: vals[n] for n in net.inputs}
    out = run_net(net_w, feed)
    for name in net.outputs:
        np.testing.assert_array_equal(out[name], vals[name])
