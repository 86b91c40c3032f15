"""Classic Caffe definitions (tests/fixtures/*.prototxt, small but faithful): every definition
generation and the layer settings of the early model zoo, converted and compared with OpenCV's
Caffe importer and the numpy reference, plus the structural facts each fixture is about.

Inputs are seeded N(0, 1) at batch 2 (OpenCV is run sample by sample); nets with LRN get them
scaled to the pixel range (x 50, as mean-subtracted 0-255 images are) so that LRN, whose alpha
is 1e-4, changes its input measurably instead of passing it through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe_bridge.build import convert
from caffe_bridge.ir import Net, load_net, with_weights
from caffe_bridge.numeric import rel_err
from caffe_bridge.opencv_reference import opencv_forward
from caffe_bridge.random_weights import random_inputs, random_weights
from tests import reference
from tests.helpers.per_key import computed_once

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REL_TOL = 1e-5
FLOOR_FACTOR = 3.0  # as in test_whole_net: bound = max(REL_TOL, 3 x float32 noise floor)
BATCH = 2
PIXEL_SCALE = 50.0
LRN_MIN_EFFECT = 0.05  # LRN must change its input by at least this (relative max)


@dataclass(frozen=True)
class Fixture:
    key: str
    file: str
    input_scale: float = 1.0


FIXTURE_LIST = (
    Fixture("caffenet-v1", "caffenet_v1.prototxt", PIXEL_SCALE),
    Fixture("googlenet-inception", "googlenet_inception.prototxt", PIXEL_SCALE),
    Fixture("v2-input-shape", "v2_input_shape.prototxt"),
    Fixture("train-phase-layers", "train_phase_layers.prototxt"),
    Fixture("lrn-within-channel", "cifar10_within_channel.prototxt", PIXEL_SCALE),
    Fixture("fcn-deconv-crop", "fcn_deconv_crop.prototxt"),
    Fixture("imagenet-v0", "imagenet_v0.prototxt", PIXEL_SCALE),
)
BY_KEY = {f.key: f for f in FIXTURE_LIST}
KEYS = [pytest.param(f.key, id=f.key) for f in FIXTURE_LIST]
LRN_KEYS = [pytest.param(f.key, id=f.key) for f in FIXTURE_LIST if f.input_scale != 1.0]


@dataclass
class Result:
    net: Net
    path: Path
    weights: dict[str, list[np.ndarray]]
    feeds: dict[str, np.ndarray]
    blobs: tuple[str, ...]  # net output, then logits (when a Softmax makes the output)
    ours: dict[str, np.ndarray]
    ours64: dict[str, np.ndarray]
    numpy: dict[str, np.ndarray]  # every value of the net, by Caffe blob name (last writer)

    def bound(self, blob: str) -> float:
        floor = rel_err(self.ours[blob], self.ours64[blob])
        return max(REL_TOL, FLOOR_FACTOR * floor)


def _compute(fx: Fixture) -> Result:
    path = FIXTURES / fx.file
    net = load_net(path)
    weights = random_weights(net, 0)
    net = with_weights(net, weights)
    feeds = {k: v * np.float32(fx.input_scale)
             for k, v in random_inputs(net, 1, batch=BATCH).items()}
    assert len(net.outputs) == 1, net.outputs
    out = net.outputs[0]
    producer = net.layer(net.blobs[out].producer)
    logits = producer.caffe_bottoms[0] if producer.type == "Softmax" else net.blobs[out].caffe_name
    blobs = tuple(dict.fromkeys((net.blobs[out].caffe_name, logits)))
    model = convert(net, outputs=list(blobs))
    args = [torch.from_numpy(feeds[n]) for n in net.inputs]
    with torch.no_grad():
        ours = model(*args)
        ours64 = model.double()(*(a.double() for a in args))
    ours = ours if isinstance(ours, tuple) else (ours,)
    ours64 = ours64 if isinstance(ours64, tuple) else (ours64,)
    values = reference.run_net(net, feeds)
    caffe_names = {blob.caffe_name for blob in net.blobs.values()}
    ref = {b: np.asarray(values[net.value(b)]) for b in caffe_names}
    return Result(net, path, weights, feeds, blobs,
                  {b: t.numpy() for b, t in zip(blobs, ours, strict=True)},
                  {b: t.numpy() for b, t in zip(blobs, ours64, strict=True)}, ref)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Result]:
    return computed_once(lambda key, _tmp: _compute(BY_KEY[key]), tmp_path_factory)


@pytest.mark.parametrize("key", KEYS)
def test_agrees_with_numpy_reference(key: str, result: Callable[[str], Result]) -> None:
    r = result(key)
    for blob in r.blobs:
        err = rel_err(r.ours[blob], r.numpy[blob])
        assert err <= r.bound(blob), f"{key} {blob}: {err:.3g} > {r.bound(blob):.3g}"


@pytest.mark.parametrize("key", KEYS)
def test_agrees_with_opencv(key: str, result: Callable[[str], Result]) -> None:
    pytest.importorskip("cv2")
    r = result(key)
    cv = opencv_forward(r.path, r.weights, r.feeds, list(r.blobs))
    for blob in r.blobs:
        err = rel_err(r.ours[blob], cv[blob])
        assert err <= r.bound(blob), f"{key} {blob}: {err:.3g} > {r.bound(blob):.3g}"


@pytest.mark.parametrize("key", LRN_KEYS)
def test_lrn_is_exercised(key: str, result: Callable[[str], Result]) -> None:
    """With pixel-range inputs every LRN changes its input: the agreement covers its formula."""
    r = result(key)
    lrns = [layer for layer in r.net.layers if layer.type == "LRN"]
    assert lrns, key
    for layer in lrns:
        x, y = r.numpy[layer.caffe_bottoms[0]], r.numpy[layer.caffe_tops[0]]
        effect = rel_err(y, x)
        assert effect > LRN_MIN_EFFECT, f"{key} {layer.name}: LRN changes its input by {effect:.3g}"


def _types(net: Net) -> list[str]:
    return [layer.type for layer in net.layers]


def _shape(net: Net, blob: str) -> tuple[int, ...]:
    return net.blobs[net.value(blob)].shape


def check_caffenet_v1(net: Net) -> None:
    assert dict(net.inputs) == {"data": (1, 3, 103, 103)}  # input: + 4 input_dim:
    assert _types(net).count("LRN") == 2 and _types(net).count("Convolution") == 5
    assert net.layer("norm1").param.lrn_param.norm_region == 0  # ACROSS_CHANNELS
    groups = {n: net.layer(n).param.convolution_param.group for n in ("conv2", "conv4", "conv5")}
    assert groups == {"conv2": 2, "conv4": 2, "conv5": 2}
    assert net.layer("conv2").blobs[0].shape == (64, 12, 5, 5)  # C / group input channels
    assert [_shape(net, b)[2] for b in ("pool1", "pool2", "pool5")] == [12, 6, 3]  # CEIL


def check_googlenet_inception(net: Net) -> None:
    assert dict(net.inputs) == {"data": (2, 3, 64, 64)}
    assert _shape(net, "inception_3b/output") == (2, 120, 8, 8)
    assert _shape(net, "pool3/3x3_s2") == (2, 120, 5, 5)  # CEIL with pad: last window overhangs
    assert net.layer("pool3/3x3_s2").param.pooling_param.pool == 1  # AVE


def check_v2_input_shape(net: Net) -> None:
    assert dict(net.inputs) == {"data": (1, 3, 32, 32), "channel_weight": (1, 32)}
    assert net.layers[0].type == "Input" and len(net.layers[0].tops) == 2


def check_train_phase_layers(net: Net) -> None:
    names = {layer.name for layer in net.layers}
    assert not names & {"mnist", "accuracy", "loss", "drop1"}  # TRAIN-only / exclude TEST
    assert {"data", "conv1", "ip2", "prob"} <= names  # `include { phase: TEST }` is kept
    assert dict(net.inputs) == {"data": (1, 1, 28, 28)}
    assert "label" not in {b.caffe_name for b in net.blobs.values()}


def check_lrn_within_channel(net: Net) -> None:
    assert {net.layer(n).param.lrn_param.norm_region for n in ("norm1", "norm2")} == {1}
    assert _shape(net, "pool3") == (1, 64, 4, 4)


def check_fcn_deconv_crop(net: Net) -> None:
    assert _shape(net, "conv1_1") == (1, 16, 262, 262)  # pad 100
    assert _shape(net, "upscore2") == (1, 5, 56, 56)
    assert _shape(net, "upscore4") == (1, 5, 224, 224)
    assert net.layer("upscore4").blobs[0].shape == (5, 1, 8, 8)  # (C_in, out / group, k, k)
    assert _shape(net, "score") == (1, 5, 64, 64)


def check_imagenet_v0(net: Net) -> None:
    names = [layer.name for layer in net.layers]
    assert not {"pad2", "pad4", "pad5"} & set(names)  # padding layers folded into the convs
    assert list(net.layer("conv2").param.convolution_param.pad) == [2]
    assert list(net.layer("conv3").param.convolution_param.pad) == [1]
    assert net.layer("conv2").bottoms == ("norm1",)
    assert not net.layer("conv5").param.convolution_param.bias_term  # biasterm: false
    assert len(net.layer("conv5").blobs) == 1
    assert _types(net).count("LRN") == 2 and _types(net)[0] == "Input"
    assert _shape(net, "pool5") == (1, 64, 2, 2)


CHECKS: dict[str, Callable[[Net], None]] = {
    "caffenet-v1": check_caffenet_v1,
    "googlenet-inception": check_googlenet_inception,
    "v2-input-shape": check_v2_input_shape,
    "train-phase-layers": check_train_phase_layers,
    "lrn-within-channel": check_lrn_within_channel,
    "fcn-deconv-crop": check_fcn_deconv_crop,
    "imagenet-v0": check_imagenet_v0,
}


@pytest.mark.parametrize("key", KEYS)
def test_structure(key: str, result: Callable[[str], Result]) -> None:
    """What each fixture is about: the upgraded layers, inputs and shapes Caffe would build."""
    CHECKS[key](result(key).net)
