"""opencv_forward reads the later tops of a multi-top layer (a Slice's second top) correctly:
OpenCV keeps only output 0 of a layer asked for by name, so the other outputs came back as
memory later layers had reused (ShuffleNet v2's second Slice tops were ~100% off)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from caffe_bridge.ir import load_net, with_weights
from caffe_bridge.opencv_reference import opencv_forward
from caffe_bridge.random_weights import random_inputs, random_weights
from tests import reference

NET = """name: "slices"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 6 dim: 6 } } }
layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { slice_point: 2 } }
layer { name: "cb" type: "Convolution" bottom: "b" top: "cb"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "rb" type: "ReLU" bottom: "cb" top: "rb" }
layer { name: "ca" type: "Convolution" bottom: "a" top: "ca"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "cat" type: "Concat" bottom: "ca" bottom: "rb" top: "out" }
"""


@pytest.mark.skipif(importlib.util.find_spec("cv2") is None, reason="OpenCV is not installed")
def test_second_slice_top_is_what_opencv_computed(tmp_path: Path) -> None:
    path = tmp_path / "slices.prototxt"
    path.write_text(NET, encoding="utf-8")
    net = load_net(path)
    weights = random_weights(net, 0)
    net = with_weights(net, weights)
    feeds = random_inputs(net, 1)
    want = reference.run_net(net, feeds)
    got = opencv_forward(path, weights, feeds, ["a", "b", "cb", "out"])
    for blob in ("a", "b", "cb", "out"):
        np.testing.assert_allclose(got[blob], want[net.value(blob)], rtol=1e-5, atol=1e-6)
