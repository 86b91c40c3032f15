"""The data of ``caffe2torch inspect``: per-layer shapes, parameter counts, FLOPs, weight coverage.

Conventions:

* **params** counts the elements of every parameter blob Caffe stores for a layer
  (``Layer.param_shapes``): BatchNorm's mean, variance and scale factor included.
* **FLOPs** are ``2 x multiply-accumulates`` of Convolution, Deconvolution and InnerProduct
  for the batch size of the definition's inputs; bias additions and every other layer
  (pooling, BatchNorm, Scale, activations, ...) count 0. Papers often quote multiply-accumulates
  as "FLOPs": divide by two to compare (SE-ResNet-50: 2 x 3.86 G).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from caffe_bridge.deploy import CreatedInput, DroppedLayer
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.ir import Layer, Net, load_net, with_weights
from caffe_bridge.shapes import canonical_axis, conv_geometry


@dataclass(frozen=True)
class LayerRow:
    """One line of the layer table."""

    name: str
    type: str
    tops: tuple[str, ...]  # Caffe blob names
    top_shapes: tuple[tuple[int, ...], ...]
    params: int
    flops: int


@dataclass(frozen=True)
class WeightsReport:
    """How a caffemodel covers a definition."""

    path: str
    unused: tuple[str, ...]  # caffemodel layers with blobs that the prototxt lacks
    missing: tuple[str, ...]  # parameter layers of the prototxt the caffemodel has no blobs for
    mismatched: tuple[tuple[str, str], ...] = ()  # (layer, message) for wrong blob count/shape

    @property
    def ok(self) -> bool:
        return not (self.unused or self.missing or self.mismatched)


@dataclass(frozen=True)
class NetSummary:
    """Everything ``inspect`` shows for one definition."""

    name: str
    source: str
    inputs: dict[str, tuple[int, ...]]
    outputs: tuple[str, ...]  # Caffe blob names
    rows: tuple[LayerRow, ...]
    weights: WeightsReport | None = None
    dropped: tuple[DroppedLayer, ...] = ()  # training/evaluation layers left out
    created_inputs: tuple[CreatedInput, ...] = ()  # inputs made from data layers
    total_params: int = field(init=False)
    total_flops: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_params", sum(r.params for r in self.rows))
        object.__setattr__(self, "total_flops", sum(r.flops for r in self.rows))


def layer_flops(layer: Layer, net: Net) -> int:
    """``2 x multiply-accumulates`` of one layer (0 outside Convolution/Deconvolution/IP)."""
    if layer.type in ("Convolution", "Deconvolution"):
        if not layer.bottoms:
            return 0
        x = net.blobs[layer.bottoms[0]].shape
        cp = layer.param.convolution_param
        axis = canonical_axis(cp.axis, len(x))
        geo = conv_geometry(cp, len(x) - axis - 1)
        kernel = math.prod(geo.kernel)
        group = max(1, cp.group)
        total = 0
        for bottom, top in zip(layer.bottoms, layer.tops, strict=True):
            bshape = net.blobs[bottom].shape
            tshape = net.blobs[top].shape
            if layer.type == "Convolution":  # every output pixel: C_in/group * k taps
                macs = math.prod(tshape) * (bshape[axis] // group) * kernel
            else:  # every input pixel scatters into num_output/group * k outputs
                macs = math.prod(bshape) * (cp.num_output // group) * kernel
            total += 2 * macs
        return total
    if layer.type == "InnerProduct":
        top = net.blobs[layer.tops[0]].shape
        x = net.blobs[layer.bottoms[0]].shape
        axis = canonical_axis(layer.param.inner_product_param.axis, len(x))
        return 2 * math.prod(top) * math.prod(x[axis:])
    return 0


def summarize(net: Net, weights: WeightsReport | None = None) -> NetSummary:
    """The layer table of ``net`` (Input layers included, with no params/FLOPs)."""
    rows = []
    for layer in net.layers:
        rows.append(LayerRow(
            name=layer.name,
            type=layer.type,
            tops=tuple(layer.caffe_tops),
            top_shapes=tuple(net.blobs[t].shape for t in layer.tops),
            params=sum(math.prod(s) for s in layer.param_shapes),
            flops=layer_flops(layer, net),
        ))
    outputs = tuple(net.blobs[v].caffe_name for v in net.outputs)
    return NetSummary(net.name, net.source, dict(net.inputs), outputs, tuple(rows), weights,
                      net.dropped, net.created_inputs)


def summary_json(summary: NetSummary) -> dict[str, object]:
    """``inspect --json``: the summary as plain JSON types."""
    report = summary.weights
    return {
        "name": summary.name,
        "source": summary.source,
        "inputs": {k: list(v) for k, v in summary.inputs.items()},
        "outputs": list(summary.outputs),
        "layers": [{"name": r.name, "type": r.type, "tops": list(r.tops),
                    "top_shapes": [list(s) for s in r.top_shapes], "params": r.params,
                    "flops": r.flops} for r in summary.rows],
        "total_params": summary.total_params,
        "total_flops": summary.total_flops,
        "dropped_layers": [{"name": d.name, "type": d.type, "line": d.line, "reason": d.reason}
                           for d in summary.dropped],
        "created_inputs": [{"name": c.name, "layer": c.layer, "layer_type": c.layer_type,
                            "shape": list(c.shape), "shape_from": c.source}
                           for c in summary.created_inputs],
        "weights": None if report is None else {
            "path": report.path, "ok": report.ok, "unused": list(report.unused),
            "missing": list(report.missing),
            "mismatched": [{"layer": n, "message": m} for n, m in report.mismatched]},
    }


def check_weights(net: Net, caffemodel: str | os.PathLike[str]) -> WeightsReport:
    """Compare a caffemodel with ``net`` (loaded without weights) instead of failing on gaps."""
    from caffe_bridge.caffemodel import read_caffemodel_layers

    path = os.fspath(caffemodel)
    records = read_caffemodel_layers(path)
    names = {layer.name for layer in net.layers}
    given: dict[str, tuple] = {}
    for rec in records:
        if rec.blobs:
            given[rec.name] = rec.blobs  # a repeated name: the last record wins, as in Caffe
    unused = tuple(n for n in given if n not in names)
    missing: list[str] = []
    mismatched: list[tuple[str, str]] = []
    seen: set[str] = set()
    for layer in net.layers:
        blobs = given.get(layer.name) if layer.name not in seen else None
        seen.add(layer.name)
        if not layer.param_shapes:
            if blobs:
                mismatched.append((layer.name, f"{len(blobs)} blob(s) for a layer that takes "
                                               f"none"))
            continue
        if blobs is None:
            missing.append(layer.name)
            continue
        try:
            with_weights(net, {layer.name: blobs})
        except CaffeBridgeError as err:
            mismatched.append((layer.name, err.message))
    return WeightsReport(path, unused, tuple(missing), tuple(mismatched))


def inspect_files(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | None = None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> NetSummary:
    """Summary of a definition and, when given, how its weights file covers it."""
    net = load_net(prototxt, input_shapes=input_shapes)
    report = check_weights(net, caffemodel) if caffemodel is not None else None
    return summarize(net, report)
