"""SSD layers (weiliu89/caffe ssd) against the numpy reference: Permute, Normalize, PriorBox,
DetectionOutput (ties, eta, code types, unshared locations, no detection, batches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.fx

from caffe_bridge.build import build_module
from caffe_bridge.errors import CaffeBridgeError
from tests import reference
from tests.helpers.layer_check import (
    check_batch,
    check_layer,
    layer_text,
    net_from_text,
    net_text,
    rel_err,
)

COVERS = {"Permute", "Normalize", "PriorBox", "DetectionOutput"}


@pytest.mark.parametrize("order,shape", [
    ("order: 0 order: 2 order: 3 order: 1", (2, 3, 4, 5)),
    ("order: 3", (2, 3, 4, 5)),                 # unlisted axes follow: (3, 0, 1, 2)
    ("order: 1 order: 0", (2, 3, 4)),
    ("", (2, 3, 4)),                             # identity
])
def test_permute(order: str, shape: tuple[int, ...]) -> None:
    check_layer(net_text(layer_text("Permute", f"permute_param {{ {order} }}"), shape))


def test_permute_rejects_repeated_axis() -> None:
    with pytest.raises(CaffeBridgeError, match="repeats"):
        net_from_text(net_text(layer_text("Permute", "permute_param { order: 1 order: 1 }"),
                               (2, 3, 4)))


@pytest.mark.parametrize("body,shape", [
    ("", (2, 3, 4, 5)),
    ("across_spatial: false channel_shared: false", (2, 6, 3, 3)),
    ("across_spatial: false", (3, 4, 2, 2)),
    ("channel_shared: false eps: 0.5", (2, 3, 2, 2)),   # eps large enough to matter
])
def test_normalize(body: str, shape: tuple[int, ...]) -> None:
    check_layer(net_text(layer_text("Normalize", f"norm_param {{ {body} }}"), shape))


def test_normalize_eps_is_inside_the_root() -> None:
    """x / (||x|| + eps) (a common port) is off when eps is comparable to ||x||^2."""
    text = net_text(layer_text("Normalize", "norm_param { eps: 1 }"), (1, 2, 1, 1))
    net = net_from_text(text)
    x = np.array([[[[0.6]], [[0.8]]]], np.float32)  # ||x|| = 1: Caffe divides by sqrt(2)
    with torch.no_grad():
        y = build_module(net)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y.ravel(), x.ravel() / np.sqrt(2), rtol=1e-6)


def test_normalize_batch() -> None:
    check_batch(layer_text("Normalize", "norm_param { across_spatial: true }"), (1, 3, 2, 2))


PRIORS = {
    "mobilenet-ssd": "min_size: 60 max_size: 105 aspect_ratio: 2 aspect_ratio: 3 flip: true "
                     "clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 "
                     "offset: 0.5",
    "pelee-fractional": "min_size: 21.28 max_size: 45.6 aspect_ratio: 2 aspect_ratio: 3 "
                        "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2",
    "two-sizes-no-flip": "min_size: 10 min_size: 30 max_size: 20 max_size: 50 "
                         "aspect_ratio: 2 aspect_ratio: 2 flip: false clip: true",
    "steps-img-hw": "min_size: 16 aspect_ratio: 0.5 img_h: 120 img_w: 200 step_h: 13 "
                    "step_w: 21 offset: 0 clip: true variance: 0.2",
    "img-size-step": "min_size: 32 img_size: 96 step: 24 offset: 0.25",
}


@pytest.mark.parametrize("body", PRIORS.values(), ids=PRIORS.keys())
def test_prior_box(body: str) -> None:
    layer = layer_text("PriorBox", f"prior_box_param {{ {body} }}", n_bottoms=2)
    check_layer(net_text(layer, (1, 8, 5, 7), (2, 3, 100, 140)), rtol=1e-6)


def test_prior_box_truncates_sizes_to_int() -> None:
    """Caffe reads min_size 21.9 as 21: a float port is off by 0.9 pixels."""
    layer = layer_text("PriorBox", "prior_box_param { min_size: 21.9 }", n_bottoms=2)
    net = net_from_text(net_text(layer, (1, 1, 1, 1), (1, 3, 100, 100)))
    with torch.no_grad():
        out = build_module(net)(torch.zeros(1, 1, 1, 1), torch.zeros(1, 3, 100, 100)).numpy()
    np.testing.assert_allclose(out[0, 0], [0.395, 0.395, 0.605, 0.605], rtol=1e-6)


def _priors(body: str) -> np.ndarray:
    layer = layer_text("PriorBox", f"prior_box_param {{ {body} }}", n_bottoms=2)
    net = net_from_text(net_text(layer, (1, 1, 1, 1), (1, 3, 20, 20)))
    with torch.no_grad():
        return build_module(net)(torch.zeros(1, 1, 1, 1), torch.zeros(1, 3, 20, 20)).numpy()


def test_prior_box_zero_aspect_ratio_flips_to_inf() -> None:
    """LayerSetUp lists 1./0 = inf (no check): boxes of zero width / infinite height and back
    (this raised ZeroDivisionError)."""
    out = _priors("min_size: 10 aspect_ratio: 0 flip: true")
    inf = np.inf
    np.testing.assert_array_equal(out[0, 0], [0.25, 0.25, 0.75, 0.75, 0.5, -inf, 0.5, inf,
                                              -inf, 0.5, inf, 0.5])


def test_prior_box_nan_aspect_ratio_is_a_prior() -> None:
    """fabs(NaN - x) < 1e-6 is false, so Caffe lists a NaN ratio and makes a (NaN) prior for
    it: 2 priors, not 1 (a port testing ``>= 1e-6`` drops it)."""
    out = _priors("min_size: 10 aspect_ratio: nan flip: false")
    assert out.shape == (1, 2, 8)
    np.testing.assert_array_equal(out[0, 0, :4], [0.25, 0.25, 0.75, 0.75])
    assert np.isnan(out[0, 0, 4:]).all()


@pytest.mark.parametrize("body", [
    "min_size: nan", "min_size: inf", "min_size: 10 max_size: nan", "min_size: 10 max_size: inf",
    "min_size: 10 variance: nan", "min_size: 10 variance: 0.1 variance: nan variance: 1 "
    "variance: 1",
])
def test_prior_box_refuses_nan_and_infinite_sizes(body: str) -> None:
    """NaN fails the source's CHECK_GTs; an infinite size has no int value (was ValueError)."""
    layer = layer_text("PriorBox", f"prior_box_param {{ {body} }}", n_bottoms=2)
    with pytest.raises(CaffeBridgeError, match="PriorBox"):
        net_from_text(net_text(layer, (1, 1, 1, 1), (1, 3, 20, 20)))


# --------------------------------------------------------------------------- DetectionOutput

def do_net(body: str, n: int, p: int, c: int, loc_classes: int = 1) -> str:
    dims = [(n, p * loc_classes * 4), (n, p * c), (1, 2, p * 4)]
    shapes = " ".join("shape {" + "".join(f" dim: {d}" for d in s) + " }" for s in dims)
    return ('name: "t"\nlayer { name: "in" type: "Input" top: "loc" top: "conf" top: "prior" '
            f"input_param {{ {shapes} }} }}\n"
            'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
            f'bottom: "prior" top: "out" detection_output_param {{ {body} }} }}\n')


def do_inputs(seed: int, n: int, p: int, c: int, loc_classes: int = 1, levels: int = 0
              ) -> dict[str, np.ndarray]:
    """Priors on a coarse grid (many overlaps), small offsets; ``levels`` > 0 quantises the
    scores to that many values (ties)."""
    rng = np.random.default_rng(seed)
    ctr = rng.integers(0, 4, (p, 2)) / 4 + 0.125
    size = rng.choice([0.2, 0.3, 0.5], (p, 2))
    prior = np.concatenate([ctr - size / 2, ctr + size / 2], 1).reshape(-1)
    var = np.tile([0.1, 0.1, 0.2, 0.2], p)
    conf = rng.uniform(0, 1, (n, p * c))
    if levels:
        conf = np.round(conf * levels) / levels
    return {"loc": rng.normal(0, 0.5, (n, p * loc_classes * 4)).astype(np.float32),
            "conf": conf.astype(np.float32),
            "prior": np.stack([prior, var])[None].astype(np.float32)}


def run_both(text: str, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    net = net_from_text(text)
    ref = reference.run_net(net, feeds)["out"]
    model = build_module(net)
    with torch.no_grad():
        got = model(*(torch.from_numpy(feeds[k]) for k in ("loc", "conf", "prior"))).numpy()
    return got, ref


def assert_rows(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    np.testing.assert_array_equal(got[..., :3], ref[..., :3].astype(np.float32))
    np.testing.assert_allclose(got[..., 3:], ref[..., 3:], atol=1e-6)


NMS = "nms_param { nms_threshold: 0.45 top_k: 12 }"
CASES = {
    "center-size-keep-top-k": (f"num_classes: 4 code_type: CENTER_SIZE keep_top_k: 9 "
                               f"confidence_threshold: 0.2 {NMS}", 2, 40, 4, 1, 0),
    "ties": (f"num_classes: 3 code_type: CENTER_SIZE keep_top_k: 7 confidence_threshold: 0.1 "
             f"{NMS}", 2, 40, 3, 1, 4),
    "eta": ("num_classes: 3 code_type: CENTER_SIZE confidence_threshold: 0.05 "
            "nms_param { nms_threshold: 0.8 eta: 0.9 }", 1, 40, 3, 1, 0),
    "unshared-corner-size-no-bg": ("num_classes: 3 share_location: false background_label_id: -1"
                                   " code_type: CORNER_SIZE confidence_threshold: 0.3 "
                                   "variance_encoded_in_target: true nms_param { "
                                   "nms_threshold: 0.3 }", 2, 30, 3, 3, 0),
    "opencv-clip": ("num_classes: 3 code_type: CENTER_SIZE confidence_threshold: 0.2 clip: true "
                    + NMS, 2, 40, 3, 1, 0),
    "top-k-beside-nms-param": ("num_classes: 3 code_type: CENTER_SIZE confidence_threshold: 0.1 "
                               "top_k: 6 nms_param { nms_threshold: 0.45 }", 1, 40, 3, 1, 0),
    "corner-no-threshold": ("num_classes: 2 background_label_id: 1 nms_param { nms_threshold: "
                            "0.5 top_k: 400 }", 1, 25, 2, 1, 0),
}


@pytest.mark.parametrize("body,n,p,c,lc,levels", CASES.values(), ids=CASES.keys())
def test_detection_output(body: str, n: int, p: int, c: int, lc: int, levels: int) -> None:
    for seed in range(3):
        got, ref = run_both(do_net(body, n, p, c, lc), do_inputs(seed, n, p, c, lc, levels))
        assert ref.shape[2] > n  # real detections, not the empty rows
        assert_rows(got, ref)


def test_detection_output_no_detection_rows() -> None:
    text = do_net("num_classes: 3 confidence_threshold: 0.99 " + NMS, 3, 10, 3)
    feeds = do_inputs(0, 3, 10, 3)
    feeds["conf"][:] = 0.5
    got, ref = run_both(text, feeds)
    assert_rows(got, ref)
    np.testing.assert_array_equal(got[0, 0], [[i] + [-1] * 6 for i in range(3)])


def test_detection_output_empty_image_has_no_row_when_others_detect() -> None:
    text = do_net("num_classes: 3 confidence_threshold: 0.5 " + NMS, 2, 10, 3)
    feeds = do_inputs(1, 2, 10, 3)
    feeds["conf"][1] = 0.1
    got, ref = run_both(text, feeds)
    assert_rows(got, ref)
    assert set(got[0, 0, :, 0]) == {0.0}


def test_nms_ties_and_threshold_equality() -> None:
    """Equal scores keep prior order (std::stable_sort) and an overlap exactly at the threshold
    is kept (``<=``): torchvision-style NMS (``>=`` suppression) would drop box 1."""
    text = do_net("num_classes: 2 code_type: CORNER nms_param { nms_threshold: 0.3333333333 }",
                  1, 3, 2)
    prior = np.array([[0, 0, .5, .25], [.25, 0, .75, .25], [0, 0, .5, .25]], np.float32)
    feeds = {"loc": np.zeros((1, 12), np.float32),
             "conf": np.array([[0, .5, 0, .5, 0, .5]], np.float32),
             "prior": np.stack([prior.reshape(-1), np.full(12, 0.1)])[None].astype(np.float32)}
    got, ref = run_both(text, feeds)
    assert_rows(got, ref)
    np.testing.assert_allclose(got[0, 0, :, 3], [0, 0.25])  # boxes 0 and 1; 2 duplicates 0


def test_detection_output_retraces_and_batches() -> None:
    body, n, p, c, lc, lv = CASES["center-size-keep-top-k"]
    net = net_from_text(do_net(body, 1, p, c))
    model = torch.fx.symbolic_trace(build_module(net))
    feeds = do_inputs(5, 3, p, c)
    big = net_from_text(do_net(body, 3, p, c))
    ref = reference.run_net(big, feeds)["out"]
    with torch.no_grad():
        got = model(*(torch.from_numpy(feeds[k]) for k in ("loc", "conf", "prior"))).numpy()
    assert_rows(got, ref)
    assert sorted(set(got[0, 0, :, 0])) == [0, 1, 2]


def test_detection_output_refuses_to_be_traced_for_export() -> None:
    net = net_from_text(do_net("num_classes: 3 " + NMS, 1, 10, 3))
    feeds = do_inputs(0, 1, 10, 3)
    args = tuple(torch.from_numpy(feeds[k]) for k in ("loc", "conf", "prior"))
    msg = r"DetectionOutput layer 'det' \(bottoms loc, conf, prior\) cannot be exported"
    with pytest.raises(RuntimeError, match=msg):
        torch.jit.trace(build_module(net), args, check_trace=False)


def test_detection_output_rejects_other_inputs() -> None:
    text = do_net("num_classes: 3", 1, 4, 3)
    six = text.replace('bottom: "prior"', 'bottom: "prior"' + ' bottom: "loc"' * 3)
    with pytest.raises(CaffeBridgeError, match="neither SSD's"):
        net_from_text(six)
    with pytest.raises(CaffeBridgeError, match="arm_conf"):  # 16 values, 4 priors want 8
        net_from_text(text.replace('bottom: "prior"', 'bottom: "prior" bottom: "loc"'))


def refinedet_net(body: str, n: int, p: int, c: int, arm_loc: bool) -> str:
    text = do_net(body, n, p, c)
    extra = f" shape {{ dim: {n} dim: {p * 2} }}" + (f" shape {{ dim: {n} dim: {p * 4} }}"
                                                     if arm_loc else "")
    tops = ' top: "arm_conf"' + (' top: "arm_loc"' if arm_loc else "")
    text = text.replace('top: "prior" ', 'top: "prior"' + tops + " ", 1)
    text = text.replace(" } }\nlayer", extra + " } }\nlayer", 1)
    return text.replace('bottom: "prior"', 'bottom: "prior" bottom: "arm_conf"'
                        + (' bottom: "arm_loc"' if arm_loc else ""))


@pytest.mark.parametrize("arm_loc", [False, True], ids=["arm-conf", "arm-conf-and-loc"])
def test_refinedet_detection_output(arm_loc: bool) -> None:
    """RefineDet's ARM inputs: easy negatives become background; arm_loc refines the priors."""
    body = ("num_classes: 4 code_type: CENTER_SIZE keep_top_k: 20 confidence_threshold: 0.2 "
            "objectness_score: 0.3 nms_param { nms_threshold: 0.45 top_k: 30 }")
    n, p, c = 2, 40, 4
    net = net_from_text(refinedet_net(body, n, p, c, arm_loc))
    for seed in range(3):
        feeds = do_inputs(seed, n, p, c)
        rng = np.random.default_rng(seed + 10)
        obj = rng.uniform(0, 1, (n, p, 1))
        feeds["arm_conf"] = np.concatenate([1 - obj, obj], -1).reshape(n, -1).astype(np.float32)
        if arm_loc:
            feeds["arm_loc"] = rng.normal(0, 0.5, (n, p * 4)).astype(np.float32)
        ref = reference.run_net(net, feeds)["out"]
        with torch.no_grad():
            got = build_module(net)(*(torch.from_numpy(feeds[k]) for k in net.inputs)).numpy()
        assert_rows(got, ref)
        plain, _ = run_both(do_net(body, n, p, c), {k: feeds[k] for k in ("loc", "conf", "prior")})
        assert plain.shape != got.shape or np.abs(plain - got).max() > 0.01  # the ARM matters


def test_rel_err_helper_sanity() -> None:
    assert rel_err(np.ones(2), np.ones(2)) == 0


def test_opencv_clip_changes_the_result() -> None:
    """OpenCV's ``clip: 1`` (res10 face detector) clamps before NMS: ignoring it is wrong."""
    body, n, p, c, lc, lv = CASES["opencv-clip"]
    feeds = do_inputs(0, n, p, c, lc, lv)
    got, ref = run_both(do_net(body, n, p, c, lc), feeds)
    plain, _ = run_both(do_net(body.replace("clip: true", ""), n, p, c, lc), feeds)
    assert got.min() >= -0 and got[..., 3:].max() <= 1
    assert plain.shape != got.shape or np.abs(plain - got).max() > 0.01


def test_normalized_bbox_false_is_refused() -> None:
    with pytest.raises(CaffeBridgeError, match="normalized_bbox"):
        build_module(net_from_text(do_net("num_classes: 3 normalized_bbox: false", 1, 4, 3)))


def test_opencv_explicit_prior_sizes_are_refused() -> None:
    layer = layer_text("PriorBox", "prior_box_param { min_size: 4 width: 3 height: 5 }",
                       n_bottoms=2)
    with pytest.raises(CaffeBridgeError, match="width/height"):
        net_from_text(net_text(layer, (1, 1, 2, 2), (1, 3, 8, 8)))
