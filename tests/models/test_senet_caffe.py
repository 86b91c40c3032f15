"""from_caffe / to_caffe for the SENet family, against the released definitions (vendored)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from caffe_bridge import CaffeBridgeError, CaffemodelError, PrototxtError
from caffe_bridge.caffemodel import read_caffemodel, write_caffemodel
from caffe_bridge.ir import load_net
from caffe_bridge.models import senet as S
from caffe_bridge.models.senet_caffe import ARCHITECTURES, from_caffe, recognise, to_caffe
from caffe_bridge.numeric import rel_err
from caffe_bridge.prototxt import parse_prototxt
from tests import reference

FAST = ["SE-ResNet-50", "SE-BN-Inception"]


def released(shared_dir: Path, arch: str) -> Path:
    return shared_dir / "senet" / f"{arch}.prototxt"


def calibrated(arch: str, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """A seeded model with non-trivial affine/bias terms and BatchNorm stats of real activations.

    One train-mode pass with ``momentum=None`` stores each BatchNorm's batch statistics, so
    eval-mode activations stay O(1) through the whole depth and comparisons stay meaningful.
    """
    torch.manual_seed(seed)
    m = ARCHITECTURES[arch]()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = None
            mod.reset_running_stats()
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.normal_(mod.bias, std=0.1)
        elif isinstance(mod, nn.Conv2d | nn.Linear) and mod.bias is not None:
            nn.init.normal_(mod.bias, std=0.1)
    m.train()
    with torch.no_grad():
        m(torch.randn(2, 3, 224, 224) * scale)
    return m.eval()


def write(model: nn.Module, tmp_path: Path, stem: str = "net") -> tuple[Path, Path]:
    proto, weights = tmp_path / f"{stem}.prototxt", tmp_path / f"{stem}.caffemodel"
    to_caffe(model, proto, weights)
    return proto, weights


def caffe_input(seed: int = 0, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(np.float32)


# --- to_caffe writes the released layout ---------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_to_caffe_is_the_released_definition(arch: str, shared_dir: Path, tmp_path: Path) -> None:
    """Layer by layer: name, type, bottoms, tops and every param field equal the released file."""
    torch.manual_seed(0)
    proto, weights = write(ARCHITECTURES[arch](), tmp_path)
    ours = parse_prototxt(proto).net
    rel = parse_prototxt(released(shared_dir, arch)).net
    assert ours.name == rel.name
    assert [x.name for x in ours.layer] == [x.name for x in rel.layer]
    for a, b in zip(ours.layer, rel.layer, strict=True):
        assert (a.type, list(a.bottom), list(a.top)) == (b.type, list(b.bottom), list(b.top))
        assert a == b, f"layer {a.name!r}:\n{a}\nreleased:\n{b}"
    # the weights fit the released definition (load_net checks every blob's shape)
    net = load_net(released(shared_dir, arch), weights)
    assert not net.unused_weights and net.has_weights


# --- from_caffe: numerics ------------------------------------------------------------------------


def _with_bn_factor(weights: Path, out: Path, factor: float) -> None:
    """Rewrite a caffemodel with every BatchNorm storing (mean*f, var*f, f), as Caffe does."""
    blobs = read_caffemodel(weights)
    for name, b in blobs.items():
        if name.endswith("/bn"):
            blobs[name] = [b[0] * factor, b[1] * factor, np.array([factor], np.float32)]
    write_caffemodel(out, blobs, "x")


@pytest.mark.parametrize("arch", FAST)
def test_from_caffe_matches_numpy_reference(arch: str, shared_dir: Path, tmp_path: Path) -> None:
    """The converted model against the float64 numpy Caffe reference on the released file."""
    _, weights = write(calibrated(arch), tmp_path)
    _with_bn_factor(weights, tmp_path / "f.caffemodel", 0.9)
    proto = released(shared_dir, arch)
    model = from_caffe(proto, tmp_path / "f.caffemodel")
    net = load_net(proto, tmp_path / "f.caffemodel")
    x = caffe_input(1)
    want = reference.run_net(net, {"data": x})[net.value("classifier")]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert got.shape == (1, 1000)
    assert rel_err(got, want) < 1e-4
    assert got.argmax() == want.argmax()


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch", ["SE-ResNeXt-50", "SE-ResNet-101", "SE-ResNeXt-101", "SE-ResNet-152", "SENet-154"]
)
def test_from_caffe_matches_numpy_reference_big(
    arch: str, shared_dir: Path, tmp_path: Path
) -> None:
    test_from_caffe_matches_numpy_reference(arch, shared_dir, tmp_path)


@pytest.mark.parametrize("arch", ["SE-ResNeXt-50", "SE-BN-Inception"])
def test_round_trip(arch: str, tmp_path: Path) -> None:
    model = calibrated(arch, seed=3)
    proto, weights = write(model, tmp_path)
    back = from_caffe(proto, weights)
    assert type(back) is type(model)
    sd, sd2 = model.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys()
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(sd2[k], v, rtol=0, atol=0, msg=k)
    x = torch.from_numpy(caffe_input(2))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


def test_batchnorm_folding(shared_dir: Path, tmp_path: Path) -> None:
    """mean/f and var/f (f == 0 gives zeros, as in Caffe) and the definition's eps."""
    _, weights = write(calibrated("SE-ResNet-50"), tmp_path)
    blobs = read_caffemodel(weights)
    mean, var = blobs["conv1/7x7_s2/bn"][:2]
    blobs["conv1/7x7_s2/bn"] = [mean * 4, var * 4, np.array([4.0], np.float32)]
    blobs["conv2_1_3x3/bn"] = [
        np.ones(64, np.float32),
        np.ones(64, np.float32),
        np.zeros(1, np.float32),
    ]
    write_caffemodel(tmp_path / "b.caffemodel", blobs, "x")
    text = released(shared_dir, "SE-ResNet-50").read_text()
    text = text.replace(
        'name: "conv2_1_1x1_reduce/bn"\n  type: "BatchNorm"\n  bottom: '
        '"conv2_1_1x1_reduce"\n  top: "conv2_1_1x1_reduce"\n  batch_norm_param {\n'
        "    use_global_stats: true\n",
        'name: "conv2_1_1x1_reduce/bn"\n  type: '
        '"BatchNorm"\n  bottom: "conv2_1_1x1_reduce"\n  top: "conv2_1_1x1_reduce"\n'
        "  batch_norm_param {\n    use_global_stats: true\n    eps: 0.001\n",
        1,
    )
    assert "eps: 0.001" in text
    (tmp_path / "eps.prototxt").write_text(text)
    m = from_caffe(tmp_path / "eps.prototxt", tmp_path / "b.caffemodel")
    torch.testing.assert_close(m.layer0.bn1.running_mean, torch.tensor(mean))
    torch.testing.assert_close(m.layer0.bn1.running_var, torch.tensor(var))
    assert m.layer1[0].bn2.running_mean.abs().max() == 0
    assert m.layer1[0].bn2.running_var.abs().max() == 0
    assert m.layer1[0].bn1.eps == pytest.approx(1e-3)
    assert m.layer1[0].bn3.eps == pytest.approx(1e-5)


# --- from_caffe: recognition by structure --------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_recognised_from_structure_not_names(arch: str, shared_dir: Path, tmp_path: Path) -> None:
    """Every layer and blob renamed, file named after another net: still recognised."""
    text = released(shared_dir, arch).read_text()
    text = re.sub(r'(\b(?:name|bottom|top): ")', r"\1renamed_", text)
    other = "SENet-154" if arch != "SENet-154" else "SE-ResNet-50"
    path = tmp_path / f"{other}.prototxt"
    path.write_text(text)
    assert recognise(load_net(path)) == arch
    m = from_caffe(path)
    assert type(m) is type(ARCHITECTURES[arch]())


def test_parameter_free_names_may_differ(shared_dir: Path, tmp_path: Path) -> None:
    """Weights map by parameter-layer name; parameter-free layers renamed on either side pass."""
    model = calibrated("SE-ResNet-50", seed=4)
    _, weights = write(model, tmp_path)
    blobs: dict[str, list[np.ndarray]] = dict(read_caffemodel(weights))
    blobs["conv2_1_prob_old_name"] = []  # a blob-less record the definition lacks
    write_caffemodel(tmp_path / "w.caffemodel", blobs, "x")
    text = released(shared_dir, "SE-ResNet-50").read_text()
    text = re.sub(r'name: "(conv\d_\d+)_prob"', r'name: "\1/sigmoid"', text)
    text = text.replace('name: "pool5/7x7_s1"', 'name: "pool5"')
    (tmp_path / "p.prototxt").write_text(text)
    m = from_caffe(tmp_path / "p.prototxt", tmp_path / "w.caffemodel")
    x = torch.from_numpy(caffe_input(3))
    with torch.no_grad():
        torch.testing.assert_close(m(x), model(x), rtol=0, atol=0)


def test_unknown_architecture(shared_dir: Path) -> None:
    with pytest.raises(CaffeBridgeError, match="not one of the released SENet architectures"):
        from_caffe(shared_dir / "zoo" / "resnet50_kaiming_deploy.prototxt")


def test_block_removed_is_unknown(shared_dir: Path, tmp_path: Path) -> None:
    """SE-ResNet-50 without conv4_6: 3-4-5-3 blocks is none of the seven."""
    text = released(shared_dir, "SE-ResNet-50").read_text()
    blocks = text.split("layer {")
    kept = [b for b in blocks if not re.search(r'name: "conv4_6', b)]
    text = "layer {".join(kept).replace('bottom: "conv4_6"', 'bottom: "conv4_5"')
    (tmp_path / "x.prototxt").write_text(text)
    with pytest.raises(
        PrototxtError, match=r"SE residual blocks \(Axpy\) per stage: \(3, 4, 5, 3\)"
    ):
        from_caffe(tmp_path / "x.prototxt")


def test_moved_stride_is_rejected(shared_dir: Path, tmp_path: Path) -> None:
    """Stride on the 3x3 instead of the 1x1 (the torchvision way): same shapes, other numbers."""
    text = released(shared_dir, "SE-ResNet-50").read_text()

    def restride(name: str, old: int, new: int, t: str) -> str:
        head = rf'(name: "{re.escape(name)}"\n(?:(?!layer \{{).)*?stride: ){old}'
        pat = re.compile(head, re.S)
        t, n = pat.subn(rf"\g<1>{new}", t, count=1)
        assert n == 1
        return t

    text = restride("conv3_1_1x1_reduce", 2, 1, text)
    text = restride("conv3_1_3x3", 1, 2, text)
    (tmp_path / "x.prototxt").write_text(text)
    with pytest.raises(
        PrototxtError, match=r"conv3_1_1x1_reduce.*stride: \(1, 1\), released \(2, 2\)"
    ):
        from_caffe(tmp_path / "x.prototxt")


def test_floor_pooling_is_rejected(shared_dir: Path, tmp_path: Path) -> None:
    text = released(shared_dir, "SE-ResNeXt-50").read_text()
    text = text.replace("pool: MAX\n", "pool: MAX\n    round_mode: FLOOR\n", 1)
    (tmp_path / "x.prototxt").write_text(text)
    with pytest.raises(PrototxtError, match="pool1/3x3_s2"):
        from_caffe(tmp_path / "x.prototxt")


def test_weight_file_mismatches(shared_dir: Path, tmp_path: Path) -> None:
    _, weights = write(calibrated("SE-BN-Inception"), tmp_path)
    proto = released(shared_dir, "SE-BN-Inception")
    blobs = dict(read_caffemodel(weights))
    blobs["extra_fc"] = [np.zeros((2, 2), np.float32)]
    write_caffemodel(tmp_path / "extra.caffemodel", blobs, "x")
    with pytest.raises(CaffemodelError, match="extra_fc"):
        from_caffe(proto, tmp_path / "extra.caffemodel")
    del blobs["extra_fc"], blobs["inception_4a_1x1_up"]
    write_caffemodel(tmp_path / "missing.caffemodel", blobs, "x")
    with pytest.raises(CaffemodelError, match="inception_4a_1x1_up"):
        from_caffe(proto, tmp_path / "missing.caffemodel")


# --- options --------------------------------------------------------------------------------------


def test_class_order(shared_dir: Path, tmp_path: Path) -> None:
    model = calibrated("SE-BN-Inception", seed=5)
    proto, weights = write(model, tmp_path)
    order = list(range(999, -1, -1))
    m = from_caffe(proto, weights, class_order=order)
    x = torch.from_numpy(caffe_input(4))
    with torch.no_grad():
        torch.testing.assert_close(m(x), model(x)[:, order])
    with pytest.raises(CaffeBridgeError, match="class_order"):
        from_caffe(proto, weights, class_order="sorted")
    with pytest.raises(CaffeBridgeError, match="permutation"):
        from_caffe(proto, weights, class_order=[0] * 1000)


def test_input_formats(tmp_path: Path) -> None:
    model = calibrated("SE-BN-Inception", seed=6, scale=60.0)  # calibrated at pixel scale
    proto, weights = write(model, tmp_path)
    rgb01 = torch.rand(1, 3, 224, 224)
    bgr255 = rgb01.flip(1) * 255
    mean = torch.tensor(S.CAFFE_MEAN_BGR).reshape(1, 3, 1, 1)
    tv_mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    tv_std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    given = {
        "bgr255": bgr255,
        "rgb255": rgb01 * 255,
        "torchvision": (rgb01 - tv_mean) / tv_std,
    }
    with torch.no_grad():
        want = model(bgr255 - mean)
        for fmt, x in given.items():
            m = from_caffe(proto, weights, input_format=fmt)
            torch.testing.assert_close(m.input_transform(x), bgr255 - mean, rtol=0, atol=1e-4)
            assert rel_err(m(x).numpy(), want.double().numpy()) < 1e-4, fmt
            assert set(m.state_dict()) == set(model.state_dict())  # no extra keys
    with pytest.raises(CaffeBridgeError, match="input_format"):
        from_caffe(proto, weights, input_format="yuv")
    m.input_transform = S.CaffeInput("rgb255")
    with pytest.raises(CaffeBridgeError, match="input_transform"):
        to_caffe(m, tmp_path / "a.prototxt", tmp_path / "a.caffemodel")


def _tv_images(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform RGB [0, 1] images in torchvision layout, and the same images as Caffe input."""
    rgb01 = torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tv_mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    tv_std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    caffe = rgb01.flip(1) * 255 - torch.tensor(S.CAFFE_MEAN_BGR).reshape(1, 3, 1, 1)
    return (rgb01 - tv_mean) / tv_std, caffe


def _border(conv: nn.Conv2d, size: int = 224) -> torch.Tensor:
    """Output positions whose window reaches into the zero padding (conv1: rows/cols 0, 1, 111)."""
    ones = torch.ones(1, 1, size, size)
    taps = nn.functional.conv2d(ones, torch.ones(1, 1, *conv.kernel_size), stride=conv.stride,
                                padding=conv.padding)
    return (taps < conv.kernel_size[0] * conv.kernel_size[1])[0, 0]


def test_torchvision_input_is_exact_at_borders() -> None:
    """``input_format="torchvision"`` converts the image before conv1 pads it: exact everywhere.

    Folding mean/std into conv1 instead (W' = W * scale, b = W . shift) cannot be exact: conv1
    pads the *normalised* image with zeros, which stand for Caffe pixels ``shift`` = (-0.47,
    -0.72, +0.675) (torchvision mean * 255 - Caffe mean, B/G/R), not 0. The deviation is then
    exactly conv1 applied to that constant in the padding (checked below), zero in the interior;
    measured 4.9e-3 of conv1's max output at its 3-pixel border (and 1.8e-3 at the logits of a
    calibrated SE-ResNet-50), against 6.6e-7 for the separate stage.
    """
    torch.manual_seed(6)
    conv = S.se_resnet50().layer0.conv1
    stage = S.CaffeInput("torchvision")
    tv, caffe = _tv_images()
    border = _border(conv)
    assert border.sum() == 112 * 112 - 109 * 109  # rows/cols 0, 1 and 111
    with torch.no_grad():
        want = nn.functional.conv2d(caffe.double(), conv.weight.double(), stride=2, padding=3)
        exact = conv(stage(tv)).double()
        w = (conv.weight * stage.scale.reshape(1, 3, 1, 1)).flip(1)  # RGB input channels
        b = (conv.weight * stage.shift.reshape(1, 3, 1, 1)).sum((1, 2, 3))
        folded = nn.functional.conv2d(tv, w, b, stride=2, padding=3).double()
        # what folding adds: conv1 of an image that is 0 inside and `shift` in the padding
        shift_pad = torch.zeros(1, 3, 230, 230, dtype=torch.float64)
        shift_pad[..., :, :] = stage.shift.double().reshape(1, 3, 1, 1)
        shift_pad[..., 3:-3, 3:-3] = 0
        predicted = nn.functional.conv2d(shift_pad, conv.weight.double(), stride=2)
    peak = want.abs().max()
    err_exact = (exact - want).abs() / peak
    err_folded = (folded - want).abs() / peak
    assert err_exact[..., ~border].max() < 1e-5 and err_exact[..., border].max() < 1e-5
    assert err_folded[..., ~border].max() < 1e-5
    assert 1e-3 < err_folded[..., border].max() < 1e-2  # measured 4.9e-3
    torch.testing.assert_close(folded - want, predicted.expand_as(want), rtol=0,
                               atol=1e-5 * float(peak))


def test_transposed_inner_product(shared_dir: Path, tmp_path: Path) -> None:
    """InnerProduct ``transpose: true`` stores the weight as (K, N)."""
    model = calibrated("SE-BN-Inception", seed=7)
    _, weights = write(model, tmp_path)
    blobs = dict(read_caffemodel(weights))
    blobs["classifier"] = [np.ascontiguousarray(blobs["classifier"][0].T), blobs["classifier"][1]]
    write_caffemodel(tmp_path / "t.caffemodel", blobs, "x")
    text = released(shared_dir, "SE-BN-Inception").read_text()
    text = text.replace("num_output: 1000\n", "num_output: 1000\n    transpose: true\n")
    assert "transpose: true" in text
    (tmp_path / "t.prototxt").write_text(text)
    m = from_caffe(tmp_path / "t.prototxt", tmp_path / "t.caffemodel")
    x = torch.from_numpy(caffe_input(5))
    with torch.no_grad():
        torch.testing.assert_close(m(x), model(x), rtol=0, atol=0)


def test_lazy_exports() -> None:
    import caffe_bridge.models as models

    assert models.from_caffe is from_caffe and models.to_caffe is to_caffe
    with pytest.raises(AttributeError):
        _ = models.nothing_here


def test_to_caffe_rejects_other_models(tmp_path: Path) -> None:
    with pytest.raises(CaffeBridgeError, match="SENet"):
        to_caffe(nn.Linear(2, 2), tmp_path / "a.prototxt", tmp_path / "a.caffemodel")


def test_to_caffe_non_default_eps_and_classes(tmp_path: Path) -> None:
    model = S.se_resnet50(num_classes=10).eval()
    model.layer0.bn1.eps = 1e-3
    proto, weights = write(model, tmp_path)
    back = from_caffe(proto, weights)
    assert back.layer0.bn1.eps == pytest.approx(1e-3)
    assert back.layer1[0].bn1.eps == pytest.approx(1e-5)
    assert back.last_linear.out_features == 10
