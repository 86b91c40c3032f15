"""The released Caffe layout of the SENet family: which layers, in which order, named how.

:class:`Layout` walks an idiomatic model (:mod:`caffe_bridge.models.senet`) and lists the
released definition's layers, plus which module each parameter layer fills. The definition is
built as a ``NetParameter`` of our schema and printed with protobuf's ``text_format``; for the
seven architectures it equals the released prototxt layer for layer (names, types, bottoms,
tops, params).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import text_format
from torch import nn

from caffe_bridge import schema
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.models import senet as S

__all__ = ["ARCHITECTURES", "Layout", "ParamRef", "arch_name", "caffe_prototxt_text",
           "layout_of", "net_parameter", "render"]

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
RESIDUAL_SIGNATURES: dict[tuple[int, tuple[int, ...], int], str] = {
    (1, (3, 4, 6, 3), 1): "SE-ResNet-50",
    (1, (3, 4, 23, 3), 1): "SE-ResNet-101",
    (1, (3, 8, 36, 3), 1): "SE-ResNet-152",
    (1, (3, 4, 6, 3), 32): "SE-ResNeXt-50",
    (1, (3, 4, 23, 3), 32): "SE-ResNeXt-101",
    (3, (3, 8, 36, 3), 64): "SENet-154",
}
# The `name:` line of each released definition.
RELEASED_NET_NAMES = {
    "SE-ResNeXt-50": "SE-ResNeXt-50 (32 x 4d)",
    "SE-ResNeXt-101": "SE-ResNeXt-101 (32 x 4d)",
    "SENet-154": "SENet",
}
INCEPTION_BLOCKS = 10  # inception_3a ... inception_5b, each ending in a two-bottom SE Scale


# -- the released layout ------------------------------------------------------------------------


class _Enum(str):
    """A protobuf enum value, written unquoted."""


Fields = list[tuple[str, Any]]


@dataclass
class LayerSpec:
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    fields: Fields = field(default_factory=list)


@dataclass(frozen=True)
class ParamRef:
    """Caffe parameter layer ``layer`` holds the ``kind`` part of module ``path``."""

    layer: str
    kind: str  # "conv" | "bn" (mean/var/factor) | "scale" (gamma/beta) | "fc"
    path: str


class Layout:
    """Builds the released layer list of a model, and which module each parameter layer fills."""

    def __init__(self, model: nn.Module, explicit_stride: bool) -> None:
        self.model = model
        self.explicit_stride = explicit_stride  # ResNet files write `stride: 1` everywhere
        self.layers: list[LayerSpec] = []
        self.params: list[ParamRef] = []

    def add(self, name: str, type_: str, bottoms: list[str], tops: list[str], *f: Any) -> str:
        self.layers.append(LayerSpec(name, type_, bottoms, tops, list(f)))
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
        self.params.append(ParamRef(name, "conv", path))
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
        self.params.append(ParamRef(f"{conv_name}/bn", "bn", path))
        self.add(
            f"{conv_name}/bn/scale",
            "Scale",
            [conv_name],
            [conv_name],
            ("scale_param", [("bias_term", True)]),
        )
        self.params.append(ParamRef(f"{conv_name}/bn/scale", "scale", path))

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
        self.params.append(ParamRef("classifier", "fc", "last_linear"))
        self.add("prob", "Softmax", ["classifier"], ["prob"])

    def max_pool(self, name: str, bottom: str, stride: int = 2) -> str:
        return self.add(
            name,
            "Pooling",
            [bottom],
            [name],
            ("pooling_param", [("pool", _Enum("MAX")), ("kernel_size", 3), ("stride", stride)]),
        )


def _input(lay: Layout) -> str:
    shape = [("dim", 1), ("dim", 3), ("dim", 224), ("dim", 224)]
    return lay.add("data", "Input", [], ["data"], ("input_param", [("shape", shape)]))


def _senet_layout(model: S.SENet) -> Layout:
    lay = Layout(model, explicit_stride=True)
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


_CAFFE_BRANCH = {"3x3dbl_reduce": "double3x3_reduce", "3x3dbl_a": "double3x3a",
                 "3x3dbl_b": "double3x3b", "_pool_proj": "pool_proj"}


def _inception_unit(lay: Layout, p: str, m: str, branch: str, bottom: str) -> str:
    caffe = _CAFFE_BRANCH.get(branch, branch)
    return lay.conv_bn(f"{p}/{caffe}", bottom, f"{m}.branch{branch}.conv",
                       f"{m}.branch{branch}.bn", f"{p}/relu_{caffe}")


def _inception_block(lay: Layout, x: str, block: nn.Module, p: str, m: str) -> str:
    """One SE inception block (or its stride-2 reduction variant) ending in the SE Scale."""
    def unit(branch: str, bottom: str) -> str:
        return _inception_unit(lay, p, m, branch, bottom)

    full = isinstance(block, S.SEInceptionBlock)
    outs = [unit("1x1", x)] if full else []
    outs.append(unit("3x3", unit("3x3_reduce", x)))
    outs.append(unit("3x3dbl_b", unit("3x3dbl_a", unit("3x3dbl_reduce", x))))
    if full:
        pool = "AVE" if isinstance(block.branch_pool, nn.AvgPool2d) else "MAX"
        pooled = lay.add(f"{p}/pool", "Pooling", [x], [f"{p}/pool"], (
            "pooling_param",
            [("pool", _Enum(pool)), ("kernel_size", 3), ("stride", 1), ("pad", 1)]))
        outs.append(unit("_pool_proj", pooled))
    else:
        outs.append(lay.max_pool(f"{p}/pool/3x3_s2", x))
    cat = lay.add(f"{p}/concat", "Concat", outs, [f"{p}/concat"])
    gate = lay.se(p, cat, f"{m}.se_module")
    # The N x C x 1 x 1 gate is reshaped to N x C and applied by a two-bottom Scale with axis
    # 0 (one factor per sample and channel).
    gate = lay.add(f"{p}_prob_reshape", "Reshape", [gate], [f"{p}_prob_reshape"],
                   ("reshape_param", [("shape", [("dim", 0), ("dim", 0)])]))
    return lay.add(f"{p}_scale", "Scale", [cat, gate], [f"{p}/output"],
                   ("scale_param", [("axis", 0), ("bias_term", False)]))


def _inception_layout(model: S.SEBNInception) -> Layout:
    lay = Layout(model, explicit_stride=False)
    x = _input(lay)
    x = lay.conv_bn("conv1/7x7_s2", x, "layer0.conv1", "layer0.bn1", "conv1/relu_7x7")
    x = lay.max_pool("pool1/3x3_s2", x)
    x = lay.conv_bn("conv2/3x3_reduce", x, "layer0.conv2", "layer0.bn2", "conv2/relu_3x3_reduce")
    x = lay.conv_bn("conv2/3x3", x, "layer0.conv3", "layer0.bn3", "conv2/relu_3x3")
    x = lay.max_pool("pool2/3x3_s2", x)
    for s, stage in enumerate([model.layer1, model.layer2, model.layer3], start=3):
        for b, block in enumerate(stage):
            x = _inception_block(lay, x, block, f"inception_{s}{_LETTERS[b]}", f"layer{s - 2}.{b}")
    lay.head(x, None)
    return lay


def layout_of(model: nn.Module) -> Layout:
    """The released layer list of ``model`` and which module each parameter layer fills."""
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


def _set(msg: Any, fields: Fields) -> None:
    """Set ``fields`` (name, value) on a protobuf message; lists are sub-messages."""
    for key, v in fields:
        current = getattr(msg, key)  # repeated fields are containers (add / append)
        if isinstance(v, list):
            _set(current.add() if hasattr(current, "add") else current, v)
            continue
        if isinstance(v, _Enum):
            v = msg.DESCRIPTOR.fields_by_name[key].enum_type.values_by_name[str(v)].number
        if hasattr(current, "append"):
            current.append(v)
        else:
            setattr(msg, key, v)


def net_parameter(lay: Layout, name: str) -> Any:
    """The layout as a ``NetParameter`` (our schema)."""
    net = schema.NetParameter(name=name)
    for spec in lay.layers:
        layer = net.layer.add(name=spec.name, type=spec.type)
        layer.bottom.extend(spec.bottoms)
        layer.top.extend(spec.tops)
        _set(layer, spec.fields)
    return net


def render(lay: Layout, name: str) -> str:
    """The layout as prototxt text: protobuf's ``text_format`` (float32 fields printed shortest)."""
    mean = ", ".join(str(int(m)) for m in S.CAFFE_MEAN_BGR)
    return f"# mean_value: {mean}\n" + text_format.MessageToString(net_parameter(lay, name))


def arch_name(model: nn.Module) -> str:
    """The released ``name:`` of ``model``'s architecture (the class name if none matches)."""
    for name in ARCHITECTURES:
        if _same_architecture(model, name):
            return RELEASED_NET_NAMES.get(name, name)
    return type(model).__name__


def _same_architecture(model: nn.Module, name: str) -> bool:
    if isinstance(model, S.SEBNInception):
        return name == "SE-BN-Inception"
    if not isinstance(model, S.SENet):
        return False
    blocks = tuple(len(s) for s in (model.layer1, model.layer2, model.layer3, model.layer4))
    stem = 3 if hasattr(model.layer0, "conv3") else 1
    groups = model.layer1[0].conv2.groups
    return RESIDUAL_SIGNATURES.get((stem, blocks, groups)) == name


def caffe_prototxt_text(model: nn.Module, name: str | None = None) -> str:
    """The released-layout definition of ``model`` as prototxt text."""
    return render(layout_of(model), name or arch_name(model))
