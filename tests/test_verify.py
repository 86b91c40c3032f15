"""Blob-by-blob verification: exit codes, the first divergent blob, references, hooks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.cli import main
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.ir import load_net
from caffe_bridge.random_weights import random_inputs, random_weights
from caffe_bridge.verify import compare, network_order, run_blobs, verify, verify_arrays

NET = """
name: "v"
input: "data" input_shape { dim: 1 dim: 3 dim: 10 dim: 10 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "sig" type: "Sigmoid" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
  inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
BLOBS = ["conv1", "pool1", "conv2", "fc", "prob"]


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    proto = tmp_path / "v.prototxt"
    proto.write_text(NET)
    net = load_net(proto)
    model = tmp_path / "v.caffemodel"
    write_caffemodel(model, random_weights(net))
    net = load_net(proto, model)
    inputs = random_inputs(net, seed=11)
    blobs = run_blobs(net, inputs, BLOBS)
    clean = tmp_path / "clean.npz"
    np.savez(clean, data=inputs["data"], **blobs)
    perturbed = dict(blobs)
    perturbed["conv2"] = blobs["conv2"] * np.float32(1.01)  # and everything after it agrees
    bad = tmp_path / "bad.npz"
    np.savez(bad, data=inputs["data"], **perturbed)
    return {"proto": proto, "model": model, "clean": clean, "bad": bad, "dir": tmp_path}


def test_clean_reference_exits_0(files: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["verify", str(files["proto"]), str(files["model"]),
                                    "--reference", str(files["clean"])])
    assert res.exit_code == 0, res.output
    assert "all 5 blobs within rtol" in res.output


def test_perturbed_blob_exits_1_and_is_named(files: dict[str, Path]) -> None:
    out = files["dir"] / "report.json"
    res = CliRunner().invoke(main, ["verify", str(files["proto"]), str(files["model"]),
                                    "--reference", str(files["bad"]), "--json", str(out)])
    assert res.exit_code == 1, res.output
    assert "first divergent blob: conv2 (layer sig)" in res.output
    report = json.loads(out.read_text())
    assert report["first_divergent"] == "conv2" and report["ok"] is False
    assert [b["blob"] for b in report["blobs"]] == BLOBS  # network order
    assert [b["blob"] for b in report["blobs"] if not b["ok"]] == ["conv2"]


def test_rtol_decides(files: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["verify", str(files["proto"]), str(files["model"]),
                                    "--reference", str(files["bad"]), "--rtol", "0.02"])
    assert res.exit_code == 0, res.output


def test_inplace_blob_is_compared_after_last_inplace_layer(files: dict[str, Path]) -> None:
    net = load_net(files["proto"], files["model"])
    inputs = random_inputs(net, seed=11)
    conv1 = run_blobs(net, inputs, ["conv1"])["conv1"]
    assert conv1.min() >= 0.0  # after relu1, as Caffe reports the blob


def test_input_from_file_and_missing_inputs(files: dict[str, Path]) -> None:
    with np.load(files["clean"]) as data:
        blobs = {k: data[k] for k in data.files if k != "data"}
        x = data["data"]
    no_input = files["dir"] / "noinput.npz"
    np.savez(no_input, **blobs)
    with pytest.raises(CaffeBridgeError, match="--input"):
        verify(files["proto"], files["model"], reference=str(no_input))
    np.save(files["dir"] / "x.npy", x)
    report = verify(files["proto"], files["model"], reference=str(no_input),
                    inputs=files["dir"] / "x.npy")
    assert report.ok and len(report.rows) == 5


def test_verify_arrays_hook_with_reference_blobs(files: dict[str, Path]) -> None:
    with np.load(files["bad"]) as data:
        ref = {k: data[k] for k in data.files}
    report = verify_arrays(files["proto"], files["model"], {"data": ref["data"]},
                           reference="mine", reference_blobs=ref)
    assert report.first_divergent is not None and report.first_divergent.blob == "conv2"
    assert report.reference == "mine"


def test_unknown_reference_blobs_are_skipped(files: dict[str, Path]) -> None:
    with np.load(files["clean"]) as data:
        ref = {k: data[k] for k in data.files}
    ref["conv1_conv1_0_split_0"] = np.zeros(3, np.float32)
    report = verify_arrays(files["proto"], files["model"], {"data": ref["data"]},
                           reference="x", reference_blobs=ref)
    assert report.ok and report.skipped == ("conv1_conv1_0_split_0",)


def test_opencv_reference(files: dict[str, Path]) -> None:
    pytest.importorskip("cv2")
    report = verify(files["proto"], files["model"], reference="opencv")
    assert [r.blob for r in report.rows] == BLOBS
    assert report.ok, [(r.blob, r.rel_err) for r in report.rows]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--reference", "caffe"], "pycaffe", id="no-pycaffe"),
        pytest.param(["--plot", "x.png"], "matplotlib", id="no-matplotlib"),
        pytest.param(["--device", "cuda"], "CUDA", id="no-cuda"),
        pytest.param(["--reference", "nothere.npz"], "no such reference", id="missing-npz"),
        pytest.param(["--input", "nothere.npy"], "no such input", id="missing-input"),
    ],
)
def test_clean_errors(files: dict[str, Path], args: list[str], message: str,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    if "caffe" in args:
        try:
            import caffe  # noqa: F401

            pytest.skip("pycaffe is installed")
        except ImportError:
            pass
    if "x.png" in args:
        try:
            import matplotlib  # noqa: F401

            pytest.skip("matplotlib is installed")
        except ImportError:
            pass
    if "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is available")
    monkeypatch.chdir(files["dir"])
    res = CliRunner().invoke(main, ["verify", "v.prototxt", "v.caffemodel", *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        pytest.param([1.0, 2.0], [1.0, 2.0], (0.0, 0.0, 1.0), id="equal"),
        pytest.param([0.0, 0.0], [0.0, 0.0], (0.0, 0.0, 1.0), id="zeros"),
        pytest.param([1.0, 0.0], [0.0, 1.0], (1.0, 1.0, 0.0), id="orthogonal"),
    ],
)
def test_compare_metrics(a: list[float], b: list[float], expected: tuple) -> None:
    assert compare(np.array(a), np.array(b)) == pytest.approx(expected)


def test_network_order(files: dict[str, Path]) -> None:
    net = load_net(files["proto"])
    order, unknown = network_order(net, ["prob", "data", "zzz", "pool1", "conv1"])
    assert order == ["conv1", "pool1", "prob"] and unknown == ["zzz"]


def _zoo(shared_dir: Path, name: str) -> Path:
    """A zoo definition (vendored in tests/fixtures/zoo)."""
    return shared_dir / "zoo" / name


@pytest.mark.parametrize("name", ["squeezenet_v1.0_deploy.prototxt",
                                  "squeezenet_v1.1_deploy.prototxt"])
def test_opencv_reference_does_not_cry_wolf_on_squeezenet(
        shared_dir: Path, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-place ReLUs feeding a Concat: with fusion on, OpenCV hands back stale data for the
    ReLU'd expand blobs (cosine 0 against ours, though its concat agrees). The reference runs
    with fusion off, so every blob is real and verify passes; --random-weights gives a
    prototxt-only user seeded weights that both sides read."""
    pytest.importorskip("cv2")
    proto = tmp_path / name
    proto.write_bytes(_zoo(shared_dir, name).read_bytes())
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["verify", name, "--random-weights", "-q"])
    assert res.exit_code == 0, res.output
    assert "DIVERGES" not in res.output and "all 39 blobs within rtol" in res.output


def test_opencv_fusion_trap_is_real(shared_dir: Path, tmp_path: Path) -> None:
    """The trap that fusion=False avoids: OpenCV's fused expand blob is not the Concat's slice."""
    pytest.importorskip("cv2")
    from caffe_bridge.opencv_reference import opencv_forward
    from caffe_bridge.verify import write_seeded_caffemodel

    proto = _zoo(shared_dir, "squeezenet_v1.1_deploy.prototxt")
    model = write_seeded_caffemodel(proto, tmp_path / "s.caffemodel", seed=0)
    x = random_inputs(load_net(proto), seed=1)
    want = ["fire2/expand1x1", "fire2/concat"]
    fused = opencv_forward(proto, model, x, want, fusion=True)
    real = opencv_forward(proto, model, x, want)
    c = real["fire2/expand1x1"].shape[1]
    np.testing.assert_array_equal(real["fire2/expand1x1"], real["fire2/concat"][:, :c])
    assert not np.allclose(fused["fire2/expand1x1"], fused["fire2/concat"][:, :c], atol=1e-3)


def test_verify_prototxt_only_hint_names_a_real_flag(files: dict[str, Path]) -> None:
    lone = files["dir"] / "lone.prototxt"
    lone.write_text(NET)
    res = CliRunner().invoke(main, ["verify", str(lone)])
    assert res.exit_code == 2
    assert "--random-weights" in res.stderr and "--no-weights" not in res.stderr
    ok = CliRunner().invoke(main, ["verify", str(lone), "--random-weights"])
    assert ok.exit_code == 0, ok.output
    both = CliRunner().invoke(main, ["verify", str(lone), str(files["model"]),
                                     "--random-weights"])
    assert both.exit_code == 2 and "not both" in both.stderr
