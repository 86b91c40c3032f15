"""All released SENet and zoo definitions load with Caffe's shapes at every blob."""

from __future__ import annotations

import pytest

from caffe_bridge import load_net

SENETS = ["SE-ResNet-50", "SE-ResNet-101", "SE-ResNet-152", "SE-ResNeXt-50", "SE-ResNeXt-101",
          "SENet-154", "SE-BN-Inception"]


@pytest.mark.parametrize("name", SENETS)
def test_senet_shapes(shared_dir, name: str) -> None:  # noqa: ANN001
    net = load_net(shared_dir / "senet" / f"{name}.prototxt")
    assert dict(net.inputs) == {"data": (1, 3, 224, 224)}
    assert net.outputs == ("prob",)
    assert net.blobs["prob"].shape == (1, 1000)
    # every Axpy joins an N x C x 1 x 1 gate with two equal N x C x H x W maps
    axpys = [layer for layer in net.layers if layer.type == "Axpy"]
    assert len(axpys) == {"SE-ResNet-50": 16, "SE-ResNet-101": 33, "SE-ResNet-152": 50,
                          "SE-ResNeXt-50": 16, "SE-ResNeXt-101": 33, "SENet-154": 50,
                          "SE-BN-Inception": 0}[name] or name == "SE-BN-Inception"
    for layer in axpys:
        a, x, y = (net.blobs[b].shape for b in layer.bottoms)
        assert a == (*x[:2], 1, 1) and x == y


def test_se_resnet50_key_shapes(shared_dir) -> None:  # noqa: ANN001
    net = load_net(shared_dir / "senet" / "SE-ResNet-50.prototxt")
    shape = {b.caffe_name: b.shape for b in net.blobs.values()}
    assert shape["conv1/7x7_s2"] == (1, 64, 112, 112)
    assert net.blobs[net.value("pool1/3x3_s2")].shape == (1, 64, 56, 56)  # CEIL: floor gives 55
    assert shape["classifier"] == (1, 1000)
    conv = net.layer("conv1/7x7_s2")
    assert conv.param_shapes == ((64, 3, 7, 7),)  # bias_term: false in the release
    assert net.layer("conv1/7x7_s2/bn").param_shapes == ((64,), (64,), (1,))


@pytest.mark.parametrize(
    ("name", "inputs", "output"),
    [
        ("squeezenet_v1.0_deploy", (10, 3, 227, 227), (10, 1000, 1, 1)),
        ("squeezenet_v1.1_deploy", (10, 3, 227, 227), (10, 1000, 1, 1)),
        ("mobilenet_v1_deploy", (1, 3, 224, 224), (1, 1000, 1, 1)),
        ("mobilenet_v2_deploy", (1, 3, 224, 224), (1, 1000, 1, 1)),
        ("densenet121_deploy", (1, 3, 224, 224), (1, 1000, 1, 1)),
        ("resnet50_kaiming_deploy", (1, 3, 224, 224), (1, 1000)),
        ("resnet152_kaiming_deploy", (1, 3, 224, 224), (1, 1000)),
    ],
)
def test_zoo_shapes(shared_dir, name: str, inputs: tuple, output: tuple) -> None:  # noqa: ANN001
    net = load_net(shared_dir / "zoo" / f"{name}.prototxt")
    assert tuple(net.inputs.values()) == (inputs,)
    assert len(net.outputs) == 1
    assert net.blobs[net.outputs[0]].shape == output


def test_densenet_fork_floor_pooling(shared_dir) -> None:  # noqa: ANN001
    net = load_net(shared_dir / "zoo" / "densenet121_deploy.prototxt")
    pools = [layer for layer in net.layers if layer.type == "Pooling"
             and layer.param.pooling_param.HasField("ceil_mode")]
    assert pools, "the fork field ceil_mode is present in this definition"
    first = pools[0]
    (x,), (y,) = [net.blobs[b].shape for b in first.bottoms], [net.blobs[t].shape
                                                                 for t in first.tops]
    assert not first.param.pooling_param.ceil_mode
    assert y[2] == x[2] // 2  # FLOOR: 112 -> 56 with 3x3/2 pad 1, and 56 -> 28 with 2x2/2
