"""Whole nets with seeded weights, EVERY blob against OpenCV's Caffe importer (fusion and
Winograd off) and against the float64 numpy reference:

* YOLOv3 and YOLOv4 as written by ChenYingpeng/caffe-yolov3's darknet converter (net name
  ``Darkent2Caffe``): leaky ReLU, residual Eltwise, route Concats, nearest ``Upsample``; YOLOv4
  adds ``Mish`` and the SPP max-pools (5/9/13, stride 1).
* richzhang/colorization v2 (``LtoAB``): dilated convolutions, BatchNorm without Scale, a
  Deconvolution, the 313-bin Softmax after a Scale by 2.606.

The copies declare a smaller input (YOLO: 128 x 128, the fixed strides allow any multiple of 32;
colorization: 64 x 64, a multiple of 8) to stay fast; the files in tests/fixtures/wild are
unchanged.

Departures of OpenCV (4.x) from the sources, each tested below:

* OpenCV's Caffe importer has no ``Upsample`` layer (``Can't create layer ... of type
  "Upsample"``). The nearest-neighbour Upsample of the YOLO ports (eric612/MobileNet-YOLO
  ``src/caffe/layers/upsample_layer.cpp``; ChenYingpeng/caffe-yolov3 ships only the GPU forward,
  ``caffe_layers/upsample_layer/upsample_layer.cu``, the same map):
  ``top[c, y, x] = bottom[c, y // s, x // s]``. OpenCV is
  handed a copy where each one is a depthwise Deconvolution (group = channels, kernel = stride =
  s, no bias) with weights 1: every output pixel is exactly one input pixel times 1.0, the same
  function with no rounding. The Upsample blobs themselves are compared like every other.
* ChenYingpeng/caffe-yolov3's Pooling (``caffe_layers/pooling_layer/pooling_layer.cpp``) adds
  one to the output size when ``kernel - stride`` is odd; OpenCV uses BVLC's rule. YOLOv4's SPP
  pools have ``kernel - stride`` = 4, 8, 12, so both rules give the same size: checked below.
* Mish (ChenYingpeng/caffe-yolov3 ``caffe_layers/mish_layer/mish_layer.cpp``, as in
  foss-for-synopsys-dwc-arc-processors/synopsys-caffe: x tanh(softplus x), softplus = x above 20,
  exp(x) below -20): OpenCV's agrees to about 1e-7 relative from -30 to 30, nothing to correct
  (checked below).

Tolerance, as in tests/test_whole_net.py: ``max(1e-5, 3 * floor)`` per blob. The floor is our
float32 run against the same graph in float64, taken as the largest over the blob and every blob
computed before it (a blob inherits the rounding of its inputs; two correct float32
implementations that round differently upstream cannot agree better downstream). The figures are
printed with ``-s``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe_bridge.build import convert
from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.ir import Net, load_net, with_weights
from caffe_bridge.numeric import rel_err
from caffe_bridge.opencv_reference import opencv_forward
from caffe_bridge.prototxt import parse_prototxt
from caffe_bridge.random_weights import random_inputs, random_weights
from tests import reference
from tests.helpers.per_key import computed_once
from tests.helpers.wild import WILD

HAVE_CV2 = importlib.util.find_spec("cv2") is not None

REL_TOL = 1e-5
FLOOR_FACTOR = 3.0
CALIBRATION_BATCH = 8
NETS = {  # key: (file, reduced input side)
    "yolov3": ("yolov3_416_chenyingpeng.prototxt", 128),
    "yolov4": ("yolov4_chenyingpeng.prototxt", 128),
    "colorization": ("colorization_deploy_v2.prototxt", 64),
}


def smaller_copy(src: Path, side: int, tmp: Path) -> Path:
    """The definition with a side x side input (edited through our schema; name kept)."""
    net = parse_prototxt(src).net
    inputs = [lay.input_param.shape[0] for lay in net.layer if lay.type == "Input"]
    dims = inputs[0].dim if inputs else (net.input_shape[0].dim if net.input_shape
                                         else net.input_dim)
    dims[2] = dims[3] = side
    out = tmp / src.name
    out.write_text(text_format.MessageToString(net), encoding="utf-8")
    return out


def opencv_copy(path: Path, net: Net, tmp: Path, weights: dict[str, list[np.ndarray]]
                ) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """OpenCV's copy: each nearest Upsample as a depthwise all-ones Deconvolution (see the
    module docstring), with its weights added."""
    proto = parse_prototxt(path).net
    weights = dict(weights)
    for lay in proto.layer:
        if lay.type != "Upsample":
            continue
        assert len(lay.bottom) == 1, "only the YOLO ports' nearest Upsample is rewritten"
        (ours,) = [x for x in net.layers if x.name == lay.name]
        channels = net.blobs[ours.bottoms[0]].shape[1]
        scale = lay.upsample_param.scale
        lay.type = "Deconvolution"
        lay.ClearField("upsample_param")
        conv = lay.convolution_param
        conv.num_output = conv.group = channels
        conv.kernel_size.append(scale)
        conv.stride.append(scale)
        conv.bias_term = False
        weights[lay.name] = [np.ones((channels, 1, scale, scale), dtype=np.float32)]
    out = tmp / f"opencv_{path.name}"
    out.write_text(text_format.MessageToString(proto), encoding="utf-8")
    return out, weights


@dataclass
class Result:
    net: Net
    blobs: list[str]  # every Caffe blob the net computes, in order, by its Caffe name
    ours: dict[str, np.ndarray]
    ours64: dict[str, np.ndarray]
    opencv: dict[str, np.ndarray] | None
    numpy: dict[str, np.ndarray]
    floors: dict[str, float]  # running max of the float32 floor (module docstring)

    def bound(self, blob: str) -> float:
        return max(REL_TOL, FLOOR_FACTOR * self.floors[blob])


def _run(model: torch.nn.Module, args: list[torch.Tensor], blobs: list[str]
         ) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return dict(zip(blobs, (t.numpy() for t in model(*args)), strict=True))


def compute(key: str, tmp: Path) -> Result:
    file, side = NETS[key]
    path = smaller_copy(WILD / file, side, tmp)
    net = load_net(path)
    weights = random_weights(net, 0, calibration_batch=CALIBRATION_BATCH)
    net = with_weights(net, weights)
    feeds = random_inputs(net, 1, batch=1)
    blobs = list(dict.fromkeys(b.caffe_name for b in net.blobs.values()
                               if b.caffe_name not in net.inputs))
    model = convert(net, outputs=blobs)
    args = [torch.from_numpy(feeds[n]) for n in net.inputs]
    ours = _run(model, args, blobs)
    ours64 = _run(model.double(), [a.double() for a in args], blobs)
    floors, floor = {}, 0.0
    for b in blobs:
        floor = max(floor, rel_err(ours[b], ours64[b]))
        floors[b] = floor
    cv = None
    if HAVE_CV2:
        cv_path, cv_weights = opencv_copy(path, net, tmp, weights)
        caffemodel = tmp / "weights.caffemodel"
        write_caffemodel(caffemodel, cv_weights, name=net.name)
        cv = opencv_forward(cv_path, caffemodel, feeds, blobs, fusion=False, winograd=False)
    values = reference.run_net(net, feeds)
    ref = {b: np.asarray(values[net.value(b)]) for b in blobs}
    return Result(net, blobs, ours, ours64, cv, ref, floors)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Result]:
    return computed_once(compute, tmp_path_factory)


def _check(key: str, r: Result, other: dict[str, np.ndarray], what: str) -> None:
    errs = {b: (rel_err(r.ours[b], other[b]), r.bound(b)) for b in r.blobs}
    worst = max(errs.items(), key=lambda kv: kv[1][0])
    over = sum(e > REL_TOL for e, _ in errs.values())
    print(f"\n{key} vs {what}: {len(errs)} blobs, worst {worst[0]} {worst[1][0]:.2g} (bound "
          f"{worst[1][1]:.2g}), {over} above 1e-5, float32 floor {max(r.floors.values()):.2g}")
    bad = {b: e for b, e in errs.items() if e[0] > e[1]}
    assert not bad, f"{key}: blobs beyond max(1e-5, 3 x floor) vs {what}: {bad}"


@pytest.mark.parametrize("key", NETS)
def test_every_blob_agrees_with_opencv(key: str, result: Callable[[str], Result]) -> None:
    r = result(key)
    if r.opencv is None:
        pytest.skip("OpenCV (cv2) is not installed")
    _check(key, r, r.opencv, "OpenCV")


@pytest.mark.parametrize("key", NETS)
def test_every_blob_agrees_with_numpy_reference(key: str,
                                                result: Callable[[str], Result]) -> None:
    r = result(key)
    _check(key, r, r.numpy, "numpy float64")
    for b in r.blobs:  # the floor's float64 run is itself right (BN folded in float32 aside)
        assert rel_err(r.ours64[b], r.numpy[b]) <= r.bound(b), b


def test_opencv_has_no_upsample_layer(tmp_path: Path) -> None:
    """Why OpenCV gets the Deconvolution copy: it cannot create the YOLO ports' Upsample."""
    if not HAVE_CV2:
        pytest.skip("OpenCV (cv2) is not installed")
    path = smaller_copy(WILD / NETS["yolov3"][0], 64, tmp_path)
    net = load_net(path)
    feeds = random_inputs(net, 1, batch=1)
    with pytest.raises(CaffeBridgeError, match='type "Upsample"'):
        opencv_forward(path, random_weights(net, 0), feeds, ["layer86-upsample"])


@pytest.mark.parametrize("key", ["yolov3", "yolov4"])
def test_opencv_copy_upsamples_exactly(key: str, result: Callable[[str], Result]) -> None:
    """OpenCV's all-ones depthwise Deconvolution is nearest upsampling with no rounding: each
    Upsample blob it returns is its own bottom blob repeated 2 x 2, bit for bit."""
    r = result(key)
    if r.opencv is None:
        pytest.skip("OpenCV (cv2) is not installed")
    ups = [lay for lay in r.net.layers if lay.type == "Upsample"]
    assert len(ups) == 2
    for lay in ups:
        bottom = r.opencv[r.net.blobs[lay.bottoms[0]].caffe_name]
        want = bottom.repeat(2, axis=2).repeat(2, axis=3)
        np.testing.assert_array_equal(r.opencv[lay.caffe_tops[0]], want)


def test_spp_pools_keep_the_size_under_both_pooling_rules(
        result: Callable[[str], Result]) -> None:
    """YOLOv4's SPP pools are marked with ChenYingpeng/caffe-yolov3's rule (net name
    Darkent2Caffe) but kernel - stride is even, so it adds nothing: OpenCV (BVLC's rule) and we
    give the input's size."""
    r = result("yolov4")
    pools = [lay for lay in r.net.layers if lay.type == "Pooling"]
    assert [lay.param.pooling_param.kernel_size for lay in pools] == [5, 9, 13]
    assert all(lay.param.pooling_param.odd_window_extra for lay in pools)
    for lay in pools:
        shape = r.net.blobs[lay.bottoms[0]].shape
        assert r.ours[lay.caffe_tops[0]].shape == shape
        if r.opencv is not None:
            assert r.opencv[lay.caffe_tops[0]].shape == shape


def test_opencv_mish_matches_the_source(tmp_path: Path) -> None:
    """No Mish departure: OpenCV's agrees with the numpy reference (the source's formula, with
    its +-20 softplus cut-offs) to 1e-6 relative, element by element, from -30 to 30."""
    if not HAVE_CV2:
        pytest.skip("OpenCV (cv2) is not installed")
    path = tmp_path / "mish.prototxt"
    path.write_text('name: "m"\nlayer { name: "data" type: "Input" top: "data" input_param '
                    '{ shape { dim: 1 dim: 1 dim: 1 dim: 121 } } }\n'
                    'layer { name: "mish" type: "Mish" bottom: "data" top: "out" }\n',
                    encoding="utf-8")
    x = np.linspace(-30, 30, 121, dtype=np.float32).reshape(1, 1, 1, 121)
    got = opencv_forward(path, {}, {"data": x}, ["out"])["out"]
    (want,) = reference.run_layer(load_net(path).layers[-1], [x.astype(np.float64)])
    nonzero = want != 0
    assert np.all(got[~nonzero] == 0)
    assert np.max(np.abs(got[nonzero] - want[nonzero]) / np.abs(want[nonzero])) < 1e-6
