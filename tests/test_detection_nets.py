"""Whole SSD nets (real public definitions, seeded random weights) against OpenCV's importer.

For each net: every head blob (Permute/Flatten/PriorBox/Normalize/Concat tops, the inputs of
DetectionOutput) agrees with OpenCV; our DetectionOutput run on OpenCV's own inputs gives exactly
OpenCV's detections (as a set: OpenCV writes rows sorted by score, Caffe by label); and the
end-to-end detections match. Random weights give plenty of detections above each net's
confidence_threshold (softmax over random logits; MobileNet-SSD's threshold is 0.25).

OpenCV traps handled here (the C++ source decides): OpenCV reads PriorBox min/max sizes as
floats while Caffe's forward truncates them to int (Pelee's 21.28) -- OpenCV gets a copy with
integer sizes; OpenCV orders DetectionOutput rows by score, Caffe by image then label.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_bridge.converters  # noqa: F401  (registers the SSD shape rules)
from caffe_bridge import convert
from caffe_bridge.converters.registry import REGISTRY
from caffe_bridge.detection_report import compare_detections, detections
from caffe_bridge.ir import Net, load_net, with_weights
from caffe_bridge.random_weights import random_inputs, random_weights

HAVE_CV2 = importlib.util.find_spec("cv2") is not None
WILD = Path(__file__).parent / "fixtures" / "wild"
HEAD_TYPES = {"Permute", "Flatten", "PriorBox", "Normalize", "Concat"}


@dataclass(frozen=True)
class Spec:
    file: str
    blob_tol: float      # relative max error of the head blobs (float32 drift of the backbone)
    int_sizes: bool = False  # OpenCV needs PriorBox sizes truncated as Caffe reads them


NETS = {
    # MobileNet's depthwise convolutions + BatchNorm drift ~1e-4 between two float32 engines
    "mobilenet-ssd": Spec("MobileNetSSD_deploy.prototxt", 5e-4),
    "ssd300-vgg16": Spec("VGG_VOC0712_SSD_300x300_deploy.prototxt", 2e-5),
    "pelee": Spec("Pelee_voc_deploy_merged.prototxt", 2e-5, int_sizes=True),
}


@dataclass
class Result:
    net: Net
    names: list[str]
    ours: dict[str, np.ndarray]
    cv: dict[str, np.ndarray]
    det: str


def _opencv_copy(path: Path, tmp: Path) -> Path:
    """The definition with every PriorBox min_size/max_size written as the int Caffe uses."""
    text = path.read_text(encoding="utf-8")
    fixed = re.sub(r"\b(min_size|max_size):\s*([0-9.]+)",
                   lambda m: f"{m.group(1)}: {int(float(m.group(2)))}", text)
    out = tmp / path.name
    out.write_text(fixed, encoding="utf-8")
    return out


def compute(spec: Spec, tmp: Path) -> Result:
    from caffe_bridge.opencv_reference import opencv_forward

    path = WILD / spec.file
    net = load_net(path)
    weights = random_weights(net, 0, calibration_batch=2)
    net = with_weights(net, weights)
    det = next(layer for layer in net.layers if layer.type == "DetectionOutput")
    names = [lay.caffe_tops[0] for lay in net.layers if lay.type in HEAD_TYPES]
    names += [det.caffe_tops[0]]
    feeds = random_inputs(net, 7)
    model = convert(net, outputs=names)
    with torch.no_grad():
        outs = model(*(torch.from_numpy(feeds[n]) for n in net.inputs))
    ours = {n: t.numpy() for n, t in zip(names, outs, strict=True)}
    cv_path = _opencv_copy(path, tmp) if spec.int_sizes else path
    cv = opencv_forward(cv_path, weights, feeds, names)
    return Result(net, names, ours, cv, det.caffe_tops[0])


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cache: dict[str, Result] = {}

    def get(key: str) -> Result:
        if not HAVE_CV2:
            pytest.skip("needs opencv-python-headless")
        if key not in cache:
            cache[key] = compute(NETS[key], tmp_path_factory.mktemp(key))
        return cache[key]

    return get


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.slow
@pytest.mark.parametrize("key", NETS)
def test_head_blobs_agree_with_opencv(key: str, result) -> None:  # type: ignore[no-untyped-def]
    r = result(key)
    for name in r.names[:-1]:
        assert r.ours[name].shape == r.cv[name].shape, name
        assert rel_err(r.ours[name], r.cv[name]) <= NETS[key].blob_tol, name


@pytest.mark.slow
@pytest.mark.parametrize("key", NETS)
def test_detection_output_exact_on_opencv_inputs(key: str, result) -> None:  # type: ignore[no-untyped-def]
    """Same rows, labels; scores within 1e-5 relative, boxes within 1e-5 absolute."""
    r = result(key)
    layer = next(lay for lay in r.net.layers if lay.type == "DetectionOutput")
    module = REGISTRY.convert(layer, r.net)
    args = [torch.from_numpy(r.cv[r.net.blobs[b].caffe_name]) for b in layer.bottoms]
    with torch.no_grad():
        ours = module(*args).numpy()
    rep = compare_detections(ours, r.cv[r.det], min_iou=0.99)
    assert rep.same, str(rep)
    assert rep.n_ours > 20  # random weights give real detections
    assert rep.worst_score_rel <= 1e-5 and rep.worst_box_diff <= 1e-5, str(rep)


@pytest.mark.slow
@pytest.mark.parametrize("key", NETS)
def test_end_to_end_detections_match_opencv(key: str, result) -> None:  # type: ignore[no-untyped-def]
    r = result(key)
    rep = compare_detections(r.ours[r.det], r.cv[r.det], min_iou=0.99)
    assert rep.same, str(rep)
    # backbone drift (blob_tol) moves scores and the (unclipped, sometimes huge) boxes a little
    assert rep.worst_score_rel <= NETS[key].blob_tol * 10 and rep.worst_iou >= 0.99, str(rep)


@pytest.mark.slow
def test_rows_follow_caffe_order_not_opencvs(result) -> None:  # type: ignore[no-untyped-def]
    r = result("mobilenet-ssd")
    ours, cv = detections(r.ours[r.det]), detections(r.cv[r.det])
    assert np.all(np.diff(ours[:, 1]) >= 0)           # Caffe: labels ascending
    assert np.any(np.diff(cv[:, 1]) < 0)              # OpenCV: by score across labels


def test_pelee_priors_need_int_sizes() -> None:
    """Pelee's min_size 21.28 is 21 in Caffe's forward: OpenCV's float priors are off ~1e-3."""
    if not HAVE_CV2:
        pytest.skip("needs opencv-python-headless")
    text = (WILD / NETS["pelee"].file).read_text(encoding="utf-8")
    assert "min_size: 21.2800006866" in text


def test_ssdlite_duplicate_layer_names_are_rejected_by_the_ir() -> None:
    """MobileNetV2-SSDLite's deploy has three Slice layers all named "slice" (Caffe accepts
    them: names only matter for weights). Not converted yet: the IR rejects the duplicates."""
    with pytest.raises(Exception, match="duplicate layer name"):
        load_net(WILD / "MobileNetV2_SSDLite_voc_deploy.prototxt")
