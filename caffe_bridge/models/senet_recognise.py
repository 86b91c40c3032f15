"""Recognise a released SENet definition by its structure, and pair it with the released one.

:func:`recognise` names the architecture from the structure alone (stem, residual blocks per
stage, group counts, inception blocks; never the file or layer names). :func:`pair_layers`
then checks the net layer by layer against the released definition of that architecture: type,
dataflow, output shapes, parameter shapes and every setting that changes the numbers.
"""

from __future__ import annotations

from typing import Any

from caffe_bridge import shapes
from caffe_bridge.errors import PrototxtError
from caffe_bridge.ir import Layer, Net, build_net
from caffe_bridge.models.senet_layout import (
    ARCHITECTURES,
    INCEPTION_BLOCKS,
    RESIDUAL_SIGNATURES,
    Layout,
    render,
)
from caffe_bridge.prototxt import parse_prototxt_text
from caffe_bridge.upgrade import upgrade

__all__ = ["canonical_net", "pair_layers", "recognise"]


def _producer_types(net: Net, layer: Layer) -> list[str]:
    return [net.layer(net.blobs[b].producer).type for b in layer.bottoms]


def _signature(net: Net) -> dict[str, Any]:
    """What the structure says, independent of names."""
    types = [layer.type for layer in net.layers]
    first_pool = types.index("Pooling") if "Pooling" in types else len(types)
    convs = [layer for layer in net.layers if layer.type == "Convolution"]
    sig: dict[str, Any] = {
        "stem convs": sum(1 for layer in net.layers[:first_pool] if layer.type == "Convolution"),
        "max groups": max((c.param.convolution_param.group for c in convs), default=0),
    }
    stages: list[int] = []
    for layer in net.layers:
        if layer.type != "Axpy" or len(layer.bottoms) != 3:
            continue
        # A projection shortcut starts a stage (conv*_1_1x1_proj + BatchNorm + Scale).
        projection = _producer_types(net, layer)[2] in ("Convolution", "BatchNorm", "Scale")
        if projection or not stages:
            stages.append(0)
        stages[-1] += 1
    sig["SE residual blocks (Axpy) per stage"] = tuple(stages)
    sig["SE-scaled concats"] = sum(
        1
        for layer in net.layers
        if layer.type == "Scale"
        and len(layer.bottoms) == 2
        and _producer_types(net, layer)[0] == "Concat"
    )
    return sig


def recognise(net: Net) -> str:
    """Which of the seven released architectures ``net`` is, from its structure alone."""
    sig = _signature(net)
    stages = sig["SE residual blocks (Axpy) per stage"]
    if stages:
        key = (sig["stem convs"], stages, sig["max groups"])
        arch = RESIDUAL_SIGNATURES.get(key)
    elif sig["SE-scaled concats"] == INCEPTION_BLOCKS and sig["stem convs"] == 1:
        arch = "SE-BN-Inception"
    else:
        arch = None
    if arch is None:
        found = ", ".join(f"{k}: {v}" for k, v in sig.items())
        raise PrototxtError(
            f"not one of the released SENet architectures ({', '.join(ARCHITECTURES)}); "
            f"its structure: {found}",
            file=net.source,
        )
    return arch


# -- structural comparison -----------------------------------------------------------------------


def _settings(net: Net, layer: Layer) -> dict[str, Any]:
    """The settings of ``layer`` that change what it computes (defaults resolved)."""
    p, t = layer.param, layer.type
    if t == "Convolution":
        cp = p.convolution_param
        g = shapes.conv_geometry(cp, 2)
        return {
            "num_output": cp.num_output,
            "group": cp.group,
            "bias_term": cp.bias_term,
            "kernel": g.kernel,
            "stride": g.stride,
            "pad": g.pad,
            "dilation": g.dilation,
            "axis": cp.axis,
        }
    if t == "Pooling":
        pp = p.pooling_param
        pg = shapes.pool_geometry(pp, net.blobs[layer.bottoms[0]].shape[2:])
        return {
            "pool": pp.pool,
            "kernel": pg.kernel,
            "stride": pg.stride,
            "pad": pg.pad,
            "ceil": pg.ceil,
            "global_pooling": pg.global_pooling,
        }
    if t == "BatchNorm":
        bp = p.batch_norm_param
        # In the TEST phase Caffe uses the stored statistics unless told otherwise.
        return {
            "use_global_stats": bp.use_global_stats if bp.HasField("use_global_stats") else True
        }
    if t == "Scale":
        sp = p.scale_param
        return {
            "bottoms": len(layer.bottoms),
            "axis": sp.axis,
            "num_axes": sp.num_axes,
            "bias_term": sp.bias_term,
        }
    if t == "ReLU":
        return {"negative_slope": p.relu_param.negative_slope}
    if t == "InnerProduct":
        ip = p.inner_product_param
        return {"num_output": ip.num_output, "bias_term": ip.bias_term, "axis": ip.axis}
    if t == "Concat":
        cp = p.concat_param
        return {"axis": cp.concat_dim if cp.HasField("concat_dim") else cp.axis}
    return {}


def _described(net: Net) -> list[tuple[Layer, dict[str, Any]]]:
    layers = list(net.layers)
    while layers and layers[-1].type == "Softmax":  # the model returns logits
        layers.pop()
    index = {layer.name: i for i, layer in enumerate(layers)}
    out = []
    for layer in layers:
        params = tuple(layer.param_shapes)
        if layer.type == "InnerProduct" and layer.param.inner_product_param.transpose:
            params = ((params[0][1], params[0][0]), *params[1:])  # stored (K, N), loaded (N, K)
        described = {
            "type": layer.type,
            "inputs (producing layer positions)": tuple(
                index.get(net.blobs[b].producer, -1) for b in layer.bottoms
            ),
            "output shapes (batch left out)": tuple(net.blobs[t].shape[1:] for t in layer.tops),
            "parameter shapes": params,
            **_settings(net, layer),
        }
        out.append((layer, described))
    return out


def pair_layers(net: Net, canonical: Net, arch: str) -> dict[str, Layer]:
    """Check ``net`` against the released ``arch``; map released layer names -> net layers."""
    given, want = _described(net), _described(canonical)
    for i, ((g, gd), (c, cd)) in enumerate(zip(given, want, strict=False)):
        if gd != cd:
            diffs = "; ".join(
                f"{k}: {gd.get(k)!r}, released {cd.get(k)!r}"
                for k in dict.fromkeys([*cd, *gd])
                if gd.get(k) != cd.get(k)
            )
            raise PrototxtError(
                f"recognised as {arch} from its structure, but layer #{i} differs from the "
                f"released {arch} (layer {c.name!r} there): {diffs}",
                **g.error_kwargs(),
            )
    if len(given) != len(want):
        extra = given[len(want)][0].name if len(given) > len(want) else want[len(given)][0].name
        raise PrototxtError(
            f"recognised as {arch} from its structure, but it has {len(given)} layers (before "
            f"a final Softmax) where the released {arch} has {len(want)} (first unmatched: "
            f"{extra!r})",
            file=net.source,
        )
    return {c.name: g for (g, _), (c, _) in zip(given, want, strict=True)}


def canonical_net(lay: Layout, arch: str) -> Net:
    """The released ``arch`` as a Net (built from the layout's prototxt text)."""
    parsed = parse_prototxt_text(render(lay, arch), f"<released {arch}>")
    return build_net(upgrade(parsed), name=arch, source=parsed.path)
