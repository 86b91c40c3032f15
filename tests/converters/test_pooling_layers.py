"""Pooling converter against the numpy Caffe reference: output sizes (CEIL/FLOOR, clip rule,
stride default 1), the AVE divisor with padding and overhang, pad > kernel/2, global pooling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from caffe_bridge.build import build_module
from caffe_bridge.converters import REGISTRY
from caffe_bridge.converters.pooling import PaddedAvgPool2d, PaddedMaxPool2d
from caffe_bridge.errors import UnsupportedLayerError
from tests import reference
from tests.helpers.layer_check import check_layer, net_from_text

COVERS = {"Pooling"}

def pool_net(shape: tuple[int, ...], param: str) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f"""
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param {{ {param} }} }}
"""


def pool_module(gm: torch.fx.GraphModule) -> nn.Module:
    return gm.get_submodule("pool")


# id, input shape, pooling_param, Caffe's output H x W, module class the converter must pick
CASES = [
    ("max_112_k3s2_ceil_gives_56", (1, 2, 112, 112), "pool: MAX kernel_size: 3 stride: 2",
     (56, 56), nn.MaxPool2d),
    ("ave_k3s2_pad1_overhang", (2, 3, 10, 11), "pool: AVE kernel_size: 3 stride: 2 pad: 1",
     (6, 6), nn.AvgPool2d),
    ("ave_k3s1_pad1_se_bn_inception", (2, 3, 7, 6), "pool: AVE kernel_size: 3 stride: 1 pad: 1",
     (7, 6), nn.AvgPool2d),
    ("max_k3s2_pad1", (2, 3, 9, 10), "pool: MAX kernel_size: 3 stride: 2 pad: 1",
     (5, 6), nn.MaxPool2d),
    ("max_pad2_k3_over_half", (2, 3, 9, 10), "pool: MAX kernel_size: 3 stride: 2 pad: 2",
     (6, 6), PaddedMaxPool2d),
    ("ave_pad2_k3_over_half", (2, 3, 9, 10), "pool: AVE kernel_size: 3 stride: 2 pad: 2",
     (6, 6), PaddedAvgPool2d),
    ("ave_pad4_k5_s3", (2, 2, 11, 8), "pool: AVE kernel_size: 5 stride: 3 pad: 4",
     (5, 4), PaddedAvgPool2d),
    ("max_pad4_k5_s3", (2, 2, 11, 8), "pool: MAX kernel_size: 5 stride: 3 pad: 4",
     (5, 4), PaddedMaxPool2d),
    ("ave_pad_h2_w0_k3", (2, 2, 8, 8), "pool: AVE kernel_size: 3 stride: 2 pad_h: 2 pad_w: 0",
     (5, 4), PaddedAvgPool2d),
    ("floor_via_round_mode", (1, 2, 112, 112),
     "pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR", (55, 55), nn.MaxPool2d),
    ("floor_via_ceil_mode_false", (1, 2, 112, 112),
     "pool: MAX kernel_size: 3 stride: 2 ceil_mode: false", (55, 55), nn.MaxPool2d),
    ("ceil_via_ceil_mode_true", (1, 2, 112, 112),
     "pool: AVE kernel_size: 3 stride: 2 ceil_mode: true", (56, 56), nn.AvgPool2d),
    ("floor_ave_pad1", (2, 3, 10, 10),
     "pool: AVE kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", (5, 5), nn.AvgPool2d),
    ("clip_rule_drops_window_in_pad", (2, 3, 5, 5), "pool: AVE kernel_size: 2 stride: 2 pad: 1",
     (3, 3), nn.AvgPool2d),
    ("clip_rule_max", (2, 3, 5, 5), "pool: MAX kernel_size: 2 stride: 2 pad: 1",
     (3, 3), nn.MaxPool2d),
    ("global_max_non_square", (2, 3, 5, 7), "pool: MAX global_pooling: true",
     (1, 1), nn.AdaptiveMaxPool2d),
    ("global_ave_non_square", (2, 3, 5, 7), "pool: AVE global_pooling: true",
     (1, 1), nn.AdaptiveAvgPool2d),
    ("stride_default_1_max", (2, 3, 6, 7), "pool: MAX kernel_size: 3", (4, 5), nn.MaxPool2d),
    ("stride_default_1_ave", (2, 3, 6, 7), "pool: AVE kernel_size: 2", (5, 6), nn.AvgPool2d),
    ("kernel_stride_pad_hw", (2, 3, 9, 8),
     "pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1",
     (5, 9), nn.AvgPool2d),
    ("kernel_hw_max_stride_h_only", (2, 3, 9, 8),
     "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 3", (3, 7), nn.MaxPool2d),
]


@pytest.mark.parametrize(("shape", "param", "out_hw", "kind"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pooling_matches_reference(shape, param, out_hw, kind):
    text = pool_net(shape, param)
    check_layer(text)  # also asserts the output shape is Caffe's
    gm = build_module(net_from_text(text))
    assert type(pool_module(gm)) is kind
    x = torch.randn(*shape)
    assert tuple(gm(x).shape) == (*shape[:2], *out_hw)


def test_naive_pytorch_mapping_gives_55_not_56():
    """The case the 112 -> 56 test guards: PyTorch's floor default loses a row and a column."""
    x = torch.randn(1, 2, 112, 112)
    assert tuple(nn.MaxPool2d(3, 2)(x).shape[2:]) == (55, 55)
    gm = build_module(net_from_text(pool_net((1, 2, 112, 112), "pool: MAX kernel_size: 3 "
                                             "stride: 2")))
    assert tuple(gm(x).shape[2:]) == (56, 56)


def test_ave_divisor_counts_padding_not_overhang():
    """AVE 3x3/2 pad 1 on ones(5x5) gives 3x3; the corner windows hold 4 image cells and 5
    padding cells, all 9 counted: 4/9 (PyTorch's count_include_pad=False gives 1)."""
    text = pool_net((1, 1, 5, 5), "pool: AVE kernel_size: 3 stride: 2 pad: 1")
    check_layer(text)
    gm = build_module(net_from_text(text))
    y = gm(torch.ones(1, 1, 5, 5))[0, 0]
    assert torch.allclose(y[0, 0], torch.tensor(4 / 9))
    assert torch.allclose(y[1, 1], torch.tensor(1.0))
    assert torch.allclose(y[2, 2], torch.tensor(4 / 9))
    naive = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)(torch.ones(1, 1, 5, 5))
    assert torch.allclose(naive, torch.ones_like(naive))  # exclude-pad gets every corner wrong


def test_overhang_divisor_explicit_pad():
    """pad 3 > k/2 (k 5, stride 3) on 4x4: windows start at -3, 0, 3 and end at
    min(start + 5, H + p = 7), so the last one counts 4 rows, not 5 (overhang), and the first
    counts its 3 padding rows."""
    text = pool_net((1, 1, 4, 4), "pool: AVE kernel_size: 5 stride: 3 pad: 3")
    check_layer(text)
    gm = build_module(net_from_text(text))
    assert isinstance(pool_module(gm), PaddedAvgPool2d)
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    y = gm(x)[0, 0]
    want = reference.run_net(net_from_text(text), {"data": x.numpy()})["pool"]
    assert want.shape == (1, 1, 3, 3)
    np.testing.assert_allclose(y.numpy(), want[0, 0], rtol=1e-6)
    assert float(y[0, 0]) == pytest.approx((0 + 1 + 4 + 5) / 25)
    assert float(y[2, 2]) == pytest.approx(15 / 16)


def test_empty_trailing_window_max_is_minus_flt_max():
    """pad 0 and stride > kernel: Caffe keeps a window starting past the image (PyTorch drops
    it); Caffe's running maximum then stays at -FLT_MAX."""
    text = pool_net((1, 2, 4, 4), "pool: MAX kernel_size: 1 stride: 2")
    gm = build_module(net_from_text(text))
    assert isinstance(pool_module(gm), PaddedMaxPool2d)
    x = torch.randn(1, 2, 4, 4)
    y = gm(x)
    want = reference.run_net(net_from_text(text), {"data": x.numpy()})["pool"]
    assert y.shape == (1, 2, 3, 3) == want.shape
    np.testing.assert_array_equal(y.numpy(), want.astype(np.float32))
    assert float(y[0, 0, 2, 2]) == -float(np.finfo(np.float32).max)


def test_stochastic_is_unsupported():
    net = net_from_text(pool_net((1, 2, 6, 6), "pool: STOCHASTIC kernel_size: 2 stride: 2"))
    with pytest.raises(UnsupportedLayerError, match="STOCHASTIC") as err:
        build_module(net)
    assert err.value.layer == "pool"


def test_explicit_modules_trace_and_batch():
    """Padded modules survive fx tracing of the whole GraphModule and another batch size."""
    text = """
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 9 dim: 10 } } }
layer { name: "p1" type: "Pooling" bottom: "data" top: "p1"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 } }
layer { name: "pool" type: "Pooling" bottom: "p1" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 2 } }
"""
    check_layer(text)
    net = net_from_text(text)
    gm = build_module(net)
    traced = torch.fx.symbolic_trace(gm)
    x = torch.randn(5, 3, 9, 10)
    want = reference.run_net(net, {"data": x.numpy()})["pool"]
    np.testing.assert_allclose(traced(x).numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("round_mode", ["CEIL", "FLOOR"])
@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_pooling_geometry_sweep(pool, round_mode):
    """Every kernel 1-4, stride 1-3, pad 0..k-1 on sizes 1-7 (x size+1): whichever torch op the
    converter picks must give Caffe's size and values. With pad 0 and stride > kernel Caffe
    keeps a window past the image: -FLT_MAX for MAX, 0 / 0 = NaN for AVE."""
    rng = np.random.default_rng(7)
    failures, tried = [], 0
    for h, k, s, p in itertools.product(range(1, 8), range(1, 5), range(1, 4), range(4)):
        if p >= k or k > h + 2 * p:
            continue
        text = pool_net((1, 2, h, h + 1), f"pool: {pool} kernel_size: {k} stride: {s} pad: {p} "
                        f"round_mode: {round_mode}")
        net = net_from_text(text)
        x = rng.standard_normal((1, 2, h, h + 1)).astype(np.float32)
        want = reference.run_net(net, {"data": x})["pool"]
        got = REGISTRY.convert(net.layer("pool"), net)(torch.from_numpy(x)).numpy()
        tried += 1
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-6,
                                                               equal_nan=True):
            failures.append((h, k, s, p))
    assert tried > 150
    assert not failures, failures


DARKNET_TINY_POOL = """name: "Darkent2Caffe"
input: "data"
input_dim: 1
input_dim: 2
input_dim: 13
input_dim: 13
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { stride: 1 pool: MAX kernel_size: 2 pad: 0 } }
"""


def test_caffe_yolov3_fork_pooling_keeps_the_size() -> None:
    """Nets written by ChenYingpeng/caffe-yolov3's darknet converter (named "Darkent2Caffe")
    run on that fork's Pooling, which adds a window when kernel - stride is odd: YOLOv3-tiny's
    2x2/1 maxpool keeps 13x13 (BVLC's formula gives 12x12 and the net's later Concat fails).
    The extra window sees the last row/column only."""
    check_layer(DARKNET_TINY_POOL)
    gm = build_module(net_from_text(DARKNET_TINY_POOL))
    x = torch.arange(169.0).reshape(1, 1, 13, 13).expand(1, 2, 13, 13).contiguous()
    y = gm(x)
    assert tuple(y.shape) == (1, 2, 13, 13)
    assert float(y[0, 0, 12, 12]) == 168.0 and float(y[0, 0, 11, 12]) == 168.0
    bvlc = build_module(net_from_text(DARKNET_TINY_POOL.replace("Darkent2Caffe", "plain")))
    assert tuple(bvlc(x).shape) == (1, 2, 12, 12)
