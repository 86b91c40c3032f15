"""Every wild-corpus definition (``tests/fixtures/wild``) converts and runs, without a caffemodel.

For each file: ``load_net`` (train/test files get their data layers' shapes from
``input_shapes.json``), at a small input where the net allows it (the inputs' spatial sizes are
overridden through ``input_shapes``: the files stay unchanged), then ``build_module`` (layers
without weights get their default initialisation, seeded) and one forward pass on a seeded
random input. Every blob the graph computes must have the shape the IR inferred, except along
the one axis a data-dependent layer sizes (detections, proposals and what is computed from
them), and the net's outputs must be finite. A file that
does not load is listed in ``REFUSED`` with the layer type it names and why; ``caffe2torch
inspect --json`` must succeed on every file and list the dropped layers and created inputs.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import fx

from caffe_bridge import UnsupportedLayerError, converters, load_net
from caffe_bridge.build import CAFFE_LAYER, build_module
from caffe_bridge.cli import main
from caffe_bridge.ir import Layer, Net
from tests.helpers.wild import FILES, INPUT_SHAPES

# Files that do not load, by stem: (the registry key of the layer type the UnsupportedLayerError
# names, why it is refused: words of the error message). None else: every other file converts.
REFUSED = {
    "faster_rcnn_vgg16_voc_train": (
        "Python:rpn.anchor_target_layer.AnchorTargetLayer",
        # so is ProposalTargetLayer (roi-data), after it: both assign ground-truth targets for
        # the losses; the test net of the same model (faster_rcnn_vgg16_voc_test) converts.
        "is a training layer"),
}

DEFAULT_SIZE = (32, 32)
# Input H x W where the default is too small for the net (the smallest size its fixed-size
# layers accept, or its own size where they admit no other). Batch is always 1.
SIZES = {
    # SSD heads: conv9_2 (3x3, no pad) needs a 3x3 map; Pelee's ext1/fe3_2 the same.
    "ssd_vgg16_300_voc0712_deploy": (257, 257),
    "ssd_vgg16_300_voc0712_test": (257, 257),
    "pelee_voc_deploy": (257, 257),
    "bvlc_alexnet_train_val": (48, 48),
    # fixed global pools: GoogLeNet's 7x7 and NiN's 6x6 average pooling.
    "bvlc_googlenet_deploy": (224, 224),
    "bvlc_googlenet_train_val": (224, 224),
    "nin_imagenet_deploy": (199, 199),
    # Inception/Xception branches concatenate maps whose sizes agree only at some inputs.
    "inception_v3_deploy": (69, 69),
    "inception_v4_deploy": (75, 75),
    "inception_resnet_v2_deploy": (69, 69),
    "xception_deploy": (43, 43),
    # text recognisers: the height is folded away at 32; Reshape fixes the width.
    "crnn_jolibrain_deploy": (32, 128),
    "lstm_ctc_jolibrain_deploy": (32, 128),
    # SegNet: pad_out_h needs H/8 odd; the others state upsample_h/w for 360 x 480.
    "segnet_basic_inference": (40, 64),
    "segnet_inference": (360, 480),
    "segnet_train": (360, 480),
    "bayesian_segnet_inference": (360, 480),
    # PSPNet: pyramid pooling kernels and Interp sizes are stated for a 60x60 map (473 input).
    "pspnet101_voc2012_473": (473, 473),
    "pspnet50_ade20k_473": (473, 473),
}
# Runs at the net's own (large) size, 2 to 6 s each on one core: marked slow, still run.
SLOW = {"segnet_inference", "segnet_train", "bayesian_segnet_inference", "pspnet101_voc2012_473",
        "pspnet50_ade20k_473"}

# Layers whose top size is data-dependent: registry key -> (the axis, whether the IR's size is
# an upper bound). DetectionOutput's IR shape is Caffe's Reshape (1 x 1 x 1 x 7), no bound.
DYNAMIC = {
    "DetectionOutput": (2, False),
    "Yolov3DetectionOutput": (2, True),
    "YoloDetectionOutput": (2, True),
    "Proposal": (0, True),
    "Python:rpn.proposal_layer.ProposalLayer": (0, True),
}


def _key(layer: Layer) -> str:
    if layer.type == "Python":
        py = layer.param.python_param
        return f"Python:{py.module}.{py.layer}"
    return layer.type


def small_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Input shapes for ``path``: its image inputs at batch 1 and the size in SIZES (or the
    default), others (im_info) as stated; data layers' shapes as in input_shapes.json."""
    given = {k: tuple(v) for k, v in INPUT_SHAPES.get(path.stem, {}).items()}
    net = load_net(path, input_shapes=given or None)
    h, w = SIZES.get(path.stem, DEFAULT_SIZE)
    return {name: (1, s[1], h, w) if len(s) == 4 else s for name, s in net.inputs.items()}


def random_inputs(net: Net) -> list[torch.Tensor]:
    """Seeded N(0, 1) inputs; an ``im_info`` gets (H, W, 1) of the image input, as py-faster-rcnn
    feeds it (random values would make every proposal fall outside the image)."""
    gen = torch.Generator().manual_seed(0)
    image = next(s for s in net.inputs.values() if len(s) == 4)
    out = []
    for name, shape in net.inputs.items():
        if "im_info" in name:
            out.append(torch.tensor([[float(image[2]), float(image[3]), 1.0]] * shape[0]))
        else:
            out.append(torch.randn(shape, generator=gen))
    return out


class _Recorder(fx.Interpreter):
    """Runs the graph, noting each Caffe layer's results (shape, all finite), in layer order."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.results: list[tuple[str, list[tuple[tuple[int, ...], bool]]]] = []

    def run_node(self, n: fx.Node) -> object:
        result = super().run_node(n)
        if n.op == "call_module" and CAFFE_LAYER in n.meta:
            tensors = result if isinstance(result, tuple) else (result,)
            self.results.append((n.meta[CAFFE_LAYER], [
                (tuple(t.shape), bool(torch.isfinite(t).all())) for t in tensors]))
        return result


def computed_shapes(net: Net, gm: fx.GraphModule, xs: Sequence[torch.Tensor]
                    ) -> Iterator[tuple[str, tuple[int, ...], bool]]:
    """(value name, shape, all finite) of every top the graph computes (fused layers: the
    second's tops)."""
    rec = _Recorder(gm)
    with torch.no_grad():
        rec.run(*xs)
    pending: dict[str, list[Layer]] = {}
    for layer in net.layers:
        pending.setdefault(layer.name, []).append(layer)
    for name, results in rec.results:
        layer = pending[name].pop(0)  # a fused pair's node is named after its second layer
        for top, (shape, finite) in zip(layer.tops, results, strict=True):
            yield top, shape, finite


def dynamic_axes(net: Net) -> dict[str, tuple[int, str]]:
    """Value -> (its data-dependent axis, the layer that sizes it), for the tops of DYNAMIC
    layers and of every layer computed from one (the axis carried through unchanged)."""
    axes: dict[str, tuple[int, str]] = {}
    for layer in net.layers:
        if _key(layer) in DYNAMIC:
            found = (DYNAMIC[_key(layer)][0], layer.name)
        else:
            found = next((axes[b] for b in layer.bottoms if b in axes), None)
        if found is not None:
            axes.update(dict.fromkeys(layer.tops, found))
    return axes


def shape_mismatches(net: Net, got: dict[str, tuple[int, ...]]) -> list[str]:
    """Blobs whose computed shape differs from the IR's outside their data-dependent axis, or
    exceeds the IR's upper bound along it."""
    axes = dynamic_axes(net)
    bad = []
    for value, shape in got.items():
        want = net.blobs[value].shape
        if value not in axes:
            ok = shape == want
        else:
            axis, source = axes[value]
            bounded = DYNAMIC[_key(net.layer(source))][1] and value in net.layer(source).tops
            ok = (len(shape) == len(want)
                  and all(shape[i] == want[i] for i in range(len(want)) if i != axis)
                  and (not bounded or shape[axis] <= want[axis]))
        if not ok:
            bad.append(f"{value}: computed {shape}, IR {want}")
    return bad


def _params() -> list:
    slow = [pytest.mark.slow]
    return [pytest.param(p, marks=slow if p.stem in SLOW else (), id=p.stem) for p in FILES]


@pytest.mark.parametrize("path", _params())
def test_converts_and_runs(path: Path) -> None:
    """load_net + build_module + one forward: every blob has the IR's shape."""
    if path.stem in REFUSED:
        key, reason = REFUSED[path.stem]
        with pytest.raises(UnsupportedLayerError) as err, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_net(path, input_shapes=INPUT_SHAPES.get(path.stem))
        assert key.removeprefix("Python:") in str(err.value) and reason in str(err.value)
        assert key in converters.REGISTRY.refused()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tolerant reader's notes on unknown fields
        net = load_net(path, input_shapes=small_shapes(path))
    torch.manual_seed(0)  # converters may use torch's default initialisation without weights
    gm = build_module(net)
    xs = random_inputs(net)
    computed = list(computed_shapes(net, gm, xs))
    got = {value: shape for value, shape, _ in computed}
    assert set(net.outputs) <= set(got)
    assert len(got) >= len(net.blobs) // 2
    assert shape_mismatches(net, got) == []
    assert [v for v, _, finite in computed if v in net.outputs and not finite] == []


def _inspect_args(path: Path) -> list[str]:
    args = ["inspect", "--json", "--no-weights", str(path)]
    for name, shape in INPUT_SHAPES.get(path.stem, {}).items():
        args += ["--input-shape", f"{name}={','.join(map(str, shape))}"]
    return args


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_inspect_json_lists_dropped_layers_and_created_inputs(path: Path) -> None:
    """``caffe2torch inspect --json`` exits 0 on every file (a partial summary for a file that
    does not load, naming what it lacks) with the IR's dropped layers and created inputs."""
    run = CliRunner().invoke(main, _inspect_args(path))
    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout)
    dropped = [(d["name"], d["type"]) for d in report["dropped_layers"]]
    created = {c["name"]: tuple(c["shape"]) for c in report["created_inputs"]}
    assert all(c["layer"] and c["layer_type"] for c in report["created_inputs"])
    if path.stem in REFUSED:
        assert REFUSED[path.stem][0] in [u["type"] for u in report["unsupported"]]
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = load_net(path, input_shapes=INPUT_SHAPES.get(path.stem))
    assert report["unsupported"] == []
    assert dropped == [(d.name, d.type) for d in net.dropped]
    assert created == {c.name: tuple(c.shape) for c in net.created_inputs}
    assert (path.stem in INPUT_SHAPES) <= bool(created)  # data layers without shapes: given


def test_tables_name_corpus_files() -> None:
    """SIZES, SLOW and REFUSED name files of the corpus (none left behind by a removal)."""
    assert set(SIZES) | SLOW | set(REFUSED) <= {p.stem for p in FILES}
