"""Whole efficient nets (tests/fixtures/wild, SOURCES-eff.md) with seeded weights: EVERY blob
against OpenCV's Caffe importer (fusion off, so each blob it returns is one it computed) and
against the float64 numpy reference.

* ShuffleNet v1 (1x, g3) and v2 (1x), farmingyard/ShuffleNet: ConvolutionDepthwise,
  ShuffleChannel, Slice (v2), Eltwise / Concat.
* MobileNetV3, eric612/MobilenetV3-Caffe: DepthwiseConvolution, ReLU6, Power + Eltwise PROD
  (hard swish), squeeze-excitation InnerProducts.

OpenCV has no ``DepthwiseConvolution``; its source (yonghenglh6/DepthwiseConvolution) is Caffe's
Convolution with the prototxt's group, so OpenCV is handed a copy spelled ``Convolution``.

Tolerance, as in test_whole_net.py: ``max(1e-5, 3 * floor)`` per blob, the floor being our
float32 run against the same graph in float64 (random weights on 50-layer nets without
residual sums amplify float32 rounding; two correct float32 implementations cannot agree
better). The figures are printed with ``-s``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe_bridge.build import convert
from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.export import export_net
from caffe_bridge.ir import load_net, with_weights
from caffe_bridge.numeric import rel_err
from caffe_bridge.opencv_reference import opencv_forward
from caffe_bridge.random_weights import random_inputs, random_weights
from tests import reference
from tests.helpers.per_key import computed_once
from tests.helpers.wild import WILD

HAVE_CV2 = importlib.util.find_spec("cv2") is not None

REL_TOL = 1e-5
FLOOR_FACTOR = 3.0
CALIBRATION_BATCH = 8  # BatchNorm statistics over 8 seeded images, not 1
NETS = {
    "shufflenet_v1_g3": "farmingyard_shufflenet_1x_g3_deploy.prototxt",
    "shufflenet_v2_1x": "farmingyard_shufflenet_v2_1x_deploy.prototxt",
    "mobilenet_v3": "eric612_MobileNetV3.prototxt",
}


@dataclass
class Result:
    blobs: list[str]  # every Caffe blob the net computes, by its Caffe name
    ours: dict[str, np.ndarray]
    ours64: dict[str, np.ndarray]
    opencv: dict[str, np.ndarray] | None
    numpy: dict[str, np.ndarray]
    output: str

    def bound(self, blob: str) -> float:
        return max(REL_TOL, FLOOR_FACTOR * rel_err(self.ours[blob], self.ours64[blob]))


def _opencv_copy(path: Path, tmp: Path) -> Path:
    text = path.read_text(encoding="utf-8")
    if 'type: "DepthwiseConvolution"' not in text:
        return path
    out = tmp / path.name
    out.write_text(text.replace('type: "DepthwiseConvolution"', 'type: "Convolution"'),
                   encoding="utf-8")
    return out


def compute(key: str, tmp: Path) -> Result:
    path = WILD / NETS[key]
    net = load_net(path)
    weights = random_weights(net, 0, calibration_batch=CALIBRATION_BATCH)
    net = with_weights(net, weights)
    feeds = random_inputs(net, 1, batch=1)
    blobs = list(dict.fromkeys(b.caffe_name for b in net.blobs.values()
                               if b.caffe_name not in net.inputs))
    model = convert(net, outputs=blobs)
    args = [torch.from_numpy(feeds[n]) for n in net.inputs]
    with torch.no_grad():
        ours = dict(zip(blobs, (t.numpy() for t in model(*args)), strict=True))
        ours64 = dict(zip(blobs, (t.numpy() for t in model.double()(*(a.double() for a in args))),
                          strict=True))
    cv = None
    if HAVE_CV2:
        caffemodel = tmp / "weights.caffemodel"
        write_caffemodel(caffemodel, weights, name=net.name)
        cv = opencv_forward(_opencv_copy(path, tmp), caffemodel, feeds, blobs, fusion=False)
    values = reference.run_net(net, feeds)
    ref = {b: np.asarray(values[net.value(b)]) for b in blobs}
    (output,) = (net.blobs[o].caffe_name for o in net.outputs)
    return Result(blobs, ours, ours64, cv, ref, output)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Result]:
    return computed_once(compute, tmp_path_factory)


def _report(key: str, errs: dict[str, tuple[float, float]], what: str) -> None:
    worst = max(errs.items(), key=lambda kv: kv[1][0])
    over = sum(e > REL_TOL for e, _ in errs.values())
    print(f"\n{key} vs {what}: {len(errs)} blobs, worst {worst[0]} {worst[1][0]:.2g} (bound "
          f"{worst[1][1]:.2g}), {over} above 1e-5")


@pytest.mark.parametrize("key", NETS)
def test_every_blob_agrees_with_opencv(key: str, result: Callable[[str], Result]) -> None:
    r = result(key)
    if r.opencv is None:
        pytest.skip("OpenCV (cv2) is not installed")
    errs = {b: (rel_err(r.ours[b], r.opencv[b]), r.bound(b)) for b in r.blobs}
    _report(key, errs, "OpenCV")
    bad = {b: e for b, e in errs.items() if e[0] > e[1]}
    assert not bad, f"{key}: blobs beyond max(1e-5, 3 x floor): {bad}"
    assert errs[r.output][0] <= REL_TOL, f"{key} output: {errs[r.output][0]:.3g}"


@pytest.mark.parametrize("key", NETS)
def test_every_blob_agrees_with_numpy_reference(key: str,
                                                result: Callable[[str], Result]) -> None:
    r = result(key)
    errs = {b: (rel_err(r.ours[b], r.numpy[b]), r.bound(b)) for b in r.blobs}
    _report(key, errs, "numpy float64")
    bad = {b: e for b, e in errs.items() if e[0] > e[1]}
    assert not bad, f"{key}: blobs beyond max(1e-5, 3 x floor): {bad}"
    for b in r.blobs:  # the floor's float64 run is itself right (BN folded in float32 aside)
        assert rel_err(r.ours64[b], r.numpy[b]) <= r.bound(b), b


@pytest.mark.parametrize("key", NETS)
def test_logits_are_order_one(key: str, result: Callable[[str], Result]) -> None:
    std = float(result(key).ours[result(key).output].std())
    assert 0.05 < std < 20.0, f"{key}: output std {std:.3g}"



HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None


@pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime is not installed")
@pytest.mark.parametrize("key", NETS)
def test_onnx_export_with_dynamic_batch(key: str, tmp_path: Path) -> None:
    """The new modules (depthwise, channel shuffle, ReLU6, ...) export; export_net checks the
    ONNX run against PyTorch, batch axis dynamic."""
    net = load_net(WILD / NETS[key])
    net = with_weights(net, random_weights(net, 0))
    (res,) = export_net(net, onnx=tmp_path / "m.onnx", dynamic_batch=True)
    assert res.max_rel_err <= 1e-5, res


@pytest.mark.parametrize("key", NETS)
def test_graph_re_traces_with_torch_fx(key: str) -> None:
    net = load_net(WILD / NETS[key])
    gm = convert(net)
    traced = torch.fx.symbolic_trace(gm)
    (x,) = (torch.from_numpy(a) for a in random_inputs(net, 2, batch=2).values())
    with torch.no_grad():
        torch.testing.assert_close(traced(x), gm(x), rtol=0, atol=0)
