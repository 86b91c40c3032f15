"""``caffe_bridge.opencv_reference.opencv_forward``: trap corrections, blob addressing, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.ir import load_net
from caffe_bridge.opencv_reference import opencv_definition, opencv_forward
from caffe_bridge.prototxt import parse_prototxt_text

pytest.importorskip("cv2")

FIXTURES = Path(__file__).resolve().parent / "fixtures"

AXPY_NET = """name: "axpy"
layer { name: "data" type: "Input" top: "x" top: "a"
        input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 }
                      shape { dim: 1 dim: 3 dim: 1 dim: 1 } } }
layer { name: "branch" type: "Convolution" bottom: "x" top: "branch"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "fuse" type: "Axpy" bottom: "a" bottom: "branch" bottom: "x" top: "out" }
"""

# Addressing: a convolution whose name differs from its top (OpenCV renames those), dots in
# names, a two-top Slice whose second top is not overwritten, and an in-place ReLU.
ADDRESSING_NET = """name: "addressing"
input: "data"
input_shape { dim: 1 dim: 4 dim: 3 dim: 3 }
layer { name: "conv.a" type: "Convolution" bottom: "data" top: "feat.1"
        convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "relu.a" type: "ReLU" bottom: "feat.1" top: "feat.1" }
layer { name: "split" type: "Slice" bottom: "feat.1" top: "s0" top: "s1"
        slice_param { axis: 1 slice_point: 2 } }
layer { name: "cat" type: "Concat" bottom: "s1" bottom: "s0" top: "out" }
"""


def _write(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _conv_weights(rng: np.random.Generator, out: int, cin: int) -> list[np.ndarray]:
    return [rng.standard_normal((out, cin, 1, 1)).astype(np.float32),
            rng.standard_normal(out).astype(np.float32)]


def test_axpy_bottoms_swapped_through_the_schema(tmp_path: Path) -> None:
    text = opencv_definition(_write(tmp_path, AXPY_NET))
    assert text is not None
    net = parse_prototxt_text(text).net
    fuse = [layer for layer in net.layer if layer.type == "Axpy"][0]
    assert list(fuse.bottom) == ["a", "x", "branch"]
    assert opencv_definition(_write(tmp_path, AXPY_NET), fix_axpy=False) is None


def test_axpy_is_a_times_branch_plus_shortcut(tmp_path: Path) -> None:
    """SENet's Axpy: out = a * bottom[1] + bottom[2]; OpenCV unswapped scales the shortcut."""
    path = _write(tmp_path, AXPY_NET)
    rng = np.random.default_rng(0)
    w, b = _conv_weights(rng, 3, 3)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    a = rng.uniform(0.1, 0.9, (2, 3, 1, 1)).astype(np.float32)
    branch = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]
    feeds = {"x": x, "a": a}
    got = opencv_forward(path, {"branch": [w, b]}, feeds, ["out"])["out"]
    np.testing.assert_allclose(got, a * branch + x, rtol=1e-5, atol=1e-5)
    trap = opencv_forward(path, {"branch": [w, b]}, feeds, ["out"], fix_axpy=False)["out"]
    np.testing.assert_allclose(trap, a * x + branch, rtol=1e-5, atol=1e-5)


def test_blob_addressing_and_batch_loop(tmp_path: Path) -> None:
    path = _write(tmp_path, ADDRESSING_NET)
    rng = np.random.default_rng(1)
    w, b = _conv_weights(rng, 6, 4)
    x = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    got = opencv_forward(path, {"conv.a": [w, b]}, {"data": x},
                         ["data", "feat.1", "s0", "s1", "out"])
    feat = np.maximum(np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None], 0)
    np.testing.assert_array_equal(got["data"], x)
    np.testing.assert_allclose(got["feat.1"], feat, rtol=1e-5, atol=1e-5)  # after the ReLU
    np.testing.assert_array_equal(got["s0"], got["feat.1"][:, :2])
    np.testing.assert_array_equal(got["s1"], got["feat.1"][:, 2:])
    np.testing.assert_array_equal(got["out"], np.concatenate([got["s1"], got["s0"]], axis=1))
    default = opencv_forward(path, {"conv.a": [w, b]}, {"data": x})
    assert list(default) == ["out"]


def test_caffemodel_path_accepted(tmp_path: Path) -> None:
    from caffe_bridge.caffemodel import write_caffemodel

    path = _write(tmp_path, ADDRESSING_NET)
    rng = np.random.default_rng(2)
    weights = {"conv.a": _conv_weights(rng, 6, 4)}
    write_caffemodel(tmp_path / "w.caffemodel", weights)
    x = {"data": rng.standard_normal((1, 4, 3, 3)).astype(np.float32)}
    from_file = opencv_forward(path, tmp_path / "w.caffemodel", x)
    np.testing.assert_array_equal(from_file["out"], opencv_forward(path, weights, x)["out"])


def test_train_phase_layers_dropped_for_opencv() -> None:
    """OpenCV ignores phase rules: the TRAIN-only Data layer's `data` top collides."""
    path = FIXTURES / "train_phase_layers.prototxt"
    text = opencv_definition(path)
    assert text is not None
    kept = [layer.name for layer in parse_prototxt_text(text).net.layer]
    assert kept == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "prob"]
    net = load_net(path)
    weights = {layer.name: [np.zeros(s, np.float32) for s in layer.param_shapes]
               for layer in net.layers if layer.param_shapes}
    feeds = {"data": np.zeros((1, 1, 28, 28), np.float32)}
    assert opencv_forward(path, weights, feeds)["prob"].shape == (1, 10)
    with pytest.raises(CaffeBridgeError, match="Duplicate blobs"):
        opencv_forward(path, weights, feeds, test_phase=False)


def test_rejected_layer_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name: "u"\ninput: "data"\ninput_shape { dim: 1 dim: 2 dim: 3 '
                            'dim: 3 }\nlayer { name: "weird" type: "FooBar" bottom: "data" '
                            'top: "y" }\n')
    with pytest.raises(CaffeBridgeError, match="FooBar") as info:
        opencv_forward(path, {"x": [np.zeros(1, np.float32)]},
                       {"data": np.zeros((1, 2, 3, 3), np.float32)})
    assert info.value.layer == "weird"
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("blobs", "inputs", "match"),
    [
        pytest.param(["nope"], {"data": np.zeros((1, 4, 3, 3), np.float32)}, "no blob",
                     id="unknown-blob"),
        pytest.param(None, {}, "no inputs", id="no-inputs"),
        pytest.param(None, {"data": np.float32(1.0)}, "batch axis", id="scalar-input"),
    ],
)
def test_bad_requests(tmp_path: Path, blobs: list[str] | None, inputs: dict[str, np.ndarray],
                      match: str) -> None:
    path = _write(tmp_path, ADDRESSING_NET)
    weights = {"conv.a": _conv_weights(np.random.default_rng(3), 6, 4)}
    with pytest.raises(CaffeBridgeError, match=match):
        opencv_forward(path, weights, inputs, blobs)


def test_missing_cv2_is_a_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    with pytest.raises(CaffeBridgeError, match="OpenCV"):
        opencv_forward(FIXTURES / "caffenet_v1.prototxt", {}, {})
