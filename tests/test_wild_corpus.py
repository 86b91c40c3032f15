"""The wild corpus (``tests/fixtures/wild``): real public definitions, kept byte-for-byte.

Every file must load or name the layer types we do not support yet (a parse error is a failure),
and where a file loads and OpenCV's Caffe importer reads it, every blob shape we infer must equal
the shape OpenCV computes when it runs the net. Sources and licences: ``SOURCES.md`` beside them;
``scripts/corpus_report.py`` prints the state of the whole corpus.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffe_bridge import UnsupportedLayerError, load_net
from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.ir import Net
from tests.helpers.wild import FILES, INPUT_SHAPES, WILD

OPENCV_TIMEOUT_S = 600

# Files that load and that OpenCV 4.x reads and runs: their shapes are compared with OpenCV's.
# Also loading and read by OpenCV, but not run by it (it has no layer for a type): the Faster
# R-CNN and R-FCN tests (Python proposal layer, unless renamed), mobilenet_v2_eric612 (Reduction),
# mobilenet_v3_eric612 (DepthwiseConvolution); fcn*_val/test start with a Python data layer.
SHAPE_CHECKED = [
    "bvlc_googlenet_deploy", "colorization_deploy_v2", "densenet201_deploy", "dpn92_deploy",
    "fcn8s_voc_deploy", "hed_deploy", "inception_resnet_v2_deploy", "inception_v3_deploy",
    "inception_v4_deploy", "mtcnn_det1", "mtcnn_det2", "mtcnn_det3", "nin_imagenet_deploy",
    "openpose_body25_deploy", "resnet101_v2_deploy", "resnext50_32x4d_deploy",
    "retinaface_mnet25_clancylian", "retinaface_mnet_charrin", "shufflenet_v1_1x_g3_deploy",
    "shufflenet_v2_1x_deploy", "vgg_face_deploy", "xception_deploy",
]
# The slowest comparisons here (large zero caffemodels, batch 100 for NiN): 6 to 40 s each.
HEAVY = {"vgg_face_deploy", "inception_resnet_v2_deploy", "dpn92_deploy", "fcn8s_voc_deploy",
         "nin_imagenet_deploy", "resnet101_v2_deploy"}
# OpenPose definitions declare a 1x1 input ("defined at runtime"). Caffe's pooling formula gives
# 1x1 for a 2x2/2 window on it (ceil((1 - 2) / 2) + 1 = 1); OpenCV computes a negative size and
# refuses the net: a known OpenCV departure. Their shapes are compared on a 96x96 copy instead.
POOL_WINDOW_DEPARTURE = {"openpose_coco_deploy_linevec": "pool1_stage1",
                         "openpose_face_deploy": "pool1", "openpose_hand_deploy": "pool1_stage1"}
RUNTIME_SIZE = 96  # any size the pooling windows fit (the nets run at 368 and more)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_loads_or_names_unsupported_layers(path: Path) -> None:
    """load_net succeeds or raises UnsupportedLayerError; anything else (parse errors) fails.
    Train/test files get their data layers' shapes from input_shapes.json."""
    with contextlib.suppress(UnsupportedLayerError):
        load_net(path, input_shapes=INPUT_SHAPES.get(path.stem))


def test_every_file_is_recorded_in_sources() -> None:
    """SOURCES.md (or a helper's SOURCES-<name>.md, until merged) has a row for every file."""
    text = "".join(p.read_text(encoding="utf-8") for p in WILD.glob("SOURCES*.md"))
    listed = set(re.findall(r"^\| `?([^`|\s]+\.prototxt)", text, flags=re.M))
    assert listed == {p.name for p in FILES}
    assert len(FILES) >= 45 and all(p.stat().st_size < 1_000_000 for p in FILES)
    assert set(INPUT_SHAPES) <= {p.stem for p in FILES}


# --- OpenCV's shapes ------------------------------------------------------------------------------

_CHILD = """
import json, sys
import numpy as np
import cv2

proto, model, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
net = cv2.dnn.readNetFromCaffe(proto, model)
net.enableWinograd(False)
for name, shape in spec["inputs"].items():
    net.setInput(np.zeros(shape, np.float32), name)
pins, picks = {}, {}
for blob, (layer, ltype, top0, k) in spec["writers"].items():
    name = None
    if net.getLayerId(layer) >= 0:
        name = layer
    elif net.getLayerId(top0) >= 0 and net.getLayer(net.getLayerId(top0)).type == ltype:
        name = top0  # OpenCV 4.x names some layers after their first top
    if name is not None:
        picks[blob] = (pins.setdefault(name, len(pins)), k)
outs = net.forwardAndRetrieve(list(pins))
print(json.dumps({b: list(outs[p][k].shape) for b, (p, k) in picks.items()}))
"""


def _writers(net: Net) -> dict[str, tuple[str, str, str, int]]:
    """Caffe blob name -> (last writer's layer name, its type, its first top, top index)."""
    out: dict[str, tuple[str, str, str, int]] = {}
    for layer in net.layers:
        if layer.type == "Input":
            continue
        names = [net.blobs[t].caffe_name for t in layer.tops]
        for k, name in enumerate(names):
            out[name] = (layer.name, layer.type, names[0], k)
    return out


def opencv_layer_shapes(
    path: Path, tmp: Path, net: Net | None = None
) -> dict[str, tuple[int, ...]]:
    """{Caffe blob name: shape} as OpenCV computes it, running ``path`` on zero inputs of the
    declared shapes with an all-zero caffemodel of our parameter shapes (child process: OpenCV may
    crash). A blob is its value after the last in-place writer; blobs of layers OpenCV merges away
    on import are absent. ``net`` is our IR of ``path`` (loaded here when not given)."""
    net = net if net is not None else load_net(path)
    weights = {layer.name: [np.zeros(s, np.float32) for s in layer.param_shapes]
               for layer in net.layers if layer.param_shapes}
    model = tmp / f"{path.stem}.caffemodel"
    write_caffemodel(model, weights, types={layer.name: layer.type for layer in net.layers})
    spec = {"inputs": {k: list(v) for k, v in net.inputs.items()}, "writers": _writers(net)}
    try:
        args = [sys.executable, "-c", _CHILD, str(path), str(model), json.dumps(spec)]
        run = subprocess.run(args, capture_output=True, text=True, timeout=OPENCV_TIMEOUT_S,
                             check=False)
    finally:
        model.unlink(missing_ok=True)
    if run.returncode != 0:
        raise RuntimeError(f"OpenCV failed on {path.name} (status {run.returncode}): "
                           f"{run.stderr.strip()[-2000:]}")
    return {b: tuple(s) for b, s in json.loads(run.stdout.strip().splitlines()[-1]).items()}


def shape_mismatches(path: Path, tmp: Path) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """{blob: (our shape, OpenCV's shape)} for every blob whose shapes differ."""
    net = load_net(path)
    theirs = opencv_layer_shapes(path, tmp, net)
    ours = {name: net.blobs[net.value(name)].shape for name in theirs}
    assert len(theirs) >= len(_writers(net)) // 2, "OpenCV gave shapes for too few blobs"
    return {b: (ours[b], theirs[b]) for b in theirs if tuple(ours[b]) != theirs[b]}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in SHAPE_CHECKED])
def test_shapes_match_opencv(name: str, tmp_path: Path) -> None:
    """Our inferred blob shapes equal OpenCV's. Where they differ, Caffe's formulas decide (a known
    OpenCV departure: an input smaller than a pooling window); a mismatch here is reported, not
    "fixed" by copying OpenCV."""
    pytest.importorskip("cv2")
    assert shape_mismatches(WILD / f"{name}.prototxt", tmp_path) == {}


@pytest.mark.parametrize("name", sorted(POOL_WINDOW_DEPARTURE))
def test_opencv_departs_where_the_input_is_smaller_than_a_pooling_window(
    name: str, tmp_path: Path
) -> None:
    """At the declared 1x1 input we follow Caffe (a 1x1 pooled map); OpenCV rejects the net."""
    pytest.importorskip("cv2")
    path = WILD / f"{name}.prototxt"
    net = load_net(path)
    assert net.blobs[net.value(POOL_WINDOW_DEPARTURE[name])].shape[2:] == (1, 1)
    with pytest.raises(RuntimeError, match=r"Pooling"):
        opencv_layer_shapes(path, tmp_path, net)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(POOL_WINDOW_DEPARTURE))
def test_shapes_match_opencv_at_the_runtime_size(name: str, tmp_path: Path) -> None:
    """The same OpenPose nets with the spatial input_dim lines set to RUNTIME_SIZE (a copy)."""
    pytest.importorskip("cv2")
    lines = (WILD / f"{name}.prototxt").read_text(encoding="utf-8").splitlines(keepends=True)
    dims = [i for i, line in enumerate(lines) if line.startswith("input_dim:")][:4]
    for i in dims[2:]:
        lines[i] = f"input_dim: {RUNTIME_SIZE}\n"
    copy = tmp_path / f"{name}.prototxt"
    copy.write_text("".join(lines), encoding="utf-8")
    assert load_net(copy).inputs["image"] == (1, 3, RUNTIME_SIZE, RUNTIME_SIZE)
    assert shape_mismatches(copy, tmp_path) == {}
