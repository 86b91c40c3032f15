"""py-faster-rcnn's Faster R-CNN ZF test net and py-R-FCN's ResNet-50 R-FCN (PSROIPooling) test
net (tests/fixtures/wild/, unchanged) with seeded random weights, against OpenCV; ZF also
against the numpy reference.

OpenCV cannot run the Python proposal layer; as its samples do (samples/dnn/faster_rcnn.py),
it gets a copy in which that layer is OpenCV's ``Proposal`` type with py-faster-rcnn's anchors
(ratios 0.5 1 2, scales 8 16 32). Two OpenCV differences are kept out of the comparison:
OpenCV skips the min-size filter (so ``im_info``'s scale is 1/16: min size 1 px, which no box
fails) and pads its rois / scores to ``post_nms_topn`` rows (only the first R rows, R = ours,
are real). Both copies get a second proposal top, the RPN scores, to compare those too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe_bridge.build import build_module
from caffe_bridge.ir import load_net, with_weights
from caffe_bridge.numeric import rel_err
from caffe_bridge.opencv_reference import opencv_forward
from caffe_bridge.prototxt import parse_prototxt
from caffe_bridge.random_weights import random_weights
from tests import reference
from tests.helpers.wild import WILD

HAVE_CV2 = importlib.util.find_spec("cv2") is not None

ZF = WILD / "faster_rcnn_zf_voc_test.prototxt"
RFCN = WILD / "rfcn_resnet50_voc_test_agnostic.prototxt"
OUTS = ["rois", "rpn_scores", "cls_score", "cls_prob", "bbox_pred"]


def variant(tmp: Path, opencv: bool, src: Path = ZF) -> Path:
    """``src`` with a second proposal top; for OpenCV the Python layer becomes ``Proposal``."""
    net = parse_prototxt(src).net
    (layer,) = [lay for lay in net.layer if lay.name == "proposal"]
    layer.top.append("rpn_scores")
    if opencv:
        layer.type = "Proposal"
        layer.ClearField("python_param")
        pp = layer.proposal_param
        pp.feat_stride, pp.base_size, pp.min_size = 16, 16, 16
        pp.ratio.extend([0.5, 1, 2])
        pp.scale.extend([8, 16, 32])
    path = tmp / f"{src.stem}_{'opencv' if opencv else 'ours'}.prototxt"
    path.write_text(text_format.MessageToString(net), encoding="utf-8")
    return path


def run_ours(tmp: Path, src: Path) -> dict[str, object]:
    net = load_net(variant(tmp, False, src))
    weights = random_weights(net, 0)
    net = with_weights(net, weights)
    rng = np.random.default_rng(1)
    feeds = {"data": rng.uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32),
             "im_info": np.array([[224, 224, 1 / 16]], np.float32)}
    model = build_module(net, outputs=[net.value(b) for b in OUTS])
    with torch.no_grad():
        got = model(*(torch.from_numpy(feeds[n]) for n in net.inputs))
    return {"tmp": tmp, "net": net, "weights": weights, "feeds": feeds,
            "ours": dict(zip(OUTS, (t.numpy() for t in got), strict=True))}


@pytest.fixture(scope="module")
def zf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return run_ours(tmp_path_factory.mktemp("zf"), ZF)


def test_rois_are_real(zf: dict) -> None:
    ours = zf["ours"]
    n = len(ours["rois"])
    assert 50 < n <= 300, n  # NMS kept a real, non-trivial set
    assert (ours["rois"][:, 0] == 0).all()
    assert (ours["rois"][:, 3] > ours["rois"][:, 1]).any()
    assert ours["cls_prob"].shape == (n, 21) and ours["bbox_pred"].shape == (n, 84)
    # random weights give near-uniform class probabilities: the logits are compared too
    assert ours["cls_score"].std(axis=0).max() > 1e-3


def compare_with_opencv(run: dict, src: Path) -> None:
    cv_path = variant(run["tmp"], True, src)
    ref = opencv_forward(cv_path, run["weights"], run["feeds"], OUTS)
    ours = run["ours"]
    n = len(ours["rois"])
    assert ref["rois"].shape == (300, 5)
    # OpenCV keeps the same number of proposals: its padding rows (zeros) start at row n.
    assert (ref["rpn_scores"][:n] > 0).all() and not ref["rpn_scores"][n:].any()
    for name in OUTS:
        assert rel_err(ours[name], ref[name][:n]) < 1e-5, name


@pytest.mark.skipif(not HAVE_CV2, reason="OpenCV (cv2) is not installed")
def test_agrees_with_opencv_proposal(zf: dict) -> None:
    compare_with_opencv(zf, ZF)


@pytest.mark.skipif(not HAVE_CV2, reason="OpenCV (cv2) is not installed")
def test_rfcn_psroi_agrees_with_opencv(tmp_path: Path) -> None:
    """R-FCN: PSROIPooling on the RPN's rois, then global average pooling of the bins."""
    run = run_ours(tmp_path, RFCN)
    assert 50 < len(run["ours"]["rois"]) <= 300
    compare_with_opencv(run, RFCN)


def test_agrees_with_numpy_reference(zf: dict) -> None:
    """The unchanged fixture (one proposal top) against the float64 numpy reference."""
    net = with_weights(load_net(ZF), zf["weights"])
    ref = reference.run_net(net, zf["feeds"])
    names = ("rois", "cls_score", "cls_prob", "bbox_pred")
    model = build_module(net, outputs=[net.value(b) for b in names])
    with torch.no_grad():
        got = model(*(torch.from_numpy(zf["feeds"][n]) for n in net.inputs))
    for name, ours in zip(names, got, strict=True):
        want = ref[net.value(name)]
        assert ours.shape == want.shape, name
        assert rel_err(ours.numpy(), want) < 1e-5, name
    np.testing.assert_array_equal(got[0].numpy(), zf["ours"]["rois"])
