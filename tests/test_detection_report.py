"""caffe_bridge.detection_report: DetectionOutput rows matched as sets; verify's use of it; the
export of a DetectionOutput net stops with an error naming the layer."""

from __future__ import annotations

import numpy as np
import pytest

from caffe_bridge.detection_report import compare_detections, detections
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.export import export_net
from caffe_bridge.verify import compare_blobs
from tests.helpers.layer_check import net_from_text

ROWS = np.array([[0, 1, 0.9, 0.1, 0.1, 0.5, 0.5], [0, 1, 0.8, 0.6, 0.6, 0.9, 0.9],
                 [0, 2, 0.7, 0.2, 0.2, 0.4, 0.4]], np.float32)


def test_same_rows_in_another_order_match() -> None:
    rep = compare_detections(ROWS[None, None], ROWS[::-1][None, None])
    assert rep.same and rep.worst_iou == pytest.approx(1.0) and rep.worst_score_rel == 0
    assert "3 (ours) vs 3 (reference), 3 matched" in str(rep)


def test_moved_box_other_label_and_missing_row_are_reported() -> None:
    other = ROWS.copy()
    other[0, 3] = 0.2           # box moved: IoU 0.75
    other[2, 1] = 3             # label changed
    rep = compare_detections(ROWS, other[:3])
    assert not rep.same and rep.matched == 2
    assert rep.worst_iou == pytest.approx(0.75)
    assert rep.unmatched_ours == [(0, 2, pytest.approx(0.7))]
    assert "only in the reference: image 0 label 3" in str(rep)


def test_caffe_no_detection_rows_are_dropped() -> None:
    empty = np.array([[[[0, -1, -1, -1, -1, -1, -1]]]], np.float32)
    assert detections(empty).shape == (0, 7)
    assert compare_detections(empty, empty).same


DET_NET = """name: "t"
layer { name: "in" type: "Input" top: "loc" top: "conf" top: "prior"
  input_param { shape { dim: 1 dim: 16 } shape { dim: 1 dim: 12 }
    shape { dim: 1 dim: 2 dim: 16 } } }
layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior"
  top: "out" detection_output_param { num_classes: 3 nms_param { nms_threshold: 0.5 } } }
"""


def test_verify_compares_detection_tops_as_rows() -> None:
    net = net_from_text(DET_NET)
    rep = compare_blobs(net, {"out": ROWS[None, None]}, {"out": ROWS[::-1][None, None]}, 1e-4,
                        "test")
    assert rep.ok and rep.rows[0].cosine == pytest.approx(1.0)
    assert any("3 matched" in line for line in rep.detections)
    bad = compare_blobs(net, {"out": ROWS[None, None]}, {"out": ROWS[:2][None, None]}, 1e-4, "t")
    assert not bad.ok


def test_onnx_export_of_detection_output_names_the_layer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = net_from_text(DET_NET)
    msg = r"DetectionOutput layer 'det' \(bottoms loc, conf, prior\) cannot be exported"
    with pytest.raises(CaffeBridgeError, match=msg):
        export_net(net, onnx=tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_ssd_codegen_is_standalone_and_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``caffe2torch convert`` of an SSD (DetectionOutput included) writes a torch-only module;
    write_module_files itself re-imports it and demands bit-identical outputs."""
    from pathlib import Path

    from caffe_bridge.caffemodel import write_caffemodel
    from caffe_bridge.codegen import write_module_files
    from caffe_bridge.ir import load_net
    from caffe_bridge.random_weights import random_weights

    proto = Path(__file__).parent / "fixtures" / "wild" / "opencv_res10_ssd_face_deploy.prototxt"
    net = load_net(proto)
    model = tmp_path / "w.caffemodel"
    write_caffemodel(model, random_weights(net, 0, calibration_batch=2), name=net.name)
    py, _ = write_module_files(proto, model, tmp_path / "out")
    source = py.read_text(encoding="utf-8")
    assert "class SSDDetectionOutput" in source and "import numpy" not in source
