"""R-CNN layers against the numpy reference: ROIPooling, PSROIPooling, the RPN proposal layer
(py-faster-rcnn's Python layer and OpenCV's Proposal type)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import caffe_bridge.converters  # noqa: F401  (registers the shape rules)
from caffe_bridge.build import build_module
from caffe_bridge.converters.rcnn import roi_max_pool
from tests import reference
from tests.helpers.layer_check import check_layer, layer_text, net_from_text, net_text, rel_err

COVERS = {"ROIPooling", "PSROIPooling", "Proposal", "Python:rpn.proposal_layer.ProposalLayer"}


def rois_array(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, np.float32)


AWKWARD_ROIS = rois_array([
    [0, 0, 0, 15, 15],        # whole map at scale 1/16... of a 16-pixel roi
    [1, 8, 8, 8, 8],          # one pixel, rounds from a .5 coordinate at scale 1/16
    [0, -40, -40, 500, 500],  # spills over every side
    [1, 300, 300, 400, 400],  # wholly outside the map: every bin empty -> 0
    [0, 40, 24, 39, 23],      # x2 < x1: forced 1 x 1
    [1, 23.99, 8, 72.01, 100],
    [0, 24, 40, 56, 56],      # .5 after scaling: C rounds halves away from zero
])


def roi_net(pooled: tuple[int, int], scale: float, x: tuple[int, ...], n_rois: int) -> str:
    body = (f"roi_pooling_param {{ pooled_h: {pooled[0]} pooled_w: {pooled[1]} "
            f"spatial_scale: {scale} }}")
    return net_text(layer_text("ROIPooling", body, 2), x, (n_rois, 5))


@pytest.mark.parametrize("pooled,scale,x", [
    ((2, 2), 0.0625, (2, 3, 5, 7)),
    ((7, 7), 0.0625, (2, 4, 6, 5)),     # more bins than rows: overlapping, repeated bins
    ((3, 5), 0.125, (2, 2, 13, 11)),
    ((1, 1), 1.0, (2, 3, 4, 4)),
], ids=["2x2", "7x7-on-small-map", "3x5-scale8", "1x1-scale1"])
def test_roi_pooling_matches_caffe(pooled: tuple[int, int], scale: float,
                                   x: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    feeds = {"data": rng.standard_normal(x).astype(np.float32), "b1": AWKWARD_ROIS}
    check_layer(roi_net(pooled, scale, x, len(AWKWARD_ROIS)), inputs=feeds, weights={}, rtol=0)


def test_roi_pooling_random_rois() -> None:
    rng = np.random.default_rng(4)
    n = 40
    xy = rng.uniform(-20, 140, (n, 4)).astype(np.float32)
    rois = np.concatenate([rng.integers(0, 2, (n, 1)).astype(np.float32), xy], axis=1)
    feeds = {"data": rng.standard_normal((2, 3, 9, 8)).astype(np.float32), "b1": rois}
    check_layer(roi_net((6, 6), 1 / 16, (2, 3, 9, 8), n), inputs=feeds, weights={}, rtol=0)


def test_roi_pooling_empty_bin_is_zero_and_negative_max_survives() -> None:
    """An empty bin gives 0 (not -inf); a bin of negatives gives their max (not 0)."""
    x = -np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)
    rois = rois_array([[0, 0, 0, 1, 1], [0, 10, 10, 12, 12]])
    net = net_from_text(roi_net((2, 2), 1.0, (1, 1, 4, 4), 2))
    with torch.no_grad():
        out = build_module(net)(torch.from_numpy(x), torch.from_numpy(rois)).numpy()
    np.testing.assert_array_equal(out[0, 0], [[-1, -2], [-5, -6]])
    np.testing.assert_array_equal(out[1, 0], np.zeros((2, 2)))


def test_roi_rounding_is_c_round() -> None:
    """40 / 16 = 2.5: C's round gives column 3, torch.round (halves to even) column 2."""
    x = np.arange(5, dtype=np.float32)[None, None, None, :].repeat(2, 2)
    rois = rois_array([[0, 40, 0, 40, 0]])
    net = net_from_text(roi_net((1, 1), 1 / 16, (1, 1, 2, 5), 1))
    with torch.no_grad():
        out = build_module(net)(torch.from_numpy(x), torch.from_numpy(rois)).numpy()
    assert out.item() == 3.0  # round(2.5) == 3 in C; banker's rounding would read column 2


def test_roi_pooling_retraces_with_fx() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    model = build_module(net_from_text(roi_net((3, 3), 0.0625, x.shape, len(AWKWARD_ROIS))))
    traced = torch.fx.symbolic_trace(model)
    args = (torch.from_numpy(x), torch.from_numpy(AWKWARD_ROIS))
    with torch.no_grad():
        assert torch.equal(traced(*args), model(*args))


def psroi_net(dim: int, g: int, scale: float, x: tuple[int, ...], n_rois: int) -> str:
    body = f"psroi_pooling_param {{ spatial_scale: {scale} output_dim: {dim} group_size: {g} }}"
    return net_text(layer_text("PSROIPooling", body, 2), x, (n_rois, 5))


@pytest.mark.parametrize("dim,g,scale,hw", [
    (2, 3, 0.0625, (5, 7)),
    (3, 7, 0.0625, (6, 5)),   # 7 x 7 bins on a 6 x 5 map: empty and repeated bins
    (1, 2, 0.125, (13, 11)),
], ids=["3x3", "7x7-small-map", "2x2-scale8"])
def test_psroi_pooling_matches_caffe(dim: int, g: int, scale: float,
                                     hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(6)
    x = (2, dim * g * g, *hw)
    feeds = {"data": rng.standard_normal(x).astype(np.float32), "b1": AWKWARD_ROIS}
    check_layer(psroi_net(dim, g, scale, x, len(AWKWARD_ROIS)), inputs=feeds, weights={},
                rtol=1e-6)


def test_psroi_channel_layout() -> None:
    """Bin (i, j) of output channel k reads input channel (k * G + i) * G + j: a constant map
    per input channel shows which one each bin read."""
    g, dim = 2, 2
    x = np.arange(dim * g * g, dtype=np.float32)[None, :, None, None] * np.ones((1, 1, 4, 4),
                                                                            np.float32)
    rois = rois_array([[0, 0, 0, 3, 3]])
    net = net_from_text(psroi_net(dim, g, 1.0, x.shape, 1))
    with torch.no_grad():
        out = build_module(net)(torch.from_numpy(x), torch.from_numpy(rois)).numpy()
    np.testing.assert_array_equal(out[0], [[[0, 1], [2, 3]], [[4, 5], [6, 7]]])


def test_psroi_rejects_channel_mismatch() -> None:
    from caffe_bridge.errors import ShapeError

    with pytest.raises(ShapeError, match="output_dim"):
        net_from_text(psroi_net(2, 3, 0.0625, (1, 17, 4, 4), 1))


# --- proposal layer ---------------------------------------------------------------------

PY_PROPOSAL = ('layer {{ name: "l" type: "Python" bottom: "data" bottom: "b1" bottom: "b2" '
               'top: "rois"{extra} python_param {{ module: "rpn.proposal_layer" '
               'layer: "ProposalLayer" param_str: "{param}" }} }}')
CV_PROPOSAL = ('layer {{ name: "l" type: "Proposal" bottom: "data" bottom: "b1" bottom: "b2" '
               'top: "rois"{extra} proposal_param {{ {param} }} }}')


def proposal_feeds(hw: tuple[int, int], a: int, seed: int, *, quantise: float = 0.0,
                   delta_scale: float = 0.3, im_info: tuple[float, ...] | None = None
                   ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 1, (1, 2 * a, *hw)).astype(np.float32)
    if quantise:
        scores = (np.round(scores / quantise) * quantise).astype(np.float32)
    deltas = (rng.standard_normal((1, 4 * a, *hw)) * delta_scale).astype(np.float32)
    info = im_info or (hw[0] * 16.0 - 5, hw[1] * 16.0 + 3, 1.0)
    return {"data": scores, "b1": deltas, "b2": np.asarray([info], np.float32)}


def run_proposal(layer: str, feeds: dict[str, np.ndarray]) -> tuple[list, list]:
    shapes = [feeds[k].shape for k in ("data", "b1", "b2")]
    net = net_from_text(net_text(layer, *shapes))
    ref = reference.run_net(net, feeds)
    with torch.no_grad():
        out = build_module(net)(*(torch.from_numpy(feeds[k]) for k in ("data", "b1", "b2")))
    outs = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in outs], [ref[v] for v in net.outputs]


def assert_same_rows(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape, (g.shape, w.shape)
        assert rel_err(g, w) <= 1e-6


@pytest.mark.parametrize("param,hw,kw", [
    ("'feat_stride': 16", (5, 7), {}),
    ("'feat_stride': 16", (4, 4), {"quantise": 0.25}),                 # many tied scores
    ("'feat_stride': 8\\n'scales': !!python/tuple [2, 4]", (6, 5), {}),
    ("'feat_stride': 16", (6, 6), {"delta_scale": 2.0}),              # boxes clip, some tiny
    ("{'feat_stride': 16}", (5, 5), {"im_info": (70.0, 90.0, 3.0)}),  # min size 16 * 3
], ids=["plain", "ties", "scales-stride8", "clipping", "min-size-scaled"])
def test_python_proposal_layer_matches_py_faster_rcnn(param: str, hw: tuple[int, int],
                                                      kw: dict) -> None:
    scales = 2 if "scales" in param else 3
    feeds = proposal_feeds(hw, 3 * scales, 7, **kw)
    for extra in ("", ' top: "scores"'):
        got, want = run_proposal(PY_PROPOSAL.format(extra=extra, param=param), feeds)
        assert len(want[0]) > 1
        assert_same_rows(got, want)
        np.testing.assert_array_equal(got[0][:, 0], 0)


@pytest.mark.parametrize("param", [
    "feat_stride: 16 pre_nms_topn: 20 post_nms_topn: 5",
    "feat_stride: 16 base_size: 8 ratio: 1 ratio: 3 scale: 4 scale: 8 nms_thresh: 0.5",
    "feat_stride: 16 min_size: 40 post_nms_topn: 0 pre_nms_topn: 0",
])
def test_opencv_proposal_type(param: str) -> None:
    a = 4 if "ratio: 3" in param else 9
    feeds = proposal_feeds((5, 6), a, 8, quantise=0.125)
    got, want = run_proposal(CV_PROPOSAL.format(extra=' top: "scores"', param=param), feeds)
    assert_same_rows(got, want)


def test_tied_scores_enter_nms_lowest_index_first() -> None:
    """Equal scores on two overlapping boxes: py-faster-rcnn sorts twice with argsort()[::-1],
    so the tie enters NMS lowest index first and the lower-index box is kept. (One reversed
    stable sort, ties highest index first, would keep the other box.)"""
    a = 9
    scores = np.zeros((1, 2 * a, 1, 12), np.float32)
    scores[0, a + 3, 0, 10:] = 0.9   # anchor 3 (ratio 1, scale 8: 128 px) at cells 10 and 11
    deltas = np.zeros((1, 4 * a, 1, 12), np.float32)
    feeds = {"data": scores, "b1": deltas, "b2": np.array([[400, 400, 1]], np.float32)}
    layer = PY_PROPOSAL.format(extra=' top: "scores"', param="'feat_stride': 16")
    got, want = run_proposal(layer, feeds)
    assert_same_rows(got, want)
    top = got[0][got[1][:, 0] == np.float32(0.9)]
    # cells 10 and 11 overlap by 112 / 144 > 0.7; cell 10's box (x1 = 160 + 7.5 - 63.5) wins.
    assert len(top) == 1 and top[0, 1] == 104.0


def test_python_layer_registered_like_a_plugin() -> None:
    """The Python layer is found under its public plugin key, Python:<module>.<layer>."""
    from caffe_bridge import converters

    assert "Python:rpn.proposal_layer.ProposalLayer" in converters.REGISTRY
    other = PY_PROPOSAL.format(extra="", param="'feat_stride': 16").replace("ProposalLayer",
                                                                            "Other")
    from caffe_bridge.errors import CaffeBridgeError

    with pytest.raises(CaffeBridgeError, match="Python:rpn.proposal_layer.Other"):
        net_from_text(net_text(other, (1, 18, 2, 2), (1, 36, 2, 2), (1, 3)))


def test_proposal_rejects_bad_param_str() -> None:
    from caffe_bridge.errors import CaffeBridgeError

    layer = PY_PROPOSAL.format(extra="", param="'stride' 16")
    with pytest.raises(CaffeBridgeError, match="param_str"):
        net_from_text(net_text(layer, (1, 18, 2, 2), (1, 36, 2, 2), (1, 3)))


def test_proposal_retraces_with_fx() -> None:
    feeds = proposal_feeds((4, 5), 9, 9)
    layer = PY_PROPOSAL.format(extra=' top: "scores"', param="'feat_stride': 16")
    net = net_from_text(net_text(layer, *(feeds[k].shape for k in ("data", "b1", "b2"))))
    model = build_module(net)
    traced = torch.fx.symbolic_trace(model)
    args = [torch.from_numpy(feeds[k]) for k in ("data", "b1", "b2")]
    with torch.no_grad():
        for a, b in zip(traced(*args), model(*args), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("body", ["dropout_param { dropout_ratio: 0.5 scale_train: false }",
                                  "dropout_param { dropout_ratio: 0.3 scale_train: false }",
                                  "dropout_param { dropout_ratio: 0.3 scale_train: true }"])
def test_fast_rcnn_dropout_scale_train(body: str) -> None:
    """caffe-fast-rcnn's Dropout with scale_train: false multiplies by (1 - ratio) at test time
    (every fc layer of py-faster-rcnn's test nets); an identity would be off by that factor."""
    check_layer(net_text(layer_text("Dropout", body), (2, 5)), rtol=1e-7)
    net = net_from_text(net_text(layer_text("Dropout", body), (2, 5)))
    x = torch.ones(2, 5)
    with torch.no_grad():
        out = build_module(net)(x)
    want = 1.0 if "true" in body else 1 - float(body.split()[3])
    assert out[0, 0].item() == pytest.approx(want, rel=1e-6)


def test_proposal_batch_runs_each_image() -> None:
    """py-faster-rcnn takes one image; a batch here gives each image's proposals in turn, with
    its index in column 0 (the reference, run per image, writes 0)."""
    one = [proposal_feeds((4, 5), 9, seed) for seed in (11, 12)]
    feeds = {k: np.concatenate([f[k] for f in one]) for k in ("data", "b1", "b2")}
    feeds["b2"][1] = (50, 70, 1.5)
    one[1]["b2"][0] = feeds["b2"][1]
    layer = PY_PROPOSAL.format(extra=' top: "scores"', param="'feat_stride': 16")
    net = net_from_text(net_text(layer, *(feeds[k].shape for k in ("data", "b1", "b2"))))
    with torch.no_grad():
        rois, scores = build_module(net)(*(torch.from_numpy(feeds[k])
                                           for k in ("data", "b1", "b2")))
    parts = [run_proposal(layer, f)[1] for f in one]
    want_rois = np.concatenate([np.c_[np.full(len(r), i), r[:, 1:]]
                                for i, (r, _) in enumerate(parts)])
    want_scores = np.concatenate([s for _, s in parts])
    assert rel_err(rois.numpy(), want_rois) <= 1e-6
    assert rel_err(scores.numpy(), want_scores) <= 1e-6


def test_no_proposal_survives_then_no_roi() -> None:
    """Every box under the min size (16 * im_info[2]): py-faster-rcnn outputs 0 x 5 rois; ROI
    pooling of no rois is 0 x C x PH x PW."""
    feeds = proposal_feeds((3, 4), 9, 13, im_info=(48.0, 64.0, 100.0))
    layer = PY_PROPOSAL.format(extra=' top: "scores"', param="'feat_stride': 16")
    got, want = run_proposal(layer, feeds)
    assert got[0].shape == want[0].shape == (0, 5) and got[1].shape == (0, 1)
    x = torch.randn(1, 3, 4, 4)
    assert roi_max_pool(x, torch.from_numpy(got[0]), 2, 2, 1.0).shape == (0, 3, 2, 2)
