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

from google.protobuf import message as pb_message

from caffe_bridge import shapes
from caffe_bridge.deploy import CreatedInput, DroppedLayer, read_deploy_form
from caffe_bridge.errors import (
    CaffeBridgeError,
    PrototxtError,
    ShapeError,
    UnsupportedLayerError,
)
from caffe_bridge.ir import Layer, Net, load_net, with_weights
from caffe_bridge.shapes import Shape, canonical_axis, conv_geometry


@dataclass(frozen=True)
class LayerRow:
    """One line of the layer table."""

    name: str
    type: str
    tops: tuple[str, ...]  # Caffe blob names
    top_shapes: tuple[tuple[int, ...], ...]
    params: int
    flops: int
    shapes_known: bool = True  # False after a layer type no converter handles (partial table)


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
    # Layers that do not convert: no converter (type or Python registry key) or a shape rule
    # fails; (name, type, message). When set,
    # the table is partial (shapes after them unknown, no FLOPs) and the net does not convert.
    unsupported: tuple[tuple[str, str, str], ...] = ()
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
                    "top_shapes": [list(s) for s in r.top_shapes] if r.shapes_known else None,
                    "params": r.params,
                    "flops": r.flops} for r in summary.rows],
        "total_params": summary.total_params,
        "total_flops": summary.total_flops,
        "dropped_layers": [{"name": d.name, "type": d.type, "line": d.line, "reason": d.reason}
                           for d in summary.dropped],
        "created_inputs": [{"name": c.name, "layer": c.layer, "layer_type": c.layer_type,
                            "shape": list(c.shape), "shape_from": c.source}
                           for c in summary.created_inputs],
        "unsupported": [{"name": n, "type": t, "message": m}
                        for n, t, m in summary.unsupported],
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
    """Summary of a definition and, when given, how its weights file covers it.

    A definition with layer types no converter handles still gets a (partial) summary that names
    them; its weights are then not checked.
    """
    try:
        net = load_net(prototxt, input_shapes=input_shapes)
    except UnsupportedLayerError:
        return partial_summary(prototxt, input_shapes=input_shapes)
    except PrototxtError as err:
        if "has no shape in the definition" not in err.message:
            raise
        return partial_summary(prototxt, input_shapes=input_shapes)
    except ShapeError:  # shown, with its message, in the partial table
        return partial_summary(prototxt, input_shapes=input_shapes)
    report = check_weights(net, caffemodel) if caffemodel is not None else None
    return summarize(net, report)


def _partial_row(p: pb_message.Message, known: dict[str, Shape | None],
                 unsupported: list[tuple[str, str, str]]) -> LayerRow:
    """One row of a partial table; shapes only where every bottom's shape is known."""
    ins = [known.get(b) for b in p.bottom]
    result = None
    if p.type == "Input" and not all(s.dim for s in p.input_param.shape):
        pass  # a data layer's top whose shape the file does not state
    elif all(s is not None for s in ins):
        from caffe_bridge.converters.registry import registry_key

        key = registry_key(p.type, p)  # Python layers: Python:<module>.<class>, as the registry
        try:
            result = shapes.infer(p, ins)  # type: ignore[arg-type]
        except KeyError:
            unsupported.append((p.name, key, f"no converter for {key!r}"))
        except (shapes.ShapeRuleError, CaffeBridgeError) as err:  # refused types, bad params
            unsupported.append((p.name, key, str(err)))
    tops = tuple(result.tops) if result is not None else (None,) * len(p.top)
    for t, shape in zip(p.top, tops, strict=False):
        known[t] = shape
    params = sum(math.prod(s) for s in result.params) if result is not None else 0
    return LayerRow(p.name, p.type, tuple(p.top), tuple(t or () for t in tops), params, 0,
                    shapes_known=result is not None)


def partial_summary(
    prototxt: str | os.PathLike[str],
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> NetSummary:
    """The layer table of a definition that does not load: some of its layer types do not
    convert (yet), or a data layer does not state its shape (shown as unknown)."""
    parsed_net, form = read_deploy_form(prototxt, input_shapes, lenient=True)
    known: dict[str, Shape | None] = {}
    unsupported: list[tuple[str, str, str]] = []
    rows = [_partial_row(raw.param, known, unsupported) for raw in form.layers]
    read = {b for raw in form.layers for b in raw.param.bottom}
    inputs = {t: known[t] or () for raw in form.layers if raw.param.type == "Input"
              for t in raw.param.top}
    outputs = tuple(dict.fromkeys(t for raw in form.layers if raw.param.type != "Input"
                                  for t in raw.param.top if t not in read and t not in
                                  form.hidden))
    return NetSummary(parsed_net.name, os.fspath(prototxt), inputs, outputs, tuple(rows), None,
                      form.dropped, form.created, tuple(unsupported))
