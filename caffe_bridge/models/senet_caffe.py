"""The Caffe side of the SENet family: ``from_caffe`` and ``to_caffe``.

``from_caffe`` reads a definition (and its weights), recognises which of the seven released
architectures it is from its structure alone (stem, residual blocks per stage, group counts,
inception blocks; never the file or layer names), then checks it layer by layer against the
released definition of that architecture: type, dataflow, output shapes, parameter shapes and
every setting that changes the numbers (conv/pooling geometry, groups, bias terms, pooling
rounding, Scale axes, ...). Layers are paired by position, so parameter-free layers may be named
differently; weights come from the caffemodel by layer name (through ``load_net``) and are
copied into the module that the released layer name maps to. Each BatchNorm (mean, variance,
moving-average factor f, eps) + Scale (gamma, beta) pair is folded into one ``BatchNorm2d``.

``to_caffe`` writes a model back in the released layout: for the seven architectures the
definition equals the released prototxt layer for layer (names, types, bottoms, tops, params).

``class_order="torchvision"`` permutes the rows of ``last_linear`` (weight and bias) so that
output ``j`` is the class of sorted-synset index ``j`` (torchvision/timm/``ImageFolder``) instead
of the devkit order the nets were trained in; the table is ``caffe_bridge.models.class_order``.

``input_format="torchvision"`` (RGB, 0-1, normalised by the ImageNet mean/std) is a separate
``CaffeInput`` stage, ``x_caffe = flip(x) * std * 255 + (mean * 255 - (104, 117, 123))``, run
before conv1 pads the image, so it is exact everywhere: on a calibrated SE-ResNet-50 and uniform
random images, 6.6e-7 relative max error at conv1 (border and interior alike) and 2.0e-6 at the
logits, i.e. float32 rounding. It is deliberately *not* folded into conv1 (``W * scale`` plus a
bias ``W . shift``): that cannot be exact at the zero-padded border, because the zeros padded in
the normalised space stand for Caffe pixels equal to the shift, (-0.47, -0.72, +0.675) for B, G,
R, instead of 0. Measured on the same model: interior 5.7e-7, but 4.9e-3 at conv1's border
outputs (rows/columns 0, 1 and 111 of 112; exactly conv1 applied to that constant in the
padding) and 1.8e-3 at the logits (top-5 unchanged there). Folding would also add a
``layer0.conv1.bias`` key the legacy state-dict layout does not have.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from caffe_bridge import shapes
from caffe_bridge.errors import CaffeBridgeError, CaffemodelError, PrototxtError
from caffe_bridge.ir import Layer, Net, build_net, load_net
from caffe_bridge.models import senet as S
from caffe_bridge.numeric import f32_array
from caffe_bridge.prototxt import parse_prototxt_text
from caffe_bridge.upgrade import upgrade

__all__ = ["ARCHITECTURES", "caffe_prototxt_text", "from_caffe", "recognise", "to_caffe"]

PathLike = str | os.PathLike[str]

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "SE-BN-Inception": S.se_bn_inception,
    "SE-ResNet-50": S.se_resnet50,
    "SE-ResNet-101": S.se_resnet101,
    "SE-ResNet-152": S.se_resnet152,
    "SE-ResNeXt-50": S.se_resnext50_32x4d,
    "SE-ResNeXt-101": S.se_resnext101_32x4d,
    "SENet-154": S.senet154,
}

# Structural signatures: (stem convs, residual blocks per stage, groups of the 3x3 convs).
_RESIDUAL_SIGNATURES: dict[tuple[int, tuple[int, ...], int], str] = {
    (1, (3, 4, 6, 3), 1): "SE-ResNet-50",
    (1, (3, 4, 23, 3), 1): "SE-ResNet-101",
    (1, (3, 8, 36, 3), 1): "SE-ResNet-152",
    (1, (3, 4, 6, 3), 32): "SE-ResNeXt-50",
    (1, (3, 4, 23, 3), 32): "SE-ResNeXt-101",
    (3, (3, 8, 36, 3), 64): "SENet-154",
}
# The `name:` line of each released definition.
_RELEASED_NET_NAMES = {
    "SE-ResNeXt-50": "SE-ResNeXt-50 (32 x 4d)",
    "SE-ResNeXt-101": "SE-ResNeXt-101 (32 x 4d)",
    "SENet-154": "SENet",
}
_INCEPTION_BLOCKS = 10  # inception_3a ... inception_5b, each ending in a two-bottom SE Scale


# -- the released layout ------------------------------------------------------------------------


class _Enum(str):
    """A protobuf enum value, written unquoted."""


Fields = list[tuple[str, Any]]


@dataclass
class _LayerSpec:
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    fields: Fields = field(default_factory=list)


@dataclass(frozen=True)
class _ParamRef:
    """Caffe parameter layer ``layer`` holds the ``kind`` part of module ``path``."""

    layer: str
    kind: str  # "conv" | "bn" (mean/var/factor) | "scale" (gamma/beta) | "fc"
    path: str


class _Layout:
    """Builds the released layer list of a model, and which module each parameter layer fills."""

    def __init__(self, model: nn.Module, explicit_stride: bool) -> None:
        self.model = model
        self.explicit_stride = explicit_stride  # ResNet files write `stride: 1` everywhere
        self.layers: list[_LayerSpec] = []
        self.params: list[_ParamRef] = []

    def add(self, name: str, type_: str, bottoms: list[str], tops: list[str], *f: Any) -> str:
        self.layers.append(_LayerSpec(name, type_, bottoms, tops, list(f)))
        return tops[0] if tops else ""

    def conv(
        self, name: str, bottom: str, path: str, *, explicit_stride: bool | None = None
    ) -> str:
        conv = self.model.get_submodule(path)
        if not isinstance(conv, nn.Conv2d):
            raise CaffeBridgeError(f"module {path!r} is a {type(conv).__name__}, not a Conv2d")
        k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        if isinstance(p, str) or len({*k}) != 1 or len({*s}) != 1 or len({*p}) != 1 or d != (1, 1):
            raise CaffeBridgeError(f"module {path!r}: only square, undilated convs are written")
        f: Fields = [("num_output", conv.out_channels)]
        if conv.bias is None:
            f.append(("bias_term", False))
        if p[0]:
            f.append(("pad", p[0]))
        f.append(("kernel_size", k[0]))
        if conv.groups != 1:
            f.append(("group", conv.groups))
        if (self.explicit_stride if explicit_stride is None else explicit_stride) or s[0] != 1:
            f.append(("stride", s[0]))
        self.params.append(_ParamRef(name, "conv", path))
        return self.add(name, "Convolution", [bottom], [name], ("convolution_param", f))

    def bn(self, conv_name: str, path: str) -> None:
        """In-place ``<conv>/bn`` (BatchNorm) + ``<conv>/bn/scale`` (Scale): one BatchNorm2d."""
        bn = self.model.get_submodule(path)
        if not isinstance(bn, nn.BatchNorm2d) or not bn.affine or bn.running_mean is None:
            raise CaffeBridgeError(f"module {path!r} must be an affine BatchNorm2d with stats")
        f: Fields = [("use_global_stats", True)]
        if float(np.float32(bn.eps)) != float(np.float32(S.CAFFE_BN_EPS)):
            f.append(("eps", float(bn.eps)))
        self.add(f"{conv_name}/bn", "BatchNorm", [conv_name], [conv_name], ("batch_norm_param", f))
        self.params.append(_ParamRef(f"{conv_name}/bn", "bn", path))
        self.add(
            f"{conv_name}/bn/scale",
            "Scale",
            [conv_name],
            [conv_name],
            ("scale_param", [("bias_term", True)]),
        )
        self.params.append(_ParamRef(f"{conv_name}/bn/scale", "scale", path))

    def conv_bn(
        self, name: str, bottom: str, conv_path: str, bn_path: str, relu: str | None
    ) -> str:
        self.conv(name, bottom, conv_path)
        self.bn(name, bn_path)
        if relu is not None:
            self.add(relu, "ReLU", [name], [name])
        return name

    def se(self, prefix: str, bottom: str, path: str) -> str:
        """SE branch: ``<p>_global_pool``, ``_1x1_down`` (+ReLU), ``_1x1_up``, ``<p>_prob``."""
        pool = self.add(
            f"{prefix}_global_pool",
            "Pooling",
            [bottom],
            [f"{prefix}_global_pool"],
            (
                "pooling_param",
                [("pool", _Enum("AVE")), ("engine", _Enum("CAFFE")), ("global_pooling", True)],
            ),
        )
        down = self.conv(f"{prefix}_1x1_down", pool, f"{path}.fc1", explicit_stride=True)
        self.add(f"{prefix}_1x1_down/relu", "ReLU", [down], [down])
        up = self.conv(f"{prefix}_1x1_up", down, f"{path}.fc2", explicit_stride=True)
        self.add(f"{prefix}_prob", "Sigmoid", [up], [up])
        return up

    def head(self, bottom: str, dropout: float | None) -> None:
        pool = self.add(
            "pool5/7x7_s1",
            "Pooling",
            [bottom],
            ["pool5/7x7_s1"],
            ("pooling_param", [("pool", _Enum("AVE")), ("kernel_size", 7), ("stride", 1)]),
        )
        if dropout is not None:
            self.add(
                "pool5/dropout_7x7_s1",
                "Dropout",
                [pool],
                [pool],
                ("dropout_param", [("dropout_ratio", dropout)]),
            )
        fc = self.model.get_submodule("last_linear")
        assert isinstance(fc, nn.Linear)
        f: Fields = [("num_output", fc.out_features)]
        if fc.bias is None:
            f.append(("bias_term", False))
        self.add("classifier", "InnerProduct", [pool], ["classifier"], ("inner_product_param", f))
        self.params.append(_ParamRef("classifier", "fc", "last_linear"))
        self.add("prob", "Softmax", ["classifier"], ["prob"])

    def max_pool(self, name: str, bottom: str, stride: int = 2) -> str:
        return self.add(
            name,
            "Pooling",
            [bottom],
            [name],
            ("pooling_param", [("pool", _Enum("MAX")), ("kernel_size", 3), ("stride", stride)]),
        )


def _input(lay: _Layout) -> str:
    shape = [("dim", 1), ("dim", 3), ("dim", 224), ("dim", 224)]
    return lay.add("data", "Input", [], ["data"], ("input_param", [("shape", shape)]))


def _senet_layout(model: S.SENet) -> _Layout:
    lay = _Layout(model, explicit_stride=True)
    x = _input(lay)
    if hasattr(model.layer0, "conv3"):  # SENet-154's three-conv stem
        for i, (conv, relu) in enumerate(
            [
                ("conv1_1/3x3_s2", "conv1_1/relu_3x3_s2"),
                ("conv1_2/3x3", "conv1_2/relu_3x3"),
                ("conv1_3/3x3", "conv1_3/relu_3x3"),
            ],
            start=1,
        ):
            x = lay.conv_bn(conv, x, f"layer0.conv{i}", f"layer0.bn{i}", relu)
    else:
        x = lay.conv_bn("conv1/7x7_s2", x, "layer0.conv1", "layer0.bn1", "conv1/relu_7x7_s2")
    x = lay.max_pool("pool1/3x3_s2", x)
    for s, stage in enumerate([model.layer1, model.layer2, model.layer3, model.layer4], start=2):
        for b, block in enumerate(stage, start=1):
            p, m = f"conv{s}_{b}", f"layer{s - 1}.{b - 1}"
            y = lay.conv_bn(f"{p}_1x1_reduce", x, f"{m}.conv1", f"{m}.bn1", f"{p}_1x1_reduce/relu")
            y = lay.conv_bn(f"{p}_3x3", y, f"{m}.conv2", f"{m}.bn2", f"{p}_3x3/relu")
            y = lay.conv_bn(f"{p}_1x1_increase", y, f"{m}.conv3", f"{m}.bn3", None)
            gate = lay.se(p, y, f"{m}.se_module")
            shortcut = x
            if block.downsample is not None:
                shortcut = lay.conv_bn(
                    f"{p}_1x1_proj", x, f"{m}.downsample.0", f"{m}.downsample.1", None
                )
            # Axpy bottoms: scale, branch, shortcut (in this order).
            x = lay.add(p, "Axpy", [gate, y, shortcut], [p])
            lay.add(f"{p}/relu", "ReLU", [x], [x])
    lay.head(x, model.dropout.p if model.dropout is not None else None)
    return lay


_LETTERS = "abcdefghij"


def _inception_layout(model: S.SEBNInception) -> _Layout:
    lay = _Layout(model, explicit_stride=False)
    x = _input(lay)
    x = lay.conv_bn("conv1/7x7_s2", x, "layer0.conv1", "layer0.bn1", "conv1/relu_7x7")
    x = lay.max_pool("pool1/3x3_s2", x)
    x = lay.conv_bn("conv2/3x3_reduce", x, "layer0.conv2", "layer0.bn2", "conv2/relu_3x3_reduce")
    x = lay.conv_bn("conv2/3x3", x, "layer0.conv3", "layer0.bn3", "conv2/relu_3x3")
    x = lay.max_pool("pool2/3x3_s2", x)
    for s, stage in enumerate([model.layer1, model.layer2, model.layer3], start=3):
        for b, block in enumerate(stage):
            p, m = f"inception_{s}{_LETTERS[b]}", f"layer{s - 2}.{b}"

            def unit(branch: str, bottom: str, p: str = p, m: str = m) -> str:
                caffe = {
                    "3x3dbl_reduce": "double3x3_reduce",
                    "3x3dbl_a": "double3x3a",
                    "3x3dbl_b": "double3x3b",
                    "_pool_proj": "pool_proj",
                }.get(branch, branch)
                return lay.conv_bn(
                    f"{p}/{caffe}",
                    bottom,
                    f"{m}.branch{branch}.conv",
                    f"{m}.branch{branch}.bn",
                    f"{p}/relu_{caffe}",
                )

            outs = []
            if isinstance(block, S.SEInceptionBlock):
                outs.append(unit("1x1", x))
            outs.append(unit("3x3", unit("3x3_reduce", x)))
            outs.append(unit("3x3dbl_b", unit("3x3dbl_a", unit("3x3dbl_reduce", x))))
            if isinstance(block, S.SEInceptionBlock):
                pool = "AVE" if isinstance(block.branch_pool, nn.AvgPool2d) else "MAX"
                pooled = lay.add(
                    f"{p}/pool",
                    "Pooling",
                    [x],
                    [f"{p}/pool"],
                    (
                        "pooling_param",
                        [("pool", _Enum(pool)), ("kernel_size", 3), ("stride", 1), ("pad", 1)],
                    ),
                )
                outs.append(unit("_pool_proj", pooled))
            else:
                outs.append(lay.max_pool(f"{p}/pool/3x3_s2", x))
            cat = lay.add(f"{p}/concat", "Concat", outs, [f"{p}/concat"])
            gate = lay.se(p, cat, f"{m}.se_module")
            # The N x C x 1 x 1 gate is reshaped to N x C and applied by a two-bottom Scale
            # with axis 0 (one factor per sample and channel).
            gate = lay.add(
                f"{p}_prob_reshape",
                "Reshape",
                [gate],
                [f"{p}_prob_reshape"],
                ("reshape_param", [("shape", [("dim", 0), ("dim", 0)])]),
            )
            x = lay.add(
                f"{p}_scale",
                "Scale",
                [cat, gate],
                [f"{p}/output"],
                ("scale_param", [("axis", 0), ("bias_term", False)]),
            )
    lay.head(x, None)
    return lay


def _layout(model: nn.Module) -> _Layout:
    if getattr(model, "input_transform", None) is not None:
        raise CaffeBridgeError(
            "the model has an input_transform, which the released layout cannot express; "
            "set model.input_transform = None (Caffe input: BGR, 0-255, mean subtracted)"
        )
    if isinstance(model, S.SEBNInception):
        return _inception_layout(model)
    if isinstance(model, S.SENet):
        return _senet_layout(model)
    raise CaffeBridgeError(
        f"to_caffe handles SENet and SEBNInception models, not {type(model).__name__}"
    )


def _value(v: Any) -> str:
    if isinstance(v, _Enum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return str(np.float32(v))  # shortest text that reads back as the same float32
    return str(int(v))


def _fields(fields: Fields, indent: str) -> list[str]:
    out = []
    for key, v in fields:
        if isinstance(v, list):
            out.append(f"{indent}{key} {{")
            out += _fields(v, indent + "  ")
            out.append(f"{indent}}}")
        else:
            out.append(f"{indent}{key}: {_value(v)}")
    return out


def _render(lay: _Layout, name: str) -> str:
    lines = [
        f"name: {json.dumps(name)}",
        "# mean_value: " + ", ".join(str(int(m)) for m in S.CAFFE_MEAN_BGR),
    ]
    for spec in lay.layers:
        lines.append("layer {")
        lines.append(f"  name: {json.dumps(spec.name)}")
        lines.append(f"  type: {json.dumps(spec.type)}")
        lines += [f"  bottom: {json.dumps(b)}" for b in spec.bottoms]
        lines += [f"  top: {json.dumps(t)}" for t in spec.tops]
        lines += _fields(spec.fields, "  ")
        lines.append("}")
    return "\n".join(lines) + "\n"


def _arch_name(model: nn.Module) -> str:
    """The released ``name:`` of ``model``'s architecture (the class name if none matches)."""
    for name in ARCHITECTURES:
        if _same_architecture(model, name):
            return _RELEASED_NET_NAMES.get(name, name)
    return type(model).__name__


def _same_architecture(model: nn.Module, name: str) -> bool:
    if isinstance(model, S.SEBNInception):
        return name == "SE-BN-Inception"
    if not isinstance(model, S.SENet):
        return False
    blocks = tuple(len(s) for s in (model.layer1, model.layer2, model.layer3, model.layer4))
    stem = 3 if hasattr(model.layer0, "conv3") else 1
    groups = model.layer1[0].conv2.groups
    return _RESIDUAL_SIGNATURES.get((stem, blocks, groups)) == name


def caffe_prototxt_text(model: nn.Module, name: str | None = None) -> str:
    """The released-layout definition of ``model`` as prototxt text."""
    return _render(_layout(model), name or _arch_name(model))


def _blobs(model: nn.Module, ref: _ParamRef) -> list[np.ndarray]:
    mod = model.get_submodule(ref.path)
    if ref.kind in ("conv", "fc"):
        out = [f32_array(mod.weight)]
        if mod.bias is not None:
            out.append(f32_array(mod.bias))
        return out
    if ref.kind == "bn":  # moving-average factor 1: the stored statistics are the effective ones
        return [f32_array(mod.running_mean), f32_array(mod.running_var), np.ones(1, np.float32)]
    return [f32_array(mod.weight), f32_array(mod.bias)]  # scale: gamma, beta


def to_caffe(
    model: nn.Module, prototxt_path: PathLike, caffemodel_path: PathLike, name: str | None = None
) -> None:
    """Write ``model`` as a Caffe definition + weights in the released layout.

    BatchNorm2d becomes BatchNorm (running stats, factor 1, ``eps`` only if not Caffe's 1e-5)
    + Scale (gamma, beta). ``name`` defaults to the architecture's released name.
    """
    from caffe_bridge.caffemodel import write_caffemodel

    lay = _layout(model)
    net_name = name or _arch_name(model)
    text = _render(lay, net_name)
    weights = {ref.layer: _blobs(model, ref) for ref in lay.params}
    types = {spec.name: spec.type for spec in lay.layers}
    write_caffemodel(caffemodel_path, weights, net_name, types={k: types[k] for k in weights})
    try:
        with open(os.fspath(prototxt_path), "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        raise CaffeBridgeError(
            f"cannot write: {err.strerror or err}", file=os.fspath(prototxt_path)
        ) from None


# -- recognition ---------------------------------------------------------------------------------


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
        arch = _RESIDUAL_SIGNATURES.get(key)
    elif sig["SE-scaled concats"] == _INCEPTION_BLOCKS and sig["stem convs"] == 1:
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


def _pair(net: Net, canonical: Net, arch: str) -> dict[str, Layer]:
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


def _canonical_net(lay: _Layout, arch: str) -> Net:
    parsed = parse_prototxt_text(_render(lay, arch), f"<released {arch}>")
    return build_net(upgrade(parsed), name=arch, source=parsed.path)


# -- weights -------------------------------------------------------------------------------------


def _tensor(a: np.ndarray, shape: torch.Size) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True).reshape(tuple(shape)))


def _fold_bn(bn: nn.BatchNorm2d, layer: Layer) -> None:
    """Caffe BatchNorm: mean/f, var/f (f == 0 gives 0, as Caffe), + eps from the layer."""
    mean, var, factor = (np.asarray(b, dtype=np.float32) for b in layer.blobs)
    f = np.float32(factor.reshape(-1)[0])
    # Caffe multiplies by the float reciprocal: scale_factor = f == 0 ? 0 : 1 / f.
    sf = np.float32(0.0) if f == 0 else np.float32(1.0) / f
    assert bn.running_mean is not None and bn.running_var is not None
    bn.running_mean.copy_(_tensor(mean * sf, bn.running_mean.shape))
    bn.running_var.copy_(_tensor(var * sf, bn.running_var.shape))
    bn.eps = float(np.float32(layer.param.batch_norm_param.eps))


@torch.no_grad()
def _load(model: nn.Module, lay: _Layout, paired: dict[str, Layer]) -> None:
    for ref in lay.params:
        layer = paired[ref.layer]
        mod = model.get_submodule(ref.path)
        blobs = layer.blobs
        if not blobs:
            raise CaffemodelError("no weights for this layer", **layer.error_kwargs())
        if ref.kind == "bn":
            _fold_bn(mod, layer)
        elif ref.kind == "scale":  # bias_term: true was checked against the released net
            mod.weight.copy_(_tensor(blobs[0], mod.weight.shape))
            mod.bias.copy_(_tensor(blobs[1], mod.bias.shape))
        else:
            w = np.asarray(blobs[0], dtype=np.float32)
            if ref.kind == "fc" and layer.param.inner_product_param.transpose:
                w = w.reshape(mod.in_features, mod.out_features).T  # stored (K, N)
            mod.weight.copy_(_tensor(w, mod.weight.shape))
            if mod.bias is not None:
                mod.bias.copy_(_tensor(blobs[1], mod.bias.shape))


def _class_permutation(class_order: str | Sequence[int], n: int) -> list[int] | None:
    if isinstance(class_order, str):
        if class_order == "caffe":
            return None
        if class_order == "torchvision":
            from caffe_bridge.models.class_order import CLASSES, sorted_to_senet

            if n != CLASSES:
                raise CaffeBridgeError(
                    f"class_order 'torchvision' maps the {CLASSES} ImageNet classes; this net "
                    f"has {n} outputs"
                )
            return [int(k) for k in sorted_to_senet()]
        raise CaffeBridgeError(
            f"class_order {class_order!r} is not available: use 'caffe' (the order the models "
            f"were trained with, ILSVRC2012 devkit ID - 1), 'torchvision' (sorted synsets, as "
            f"torchvision/timm/ImageFolder) or pass a sequence of {n} ints, "
            f"new class j = Caffe class order[j]"
        )
    order = [int(i) for i in class_order]
    if sorted(order) != list(range(n)):
        raise CaffeBridgeError(f"class_order must be a permutation of range({n})")
    return order


def from_caffe(
    prototxt: PathLike,
    caffemodel: PathLike | None = None,
    class_order: str | Sequence[int] = "caffe",
    input_format: str = "caffe",
) -> nn.Module:
    """Build the idiomatic model for a released SENet definition, with its Caffe weights.

    Args:
        prototxt: deploy definition of one of the seven released architectures (recognised
            from its structure; layer names of parameter-free layers may differ).
        caffemodel: its weights; ``None`` gives the architecture with freshly initialised weights.
        class_order: ``"caffe"`` keeps the training order (ILSVRC2012 devkit ID - 1);
            ``"torchvision"`` gives sorted-synset order (torchvision, timm, ``ImageFolder``;
            output ``j`` = the class of sorted index ``j``, see ``models.class_order``); a
            sequence of ints reorders the logits (output ``j`` = Caffe class ``class_order[j]``).
            Rows of ``last_linear`` (weight and bias) are permuted: no extra module.
        input_format: ``"caffe"`` (BGR, 0-255, mean 104/117/123 subtracted), or ``"bgr255"``,
            ``"rgb255"``, ``"torchvision"`` (RGB, 0-1, ImageNet mean/std) through a
            ``CaffeInput`` stage.

    Returns the model in eval mode; it returns logits (the final Softmax is left out).
    """
    if not isinstance(input_format, str) or input_format not in S.CaffeInput.FORMATS:
        raise CaffeBridgeError(
            f"input_format must be one of {', '.join(S.CaffeInput.FORMATS)}, not {input_format!r}"
        )
    net = load_net(prototxt, caffemodel)
    if net.unused_weights:
        raise CaffemodelError(
            f"parameter layers present in the weights but not in the definition: "
            f"{', '.join(net.unused_weights)}",
            file=os.fspath(caffemodel) if caffemodel is not None else None,
        )
    arch = recognise(net)
    fcs = [layer for layer in net.layers if layer.type == "InnerProduct"]
    num_classes = fcs[-1].param.inner_product_param.num_output if fcs else 1000
    order = _class_permutation(class_order, num_classes)
    model = ARCHITECTURES[arch](num_classes=num_classes)
    lay = _layout(model)
    paired = _pair(net, _canonical_net(lay, arch), arch)
    if caffemodel is not None:
        _load(model, lay, paired)
    last = model.get_submodule("last_linear")
    if order is not None:
        with torch.no_grad():
            idx = torch.tensor(order)
            last.weight.copy_(last.weight[idx].clone())
            last.bias.copy_(last.bias[idx].clone())
    if input_format != "caffe":
        model.input_transform = S.CaffeInput(input_format)
    return model.eval()
