"""``convert_senet`` (``caffe2torch convert --as senet``): state dict + preset JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from caffe_bridge import CaffeBridgeError, PrototxtError
from caffe_bridge.models import se_bn_inception
from caffe_bridge.models import senet as S
from caffe_bridge.models.senet_caffe import from_caffe
from caffe_bridge.models.senet_export import convert_senet, load_senet, preset


def _input(fmt: str) -> torch.Tensor:
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    if fmt == "torchvision":
        mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
        return (x - mean) / std
    return x * 255 - (torch.tensor(S.CAFFE_MEAN_BGR).reshape(1, 3, 1, 1) if fmt == "caffe" else 0)


OPTIONS = [
    pytest.param("caffe", "caffe", id="caffe-order-caffe-input"),
    pytest.param("torchvision", "torchvision", id="torchvision-order-torchvision-input"),
    pytest.param("torchvision", "caffe", id="torchvision-order-caffe-input"),
    pytest.param("caffe", "rgb255", id="caffe-order-rgb255-input"),
]


@pytest.mark.parametrize(("order", "fmt"), OPTIONS)
def test_files_rebuild_the_model(
    order: str, fmt: str, caffe_files: tuple[Path, Path], tmp_path: Path
) -> None:
    proto, weights = caffe_files
    out = tmp_path / "out"
    paths = convert_senet(proto, weights, out, order, fmt, force=False)
    pth, js = out / "SE-BN-Inception.pth", out / "SE-BN-Inception.preset.json"
    assert paths == [pth, js]
    assert sorted(p.name for p in out.iterdir()) == sorted([pth.name, js.name])

    state = torch.load(pth, weights_only=True)
    fresh = se_bn_inception()
    fresh.load_state_dict(state, strict=True)  # the legacy key layout, nothing extra
    want = from_caffe(proto, weights, class_order=order, input_format=fmt)
    rebuilt = load_senet(js)
    x = _input(fmt)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), want(x), rtol=0, atol=0)

    obj = json.loads(js.read_text())
    assert obj["architecture"] == "SE-BN-Inception"
    assert obj["constructor"] == "caffe_bridge.models.se_bn_inception"
    assert obj["constructor_kwargs"] == {"num_classes": 1000}
    assert obj["state_dict"] == pth.name
    assert (obj["class_order"], obj["input_format"]) == (order, fmt)
    assert obj["preprocess"]["resize"] == 256 and obj["preprocess"]["crop"] == 224
    assert obj["wnids"][278 if order == "torchvision" else 0] == "n02119789"  # kit fox
    assert (obj["input_transform"] is None) == (fmt == "caffe")


@pytest.mark.parametrize(
    ("fmt", "channel_order", "mean", "std", "top"),
    [
        pytest.param("caffe", "BGR", [104, 117, 123], [1, 1, 1], 255, id="caffe"),
        pytest.param("torchvision", "RGB", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1,
                     id="torchvision"),
        pytest.param("bgr255", "BGR", [0, 0, 0], [1, 1, 1], 255, id="bgr255"),
    ],
)
def test_preset_preprocessing(
    fmt: str, channel_order: str, mean: list[float], std: list[float], top: int
) -> None:
    pre = preset("SE-ResNet-50", 1000, "caffe", fmt)["preprocess"]
    assert pre["channel_order"] == channel_order and pre["input_range"] == [0, top]
    assert pre["mean"] == pytest.approx(mean) and pre["std"] == pytest.approx(std)


def test_never_clobbers(caffe_files: tuple[Path, Path], tmp_path: Path) -> None:
    proto, weights = caffe_files
    pth, js = convert_senet(proto, weights, tmp_path, "caffe", "caffe", force=False)
    js.write_text("{}")
    with pytest.raises(CaffeBridgeError, match="already exists"):
        convert_senet(proto, weights, tmp_path, "torchvision", "caffe", force=False)
    assert js.read_text() == "{}"
    convert_senet(proto, weights, tmp_path, "torchvision", "caffe", force=True)
    assert json.loads(js.read_text())["class_order"] == "torchvision"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([pth.name, js.name])


@pytest.mark.parametrize(
    ("order", "fmt", "message"),
    [
        pytest.param("sorted", "caffe", "class order", id="bad-class-order"),
        pytest.param("caffe", "yuv", "input format", id="bad-input-format"),
    ],
)
def test_bad_options_fail_before_any_file(
    order: str, fmt: str, message: str, caffe_files: tuple[Path, Path], tmp_path: Path
) -> None:
    proto, weights = caffe_files
    with pytest.raises(CaffeBridgeError, match=message):
        convert_senet(proto, weights, tmp_path / "out", order, fmt, force=False)
    assert not (tmp_path / "out").exists()


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    proto = tmp_path / "tiny.prototxt"
    proto.write_text('layer { name: "data" type: "Input" top: "data" '
                     'input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
                     'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    with pytest.raises(PrototxtError, match="not one of the released SENet"):
        convert_senet(proto, None, tmp_path / "out", "caffe", "caffe", force=False)
    assert list((tmp_path / "out").iterdir()) == []  # no partial file, no temporary file
