"""IR -> ``torch.fx.GraphModule``: one ``call_module`` node per Caffe layer."""

from __future__ import annotations

import keyword
import operator
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence

from torch import fx, nn

from caffe_bridge.caffemodel import release_pages
from caffe_bridge.errors import CaffeBridgeWarning, ShapeError
from caffe_bridge.ir import Layer, Net, load_net
from caffe_bridge.micro_batch import PART_LIMIT, CaffeGraphModule, part_limit

CAFFE_LAYER = "caffe_layer"  # node.meta key: the Caffe layer a call_module node computes
CAFFE_TOPS = "caffe_tops"  # node.meta key: the IR values it produces (layer names may repeat)
CAFFE_SHAPES = "caffe_shapes"  # node.meta key: its bottoms' shapes in the definition
CAFFE_FOLDED = "caffe_folded"  # node.meta key: a convolution's own layer, once BN is folded in


def safe_identifier(name: str, taken: set[str]) -> str:
    """A Python identifier derived from a Caffe name, unique within ``taken`` (which it extends).

    Names never reach generated source as code: anything outside ``[A-Za-z0-9_]`` becomes ``_``.
    """
    ident = re.sub(r"\W", "_", name, flags=re.ASCII).strip("_") or "layer"
    if ident[0].isdigit():
        ident = f"l_{ident}"
    if keyword.iskeyword(ident) or ident in {"self", "forward", "training", "to", "cuda"}:
        ident = f"{ident}_"
    candidate, k = ident, 1
    while candidate in taken or hasattr(nn.Module, candidate):
        k += 1
        candidate = f"{ident}_{k}"
    taken.add(candidate)
    return candidate


def _fusable(first: Layer, second: Layer, uses: Counter[str], keep: set[str]) -> bool:
    return (
        len(first.tops) == 1
        and second.bottoms == first.tops
        and uses[first.tops[0]] == 1
        and first.tops[0] not in keep
    )


def build_module(net: Net, outputs: Sequence[str] | None = None) -> fx.GraphModule:
    """Assemble the converted layers of ``net`` into an eval-mode GraphModule.

    ``outputs`` are Caffe blob names (their value after the last in-place writer); by default
    the net's own outputs. One output returns a tensor, several a tuple.
    """
    from caffe_bridge import converters  # registers the built-in converters

    converters.load_plugins()
    registry = converters.REGISTRY
    out_values = [net.value(n) for n in outputs] if outputs else list(net.outputs)
    if not out_values:
        raise ShapeError("the net has no output blob", file=net.source)
    keep = set(out_values)
    uses: Counter[str] = Counter(b for layer in net.layers for b in layer.bottoms)

    root = nn.Module()
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    taken: set[str] = set()
    layers = list(net.layers)
    i = 0
    while i < len(layers):
        layer = layers[i]
        if layer.type == "Input":
            for top in layer.tops:
                env[top] = graph.placeholder(safe_identifier(top, taken))
            i += 1
            continue
        module: nn.Module | None = None
        produced = layer
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if nxt is not None and _fusable(layer, nxt, uses, keep):
            fuse = registry.fusion(layer.type, nxt.type)
            module = fuse(layer, nxt, net) if fuse else None
            if module is not None:
                produced = nxt
                i += 1
        if module is None:
            module = registry.convert(layer, net)
        release_pages(layer.blobs + (produced.blobs if produced is not layer else ()))
        attr = safe_identifier(produced.name, taken)
        root.add_module(attr, module)
        node = graph.call_module(attr, tuple(env[b] for b in layer.bottoms))
        node.meta[CAFFE_LAYER] = produced.name
        node.meta[CAFFE_TOPS] = tuple(produced.tops)
        node.meta[CAFFE_SHAPES] = tuple(net.blobs[b].shape for b in layer.bottoms)
        if len(produced.tops) == 1:
            env[produced.tops[0]] = node
        else:
            for k, top in enumerate(produced.tops):
                env[top] = graph.call_function(operator.getitem, (node, k))
        i += 1
    missing = [v for v in out_values if v not in env]
    if missing:
        raise ShapeError(f"requested outputs {missing} are not computed", file=net.source)
    result = env[out_values[0]] if len(out_values) == 1 else tuple(env[v] for v in out_values)
    graph.output(result)
    graph.lint()
    gm = CaffeGraphModule(root, graph, class_name=_class_name(net))
    gm.meta[PART_LIMIT] = part_limit(net, registry.per_sample)
    gm.eval()
    return gm


def caffe_layer_names(gm: fx.GraphModule) -> dict[str, str]:
    """Submodule name -> the Caffe layer it computes (from ``node.meta``), in graph order."""
    return {node.target: node.meta[CAFFE_LAYER] for node in gm.graph.nodes
            if node.op == "call_module" and CAFFE_LAYER in node.meta}


def _class_name(net: Net) -> str:
    ident = re.sub(r"\W", "_", net.name or "CaffeNet", flags=re.ASCII).strip("_") or "CaffeNet"
    return ident if ident[0].isalpha() else f"Net_{ident}"


def convert(
    prototxt: str | os.PathLike[str] | Net,
    caffemodel: str | os.PathLike[str] | None = None,
    *,
    outputs: Sequence[str] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    exact: bool = False,
) -> fx.GraphModule:
    """Convert a Caffe definition (and weights) to an eval-mode ``torch.fx.GraphModule``.

    ``forward`` takes the net's inputs (NCHW float32) in declaration order and returns its output
    blob, a tuple when there are several, or the blobs named in ``outputs``. ``input_shapes``
    is passed to :func:`caffe_bridge.load_net` (shapes of data layers' tops in train/test files).

    By default the model is in its fast form (:mod:`caffe_bridge.fast`: BatchNorm folded into
    convolutions, channels-last pooling), which differs from Caffe's order of operations only
    within float32 rounding (measured per net in ``tests/test_fast_default.py``). ``exact=True``
    keeps one module per Caffe layer and Caffe's order of operations (every intermediate blob,
    trainable BatchNorm modules).
    """
    net = prototxt if isinstance(prototxt, Net) else load_net(prototxt, caffemodel,
                                                               input_shapes=input_shapes)
    warn_unused_weights(net, caffemodel)
    model = build_module(net, outputs)
    if exact:
        return model
    from caffe_bridge.fast import make_fast

    return make_fast(model)


def warn_unused_weights(net: Net, caffemodel: str | os.PathLike[str] | None) -> None:
    """Weights for layers the definition lacks are reported, never silently dropped."""
    if net.unused_weights:
        where = f"{caffemodel}: " if caffemodel is not None else ""
        warnings.warn(
            f"{where}weights of {len(net.unused_weights)} layer(s) that {net.source} "
            f"lacks were not used: {', '.join(net.unused_weights)}",
            CaffeBridgeWarning, stacklevel=3,
        )


def optimize_for_inference(model: fx.GraphModule) -> fx.GraphModule:
    """The fast form of an exact converted model (a copy): what ``convert`` returns by default.

    See :mod:`caffe_bridge.fast`. Feed it NCHW or channels-last inputs.
    """
    from caffe_bridge.fast import fast_model

    return fast_model(model)
