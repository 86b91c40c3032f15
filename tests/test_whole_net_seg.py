"""Whole segmentation nets from the wild (tests/fixtures/wild/, SOURCES-seg.md), converted at a
small input size (tests/helpers/seg_nets.py rewrites), against the float64 numpy reference at
EVERY blob and, for DeepLab v2 (no fork BN, no unpooling), against OpenCV at every blob.

Seeded random weights (``random_weights``: fork BN statistics calibrated). Bound per blob, as in
test_whole_net.py: ``max(1e-5, 3 x float32 floor)``, the floor being our float32 run against the
same graph in float64; the float64 graph itself must match the reference to 1e-6 (the converters
round derived parameters to float32, as Caffe does). Measured floors of the outputs: DeepLab v2,
ENet, SegNet-basic ~1e-6; SegNet ~2e-5 and PSPNet-50 ~1e-5 (deep nets with random weights).
OpenCV refuses the fork ``BN`` and the unpooling ``Upsample`` (PSPNet, ENet, SegNet).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe_bridge.build import convert
from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.codegen import write_module_files
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.ir import load_net, with_weights
from caffe_bridge.opencv_reference import opencv_forward
from caffe_bridge.random_weights import random_inputs, random_weights
from tests import reference
from tests.helpers import seg_nets
from tests.helpers.layer_check import rel_err
from tests.helpers.per_key import computed_once

HAVE_CV2 = importlib.util.find_spec("cv2") is not None
REL_TOL = 1e-5
FLOOR_FACTOR = 3.0
GRAPH_TOL = 1e-6  # float64 graph vs reference (Interp positions are float32 in both Caffe and
# the reference, float64 in a float64 torch run: PSPNet's 2 -> 12 Interp differs by 1.5e-7)
NETS = {"deeplab_v2": seg_nets.DEEPLAB_V2, "pspnet50": seg_nets.PSPNET, "enet": seg_nets.ENET,
        "segnet": seg_nets.SEGNET, "segnet_basic": seg_nets.SEGNET_BASIC}


@dataclass
class Run:
    path: Path
    caffemodel: Path
    feeds: dict[str, np.ndarray]
    output: str
    ours: dict[str, np.ndarray]
    ours64: dict[str, np.ndarray]
    numpy: dict[str, np.ndarray]

    def bound(self, blob: str) -> float:
        return max(REL_TOL, FLOOR_FACTOR * rel_err(self.ours[blob], self.ours64[blob]))


def compute(key: str, tmp: Path) -> Run:
    path = NETS[key].write(tmp)
    net = load_net(path)
    weights = random_weights(net, 0)
    net = with_weights(net, weights)
    feeds = random_inputs(net, 1)
    names = list(dict.fromkeys(net.blobs[v].caffe_name for layer in net.layers
                               if layer.type != "Input" for v in layer.tops))
    model = convert(net, outputs=names, exact=True)  # Caffe's order of operations
    args = [torch.from_numpy(feeds[n]) for n in net.inputs]
    with torch.no_grad():
        ours = [t.numpy() for t in model(*args)]
        ours64 = [t.numpy() for t in model.double()(*(a.double() for a in args))]
    values = reference.run_net(net, feeds)
    caffemodel = tmp / "weights.caffemodel"
    write_caffemodel(caffemodel, weights, name=net.name)
    return Run(path, caffemodel, feeds, net.blobs[net.outputs[0]].caffe_name,
               dict(zip(names, ours, strict=True)), dict(zip(names, ours64, strict=True)),
               {b: np.asarray(values[net.value(b)]) for b in names})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Run]:
    return computed_once(compute, tmp_path_factory)


@pytest.mark.parametrize("key", list(NETS))
def test_every_blob_agrees_with_numpy_reference(key: str, run: Callable[[str], Run]) -> None:
    r = run(key)
    assert np.std(r.ours[r.output]) > 1e-3, "the output must not be degenerate"
    for blob, want in r.numpy.items():
        graph = rel_err(r.ours64[blob], want)
        assert graph <= GRAPH_TOL, f"{key} {blob}: float64 graph off by {graph:.3g}"
        err = rel_err(r.ours[blob], want)
        assert err <= r.bound(blob), f"{key} {blob}: {err:.3g} > {r.bound(blob):.3g}"


@pytest.mark.skipif(not HAVE_CV2, reason="OpenCV (cv2) is not installed")
def test_deeplab_v2_every_blob_agrees_with_opencv(run: Callable[[str], Run]) -> None:
    r = run("deeplab_v2")
    cv = opencv_forward(r.path, r.caffemodel, r.feeds, list(r.ours))
    report = {b: rel_err(r.ours[b], cv[b]) for b in r.ours}
    assert max(report.values()) <= REL_TOL, report


@pytest.mark.skipif(not HAVE_CV2, reason="OpenCV (cv2) is not installed")
@pytest.mark.parametrize("key", ["pspnet50", "enet", "segnet"])
def test_opencv_refuses_fork_layers(key: str, run: Callable[[str], Run]) -> None:
    r = run(key)
    with pytest.raises(CaffeBridgeError, match="OpenCV rejects the net"):
        opencv_forward(r.path, r.caffemodel, r.feeds, [r.output])  # bn_param, upsample_param


GENERATED_RUNNER = """
import importlib.util, sys
import numpy as np, torch
py, pth, inp, out = sys.argv[1:]
torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location("generated", py)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
assert not [m for m in sys.modules if m.startswith("caffe_bridge")]
with torch.no_grad():
    y = mod.build(pth)(torch.from_numpy(np.load(inp)))
np.save(out, (y if isinstance(y, tuple) else (y,))[0].numpy())
"""


@pytest.mark.parametrize("key", ["enet", "segnet_basic"])
def test_generated_module_bit_exact(key: str, tmp_path: Path) -> None:
    """The standalone torch-only module (Pooling masks, unpooling, fork BN) in a fresh
    interpreter gives bit-identical outputs to the converted graph."""
    path = NETS[key].write(tmp_path)
    net = load_net(path)
    caffemodel = tmp_path / "w.caffemodel"
    write_caffemodel(caffemodel, random_weights(net, 0))
    py, pth = write_module_files(path, caffemodel, tmp_path / "out")
    x = random_inputs(net, 7)["data"]
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.py").write_text(GENERATED_RUNNER)
    subprocess.run([sys.executable, str(tmp_path / "run.py"), str(py), str(pth),
                    str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], check=True, timeout=600)
    with torch.no_grad():
        want = convert(path, caffemodel, exact=True)(torch.from_numpy(x))
    want = (want if isinstance(want, tuple) else (want,))[0]
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "y.npy")), want)
