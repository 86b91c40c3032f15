"""`caffe2torch verify --images`: real images through eval's preprocessing, checked per blob."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.cli import main
from caffe_bridge.random_weights import random_weights
from tests.helpers.layer_check import net_from_text

NET = """
name: "tiny"
input: "data" input_dim: 1 input_dim: 3 input_dim: 28 input_dim: 28
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(NET)
    model = tmp_path / "tiny.caffemodel"
    write_caffemodel(model, random_weights(net_from_text(NET), seed=3))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 60), (64, 33), (31, 31)]):
        cv2.imwrite(str(images / f"im{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return proto, model, images


def test_verify_images_agrees_with_opencv(tmp_path: Path) -> None:
    proto, model, images = _files(tmp_path)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["verify", str(proto), str(model), "--images", str(images),
                                       "--resize", "32", "--crop", "28", "--mean", "104,117,123",
                                       "--rtol", "1e-5", "--json", str(out)])
    assert result.exit_code == 0, result.output
    # conv (after its ReLU), pool, fc, prob on the exact model; prob of the default fast model
    assert "all 5 blobs within rtol" in result.output
    assert "prob         3x5" in result.output  # the three images, one batch
    assert "prob (fast)  3x5" in result.output
    import json

    report = json.loads(out.read_text())
    assert report["ok"] and max(row["rel_err"] for row in report["blobs"]) <= 1e-5


def test_verify_images_exact_compares_the_exact_model_only(tmp_path: Path) -> None:
    proto, model, images = _files(tmp_path)
    result = CliRunner().invoke(main, ["verify", str(proto), str(model), "--images", str(images),
                                       "--resize", "32", "--crop", "28", "--rtol", "1e-5",
                                       "--exact"])
    assert result.exit_code == 0, result.output
    assert "all 4 blobs within rtol" in result.output and "(fast)" not in result.output


def test_verify_images_and_input_are_exclusive(tmp_path: Path) -> None:
    proto, model, images = _files(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 28, 28), np.float32))
    result = CliRunner().invoke(main, ["verify", str(proto), str(model), "--images", str(images),
                                       "--input", str(tmp_path / "x.npy")])
    assert result.exit_code == 2
    assert "either --input or --images" in result.output


def test_verify_images_refuses_a_truncated_jpeg(tmp_path: Path) -> None:
    proto, model, images = _files(tmp_path)
    whole = tmp_path / "whole.jpg"
    cv2.imwrite(str(whole), np.full((40, 40, 3), 90, np.uint8))
    (images / "cut.jpg").write_bytes(whole.read_bytes()[:300])
    result = CliRunner().invoke(main, ["verify", str(proto), str(model), "--images", str(images),
                                       "--resize", "32", "--crop", "28"])
    assert result.exit_code == 2, result.output
    assert "truncated image" in result.stderr and "cut.jpg" in result.stderr
