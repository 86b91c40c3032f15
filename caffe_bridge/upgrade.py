"""Bring every definition to one form: V2 layers, Input layers, TEST-phase layers only.

Caffe upgrades old definitions when it loads them (``upgrade_proto.cpp``); so do we:
V0 (``layers { layer { type: "conv" } }``) and V1 (``layers { type: CONVOLUTION }``) become V2
``LayerParameter`` messages, net-level ``input:`` headers become an ``Input`` layer, and layers
that Caffe would not instantiate in the TEST phase are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import message as pb_message

from caffe_bridge import schema
from caffe_bridge.errors import PrototxtError
from caffe_bridge.prototxt import ParsedPrototxt

# V1 LayerType enum name -> V2 type string (facts from Caffe's UpgradeV1LayerType).
V1_TYPE_NAMES: dict[str, str] = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V0 lowercase type -> V2 type (Caffe's UpgradeV0LayerType).
V0_TYPE_NAMES: dict[str, str] = {
    "accuracy": "Accuracy", "bnll": "BNLL", "concat": "Concat", "conv": "Convolution",
    "data": "Data", "dropout": "Dropout", "euclidean_loss": "EuclideanLoss",
    "flatten": "Flatten", "hdf5_data": "HDF5Data", "hdf5_output": "HDF5Output",
    "im2col": "Im2col", "images": "ImageData", "infogain_loss": "InfogainLoss",
    "innerproduct": "InnerProduct", "lrn": "LRN", "multinomial_logistic_loss":
    "MultinomialLogisticLoss", "pool": "Pooling", "relu": "ReLU", "sigmoid": "Sigmoid",
    "softmax": "Softmax", "softmax_loss": "SoftmaxWithLoss", "split": "Split", "tanh": "TanH",
    "window_data": "WindowData",
}

# ChenYingpeng/caffe-yolov3 model_convert/yolov3_darknet2caffe.py names every net it writes so
# (sic); those nets run on the fork's Pooling (see PoolingParameter.odd_window_extra).
DARKNET2CAFFE_NAME = "Darkent2Caffe"

TEST_PHASE = schema.Phase.Value("TEST")


@dataclass(frozen=True)
class RawLayer:
    """A V2 layer message and the 1-based line it came from (None if synthesized/unknown)."""

    param: pb_message.Message  # schema.LayerParameter
    line: int | None


def _rule_met(rule: pb_message.Message, stages: frozenset[str] = frozenset()) -> bool:
    """Caffe's Net::StateMeetsRule for the state we build: phase TEST, level 0, and the stages
    of the file's own ``state { stage: ... }`` (Caffe adds caller stages to them; we add none).
    """
    if rule.HasField("phase") and rule.phase != TEST_PHASE:
        return False
    if rule.HasField("min_level") and rule.min_level > 0:
        return False
    if rule.HasField("max_level") and rule.max_level < 0:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def keep_in_test(param: pb_message.Message, stages: frozenset[str] = frozenset()) -> bool:
    """Whether Caffe instantiates this layer (V1 or V2 message) in the TEST phase (FilterNet)."""
    if param.include:
        return any(_rule_met(r, stages) for r in param.include)
    return not any(_rule_met(r, stages) for r in param.exclude)


def _copy_same_named_params(src: pb_message.Message, dst: pb_message.Message) -> None:
    """Copy every set ``*_param`` field of ``src`` into the same-named field of ``dst``."""
    dst_fields = dst.DESCRIPTOR.fields_by_name
    for field, value in src.ListFields():
        if field.message_type is None or not field.name.endswith("_param"):
            continue
        target = dst_fields.get(field.name)
        if target is not None and target.message_type is not None and (
            target.message_type.full_name == field.message_type.full_name
        ):
            getattr(dst, field.name).CopyFrom(value)


def _upgrade_v0(v0: pb_message.Message, path: str, line: int | None) -> pb_message.Message:
    """One V0LayerParameter -> LayerParameter (the common layer kinds)."""
    out = schema.LayerParameter()
    out.name = v0.name
    v2type = V0_TYPE_NAMES.get(v0.type)
    if v2type is None:
        raise PrototxtError(
            f"V0 layer type {v0.type!r} cannot be upgraded", file=path, line=line, layer=v0.name
        )
    out.type = v2type
    if v2type == "Convolution":
        cp = out.convolution_param
        cp.num_output = v0.num_output
        cp.bias_term = v0.biasterm
        if v0.HasField("pad"):
            cp.pad.append(v0.pad)
        cp.kernel_size.append(v0.kernelsize)
        cp.group = v0.group
        cp.stride.append(v0.stride)
    elif v2type == "InnerProduct":
        out.inner_product_param.num_output = v0.num_output
        out.inner_product_param.bias_term = v0.biasterm
    elif v2type == "Pooling":
        pp = out.pooling_param
        pp.kernel_size = v0.kernelsize
        pp.stride = v0.stride
        pp.pad = v0.pad
        pp.pool = v0.pool
    elif v2type == "LRN":
        lp = out.lrn_param
        lp.local_size, lp.alpha, lp.beta, lp.k = v0.local_size, v0.alpha, v0.beta, v0.k
    elif v2type == "Dropout":
        out.dropout_param.dropout_ratio = v0.dropout_ratio
    elif v2type == "Concat":
        out.concat_param.axis = v0.concat_dim
    return out


def v1_type_name(enum_name: str) -> str:
    """The V2 type of a V1 enum name: Caffe's table, else a known V2 type spelled the same
    without underscores and case (fork enums such as ``BATCH_NORM``, ``INTERP``), else the
    enum name itself (the layer then fails as unsupported, by that name, unless it is data).
    """
    if enum_name in V1_TYPE_NAMES:
        return V1_TYPE_NAMES[enum_name]
    from caffe_bridge import deploy, shapes

    key = enum_name.replace("_", "").lower()
    known = set(shapes.known_types()) | deploy.DATA_TYPES | deploy.DROP_TYPES
    for name in sorted(known):
        if name.lower() == key:
            return name
    return enum_name


def _upgrade_v1(
    v1: pb_message.Message, path: str, line: int | None, fork_type: str | None = None,
    extra: pb_message.Message | None = None,
) -> pb_message.Message:
    """One V1LayerParameter (possibly wrapping V0) -> LayerParameter.

    ``fork_type`` is the V1 enum identifier when our schema lacks it (a fork's own type);
    ``extra`` a LayerParameter with the record's fields V1LayerParameter lacks (fork params).
    """
    if v1.HasField("layer"):
        out = _upgrade_v0(v1.layer, path, line)
    else:
        out = schema.LayerParameter()
        out.name = v1.name
        enum = v1.DESCRIPTOR.fields_by_name["type"].enum_type
        if fork_type is not None:
            enum_name = fork_type
        elif not v1.HasField("type") or v1.type == schema.V1LayerParameter.NONE:
            raise PrototxtError("V1 layer has no type", file=path, line=line,
                                layer=v1.name or None)
        else:
            enum_name = enum.values_by_number[v1.type].name
        out.type = v1_type_name(enum_name)
        _copy_same_named_params(v1, out)
        if extra is not None:
            out.MergeFrom(extra)
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    return out


def _merge_v0_padding(
    records: list[tuple[pb_message.Message, int | None]], path: str
) -> list[tuple[pb_message.Message, int | None]]:
    """V0 nets used separate "padding" layers; Caffe folds each into the conv/pool it feeds."""
    pads: dict[str, tuple[str, int]] = {}
    out: list[tuple[pb_message.Message, int | None]] = []
    for v1, line in records:
        v0 = v1.layer if v1.HasField("layer") else None
        if v0 is not None and v0.type == "padding":
            if len(v1.bottom) != 1 or len(v1.top) != 1:
                raise PrototxtError("V0 padding layer needs one bottom and one top", file=path,
                                    line=line, layer=v0.name)
            pads[v1.top[0]] = (v1.bottom[0], v0.pad)
            continue
        if v0 is not None and v1.bottom and v1.bottom[0] in pads:
            if v0.type not in ("conv", "pool"):
                raise PrototxtError("V0 padding layer must feed a conv or pool layer",
                                    file=path, line=line, layer=v0.name)
            merged = type(v1)()
            merged.CopyFrom(v1)
            merged.bottom[0], merged.layer.pad = pads[v1.bottom[0]]
            v1 = merged
        out.append((v1, line))
    return out


def _input_layer(parsed: ParsedPrototxt, taken: set[str]) -> RawLayer | None:
    """Net-level ``input:`` headers (with input_shape or input_dim) -> one Input layer."""
    net = parsed.net
    if not net.input:
        if net.input_dim or net.input_shape:
            raise PrototxtError("input_dim/input_shape without input names", file=parsed.path,
                                line=parsed.field_lines.get("input_dim"))
        return None
    line = parsed.field_lines.get("input")
    n = len(net.input)
    layer = schema.LayerParameter()
    layer.name = "input" if "input" not in taken else "input_header"
    layer.type = "Input"
    layer.top.extend(net.input)
    if net.input_shape:
        if len(net.input_shape) != n:
            raise PrototxtError(f"{n} inputs but {len(net.input_shape)} input_shape entries",
                                file=parsed.path, line=line)
        for shape in net.input_shape:
            layer.input_param.shape.add().CopyFrom(shape)
    elif net.input_dim:
        if len(net.input_dim) != 4 * n:
            raise PrototxtError(
                f"{n} inputs need {4 * n} input_dim values, found {len(net.input_dim)}",
                file=parsed.path, line=parsed.field_lines.get("input_dim", line),
            )
        for i in range(n):
            layer.input_param.shape.add().dim.extend(net.input_dim[4 * i: 4 * i + 4])
    else:
        raise PrototxtError(f"input {net.input[0]!r} has no shape (input_shape or input_dim)",
                            file=parsed.path, line=line)
    return RawLayer(layer, line)


def upgrade(parsed: ParsedPrototxt) -> list[RawLayer]:
    """All layers of ``parsed`` as V2 messages in net order, TEST phase, Input layers first."""
    net, path = parsed.net, parsed.path
    if net.layer and net.layers:
        raise PrototxtError("definition mixes V2 'layer' and V1 'layers' records", file=path,
                            line=parsed.layers_lines[0])
    if net.layers:
        forks, extras = parsed.v1_type_names, parsed.v1_extras
        records = [(v1, ln, i) for i, (v1, ln)
                   in enumerate(zip(net.layers, parsed.layers_lines, strict=True))]
        merged = _merge_v0_padding([(v1, ln) for v1, ln, _ in records], path)
        if len(merged) == len(records):
            raw = [RawLayer(_upgrade_v1(v1, path, ln, forks.get(i), extras.get(i)), ln)
                   for (v1, ln), (_, _, i) in zip(merged, records, strict=True)]
        else:  # V0 (padding layers folded): no fork enums there
            raw = [RawLayer(_upgrade_v1(v1, path, ln), ln) for v1, ln in merged]
    else:
        raw = [RawLayer(lp, ln) for lp, ln in zip(net.layer, parsed.layer_lines, strict=True)]
    stages = frozenset(net.state.stage)
    kept = [r for r in raw if keep_in_test(r.param, stages)]
    if net.name == DARKNET2CAFFE_NAME:
        for r in kept:
            if r.param.type == "Pooling":
                r.param.pooling_param.odd_window_extra = True
    header = _input_layer(parsed, {r.param.name for r in kept})
    return ([header] if header else []) + kept
