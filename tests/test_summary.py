"""caffe2torch inspect's data: shapes, parameter counts, FLOPs convention, weight coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.ir import load_net
from caffe_bridge.random_weights import random_weights
from caffe_bridge.summary import check_weights, inspect_files, layer_flops, summarize

NET = """
name: "tiny"
input: "data"
input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 1 } }
layer { name: "gconv" type: "Convolution" bottom: "conv" top: "gconv"
  convolution_param { num_output: 4 kernel_size: 1 group: 2 bias_term: false } }
layer { name: "deconv" type: "Deconvolution" bottom: "gconv" top: "deconv"
  convolution_param { num_output: 6 kernel_size: 2 stride: 2 } }
layer { name: "bn" type: "BatchNorm" bottom: "deconv" top: "deconv" }
layer { name: "relu" type: "ReLU" bottom: "deconv" top: "deconv" }
layer { name: "fc" type: "InnerProduct" bottom: "deconv" top: "fc"
  inner_product_param { num_output: 5 } }
"""


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.prototxt"
    path.write_text(NET)
    return path


@pytest.mark.parametrize(
    ("layer", "flops"),
    [
        # 2 x (N * C_out * H_out * W_out) * (C_in / group * k * k)
        pytest.param("conv", 2 * (2 * 4 * 4 * 4) * (3 * 9), id="conv-stride2-pad1"),
        pytest.param("gconv", 2 * (2 * 4 * 4 * 4) * (2 * 1), id="grouped-1x1"),
        # 2 x (N * C_in * H_in * W_in) * (C_out / group * k * k)
        pytest.param("deconv", 2 * (2 * 4 * 4 * 4) * (6 * 4), id="deconv"),
        # 2 x N * K * num_output
        pytest.param("fc", 2 * 2 * (6 * 8 * 8) * 5, id="innerproduct"),
        pytest.param("bn", 0, id="batchnorm-counts-zero"),
        pytest.param("relu", 0, id="relu-counts-zero"),
    ],
)
def test_flops_convention(tiny: Path, layer: str, flops: int) -> None:
    net = load_net(tiny)
    assert layer_flops(net.layer(layer), net) == flops


def test_rows_params_and_totals(tiny: Path) -> None:
    summary = inspect_files(tiny)
    by_name = {r.name: r for r in summary.rows}
    assert by_name["conv"].params == 4 * 3 * 9 + 4
    assert by_name["gconv"].params == 4 * 2
    assert by_name["bn"].params == 6 + 6 + 1  # mean, variance, moving-average factor
    assert by_name["deconv"].top_shapes == ((2, 6, 8, 8),)
    assert by_name["relu"].tops == ("deconv",)  # the Caffe blob name, not the value name
    assert summary.total_params == sum(r.params for r in summary.rows)
    assert summary.total_flops == sum(r.flops for r in summary.rows)
    assert summary.inputs == {"data": (2, 3, 8, 8)}
    assert summary.outputs == ("fc",)
    assert summary.weights is None


def test_weights_report_complete(tiny: Path, tmp_path: Path) -> None:
    net = load_net(tiny)
    weights = random_weights(net)
    write_caffemodel(tmp_path / "w.caffemodel", weights)
    report = check_weights(net, tmp_path / "w.caffemodel")
    assert report.ok
    assert (report.unused, report.missing, report.mismatched) == ((), (), ())


def test_weights_report_unused_missing_mismatched(tiny: Path, tmp_path: Path) -> None:
    net = load_net(tiny)
    weights = random_weights(net)
    del weights["fc"]
    weights["old_fc"] = [np.zeros((5, 3), np.float32)]
    weights["conv"] = [np.zeros((4, 3, 5, 5), np.float32), weights["conv"][1]]
    weights["relu"] = [np.zeros(1, np.float32)]
    write_caffemodel(tmp_path / "w.caffemodel", weights)
    report = inspect_files(tiny, tmp_path / "w.caffemodel").weights
    assert report is not None and not report.ok
    assert report.unused == ("old_fc",)
    assert report.missing == ("fc",)
    assert [name for name, _ in report.mismatched] == ["conv", "relu"]
    assert "shape" in dict(report.mismatched)["conv"]


def test_se_resnet50_totals(shared_dir: Path) -> None:
    net = load_net(shared_dir / "senet" / "SE-ResNet-50.prototxt")
    summary = summarize(net)
    bn = [layer for layer in net.layers if layer.type == "BatchNorm"]
    channels = sum(layer.param_shapes[0][0] for layer in bn)
    # learnable elements (tests/models/test_senet.py) + BatchNorm mean/var/factor blobs
    assert summary.total_params == 28_088_024 + 2 * channels + len(bn)
    # SE-ResNet-50 is quoted at ~3.86 G multiply-accumulates
    assert 2 * 3.8e9 < summary.total_flops < 2 * 3.9e9


def test_partial_summary_names_a_refused_python_layer_by_its_registry_key(tmp_path: Path) -> None:
    """A Python layer refused by design (py-faster-rcnn's training-only AnchorTargetLayer) is
    listed as ``Python:<module>.<class>``, as an unregistered one is, not as ``Python``."""
    path = tmp_path / "train.prototxt"
    path.write_text("""
input: "data" input_shape { dim: 1 dim: 18 dim: 4 dim: 4 }
layer { name: "rpn-data" type: "Python" bottom: "data" top: "labels"
  python_param { module: "rpn.anchor_target_layer" layer: "AnchorTargetLayer" } }
layer { name: "other" type: "Python" bottom: "data" top: "other"
  python_param { module: "my.module" layer: "Invented" } }
""")
    summary = inspect_files(path)
    assert [(name, key) for name, key, _ in summary.unsupported] == [
        ("rpn-data", "Python:rpn.anchor_target_layer.AnchorTargetLayer"),
        ("other", "Python:my.module.Invented")]
    assert "is a training layer" in summary.unsupported[0][2]
