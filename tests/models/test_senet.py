"""The idiomatic SENet family: builds, shapes, legacy key layout, Caffe numerics, counts."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from caffe_bridge.models import senet as S

# Parameter counts implied by the released prototxts (tests/fixtures/senet/), derived during
# development by a throwaway parser that walks each definition, infers every blob shape
# (Caffe's conv/pooling formulas at the 1x3x224x224 Input) and lists each layer's parameter
# blobs. "tensors"/"elements" count the learnable blobs: Convolution weight (+ bias where
# bias_term is left at its default true: the SE 1x1 convs), Scale gamma + beta, InnerProduct
# weight + bias. Each BatchNorm layer adds mean + variance (+ the scale factor, folded away):
# "bn_layers" of them, whose mean/variance become BatchNorm2d running stats (buffers).
# (The SE-ResNet-50, SE-ResNeXt-50 and SENet-154 element counts also equal the published
# counts of Cadene's pretrainedmodels ports: 28,088,024 / 27,559,896 / 115,088,984.)
EXPECTED: dict[str, dict[str, int]] = {
    "SE-ResNet-50": {"tensors": 225, "elements": 28_088_024, "bn_layers": 53},
    "SE-ResNet-101": {"tensors": 446, "elements": 49_326_872, "bn_layers": 104},
    "SE-ResNet-152": {"tensors": 667, "elements": 66_821_848, "bn_layers": 155},
    "SE-ResNeXt-50": {"tensors": 225, "elements": 27_559_896, "bn_layers": 53},
    "SE-ResNeXt-101": {"tensors": 446, "elements": 48_955_416, "bn_layers": 104},
    "SENet-154": {"tensors": 673, "elements": 115_088_984, "bn_layers": 157},
    "SE-BN-Inception": {"tensors": 249, "elements": 11_931_622, "bn_layers": 69},
}

FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "SE-ResNet-50": S.se_resnet50,
    "SE-ResNet-101": S.se_resnet101,
    "SE-ResNet-152": S.se_resnet152,
    "SE-ResNeXt-50": S.se_resnext50_32x4d,
    "SE-ResNeXt-101": S.se_resnext101_32x4d,
    "SENet-154": S.senet154,
    "SE-BN-Inception": S.se_bn_inception,
}

_CACHE: dict[str, nn.Module] = {}


def model(name: str) -> nn.Module:
    """One eval-mode instance per variant for the whole module (building SENet-154 takes ~2 s)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = FACTORIES[name]().eval()
    return _CACHE[name]


@pytest.mark.parametrize("name", list(FACTORIES))
def test_builds_and_forward_shape(name: str) -> None:
    m = model(name)
    with torch.no_grad():
        y = m(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", list(FACTORIES))
def test_parameter_counts_match_prototxt(name: str) -> None:
    m = model(name)
    params = list(m.parameters())
    assert len(params) == EXPECTED[name]["tensors"]
    assert sum(p.numel() for p in params) == EXPECTED[name]["elements"]
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert len(bns) == EXPECTED[name]["bn_layers"]
    assert all(bn.eps == 1e-5 for bn in bns)  # Caffe's BatchNorm default; no prototxt sets eps


def test_num_classes() -> None:
    assert S.se_resnet50(num_classes=10).last_linear.out_features == 10
    assert S.se_bn_inception(num_classes=7).last_linear.out_features == 7


def test_legacy_key_layout_resnet() -> None:
    keys = set(model("SE-ResNet-50").state_dict())
    for k in [
        "layer0.conv1.weight",
        "layer0.bn1.weight",
        "layer0.bn1.bias",
        "layer0.bn1.running_mean",
        "layer0.bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.bn3.running_var",
        "layer1.0.se_module.fc1.weight",
        "layer1.0.se_module.fc1.bias",
        "layer1.0.se_module.fc2.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer4.2.conv3.weight",
        "last_linear.weight",
        "last_linear.bias",
    ]:
        assert k in keys, k
    assert "layer1.1.downsample.0.weight" not in keys
    assert "layer0.conv2.weight" not in keys
    sd = model("SE-ResNet-50").state_dict()
    assert sd["layer1.0.se_module.fc1.weight"].shape == (16, 256, 1, 1)  # a 1x1 conv, not Linear
    assert sd["layer4.0.se_module.fc2.weight"].shape == (2048, 128, 1, 1)
    assert sd["last_linear.weight"].shape == (1000, 2048)


def test_legacy_key_layout_senet154() -> None:
    m = model("SENet-154")
    sd = m.state_dict()
    assert sd["layer0.conv1.weight"].shape == (64, 3, 3, 3)
    assert sd["layer0.conv2.weight"].shape == (64, 64, 3, 3)
    assert sd["layer0.conv3.weight"].shape == (128, 64, 3, 3)
    assert sd["layer1.0.conv2.weight"].shape == (256, 2, 3, 3)  # 64 groups
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 128, 1, 1)
    assert sd["layer2.0.downsample.0.weight"].shape == (512, 256, 3, 3)
    assert isinstance(m.dropout, nn.Dropout) and m.dropout.p == 0.2
    assert model("SE-ResNet-50").dropout is None


def test_key_layout_bn_inception() -> None:
    sd = model("SE-BN-Inception").state_dict()
    assert sd["layer0.conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer0.conv2.weight"].shape == (64, 64, 1, 1)  # conv2/3x3_reduce
    assert sd["layer0.conv3.weight"].shape == (192, 64, 3, 3)  # conv2/3x3
    assert sd["layer1.0.branch1x1.conv.weight"].shape == (64, 192, 1, 1)  # inception_3a/1x1
    assert sd["layer1.0.branch3x3dbl_b.bn.running_var"].shape == (96,)
    assert sd["layer1.0.branch_pool_proj.conv.weight"].shape == (32, 192, 1, 1)
    assert sd["layer1.0.se_module.fc1.weight"].shape == (16, 256, 1, 1)
    assert sd["layer1.2.branch3x3.conv.weight"].shape == (160, 128, 3, 3)  # inception_3c/3x3
    assert sd["layer2.4.se_module.fc2.weight"].shape == (1056, 66, 1, 1)  # inception_4e_1x1_up
    assert sd["layer3.1.se_module.fc1.weight"].shape == (64, 1024, 1, 1)  # inception_5b_1x1_down
    assert sd["last_linear.weight"].shape == (1000, 1024)
    assert "layer1.2.branch1x1.conv.weight" not in sd  # reduction blocks have no 1x1 branch


# --- Caffe numerics -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["SE-ResNet-50", "SENet-154", "SE-BN-Inception"])
def test_stem_pool_ceil_112_to_56(name: str) -> None:
    """MAX 3x3/2 without pad rounds up in Caffe: 112 -> 56 (floor would give 55)."""
    m = model(name)
    pools = [x for x in m.layer0 if isinstance(x, nn.MaxPool2d)]
    assert pools and all(p.ceil_mode and p.padding == 0 for p in pools)
    with torch.no_grad():
        out = pools[0](torch.zeros(1, 1, 112, 112))
    assert out.shape[-2:] == (56, 56)


def test_stage_shapes() -> None:
    m = model("SE-ResNet-50")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        x = m.layer0(x)
        assert x.shape == (1, 64, 56, 56)
        for layer, shape in zip(
            [m.layer1, m.layer2, m.layer3, m.layer4],
            [(256, 56), (512, 28), (1024, 14), (2048, 7)],
            strict=True,
        ):
            x = layer(x)
            assert x.shape == (1, shape[0], shape[1], shape[1])
    mi = model("SE-BN-Inception")
    with torch.no_grad():
        y = mi.layer0(torch.randn(1, 3, 224, 224))
        assert y.shape == (1, 192, 28, 28)
        y = mi.layer1(y)
        assert y.shape == (1, 576, 14, 14)
        y = mi.layer2(y)
        assert y.shape == (1, 1056, 7, 7)
        y = mi.layer3(y)
        assert y.shape == (1, 1024, 7, 7)


def test_stride_placement() -> None:
    """SE-ResNet strides the first 1x1; SE-ResNeXt and SENet-154 stride the grouped 3x3."""
    for name in ["SE-ResNet-50", "SE-ResNet-101", "SE-ResNet-152"]:
        blk = model(name).layer2[0]
        assert blk.conv1.stride == (2, 2) and blk.conv2.stride == (1, 1), name
    for name in ["SE-ResNeXt-50", "SE-ResNeXt-101", "SENet-154"]:
        blk = model(name).layer2[0]
        assert blk.conv1.stride == (1, 1) and blk.conv2.stride == (2, 2), name
    assert model("SE-ResNeXt-50").layer1[0].conv2.groups == 32
    assert model("SENet-154").layer1[0].conv2.groups == 64


def test_head_is_ave_7x7_s1() -> None:
    for name in FACTORIES:
        pool = model(name).avg_pool
        assert isinstance(pool, nn.AvgPool2d), name
        assert pool.kernel_size == 7 and pool.stride == 1, name


def test_bottleneck_is_axpy_then_relu() -> None:
    """Block output = ReLU(Axpy(sigmoid gate, branch, shortcut)) = ReLU(a * X + Y)."""
    torch.manual_seed(1)
    blk = model("SE-ResNeXt-50").layer2[0]
    x = torch.randn(2, 256, 16, 16)
    with torch.no_grad():
        branch = blk.bn3(blk.conv3(blk.relu(blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(x))))))))
        se = blk.se_module
        a = torch.sigmoid(se.fc2(torch.relu(se.fc1(branch.mean((2, 3), keepdim=True)))))
        want = torch.relu(a * branch + blk.downsample(x))
        got = blk(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_inception_se_scale_has_no_residual() -> None:
    """Scale(axis 0) of the concat by the reshaped N x C gate; no shortcut, no ReLU after."""
    torch.manual_seed(2)
    blk = model("SE-BN-Inception").layer1[0]
    x = torch.randn(2, 192, 28, 28)
    with torch.no_grad():
        cat = torch.cat(blk._branches(x), 1)
        gate = blk.se_module.gate(cat).reshape(2, 256)  # Reshape dim: 0 dim: 0
        want = cat * gate[:, :, None, None]
        got = blk(x)
    torch.testing.assert_close(got, want)
    # the SE gate can only shrink (sigmoid < 1), and nothing clamps negatives (ReLU'd branches)
    assert (got >= 0).all()


def test_inception_pools() -> None:
    m = model("SE-BN-Inception")
    pool_3a = m.layer1[0].branch_pool
    assert isinstance(pool_3a, nn.AvgPool2d) and pool_3a.count_include_pad  # Caffe counts pad
    assert isinstance(m.layer3[1].branch_pool, nn.MaxPool2d)  # inception_5b/pool is MAX
    red = m.layer1[2].branch_pool
    assert isinstance(red, nn.MaxPool2d) and red.ceil_mode and red.stride == 2


# --- Against the released definitions (vendored in tests/fixtures/senet) -------------------------

FILES = {
    "SE-ResNet-50": "SE-ResNet-50.prototxt",
    "SE-ResNet-101": "SE-ResNet-101.prototxt",
    "SE-ResNet-152": "SE-ResNet-152.prototxt",
    "SE-ResNeXt-50": "SE-ResNeXt-50.prototxt",
    "SE-ResNeXt-101": "SE-ResNeXt-101.prototxt",
    "SENet-154": "SENet-154.prototxt",
    "SE-BN-Inception": "SE-BN-Inception.prototxt",
}


@pytest.mark.parametrize("name", list(FILES))
def test_shapes_equal_prototxt_param_shapes(name: str, shared_dir: Path) -> None:
    """Multiset of parameter shapes == the blob shapes the parser derives from the prototxt."""
    from caffe_bridge.ir import load_net

    net = load_net(shared_dir / "senet" / FILES[name])
    learnable: list[tuple[int, ...]] = []
    stats: list[tuple[int, ...]] = []
    for layer in net.layers:
        if layer.type == "BatchNorm":
            stats += list(layer.param_shapes[:2])
        else:
            learnable += list(layer.param_shapes)
    m = model(name)
    assert sorted(tuple(p.shape) for p in m.parameters()) == sorted(learnable)
    buffers = [
        tuple(b.shape) for k, b in m.named_buffers() if not k.endswith("num_batches_tracked")
    ]
    assert sorted(buffers) == sorted(stats)
    assert sum(math.prod(s) for s in learnable) == EXPECTED[name]["elements"]
