"""Train/test definitions -> their deploy form: data layers become inputs, losses go.

Rules (docs/SEMANTICS.md, "Reading definitions", has the full list):

* A **data layer** (``Data``, ``ImageData``, ``HDF5Data``, ``MemoryData``, ``DummyData``,
  ``WindowData``, ``AnnotatedData``, ``VideoData``, fork ``*Data`` types, and a ``Python`` layer
  without bottoms) becomes an ``Input`` layer of the same name whose tops are those of its tops
  that a kept layer reads. Shapes: the user's ``input_shapes`` first, else what the layer's own
  parameters state, else a :class:`PrototxtError` naming the layer and the option.
* **Training/evaluation layers** (losses, accuracies, ``DetectionEvaluate``, ``Silence``,
  ``HDF5Output``) are dropped, and so is every layer that reads only labels or their outputs.
  One :class:`CaffeBridgeWarning` lists what was dropped and which inputs were created.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import message as pb_message

from caffe_bridge import schema
from caffe_bridge.errors import CaffeBridgeWarning, PrototxtError
from caffe_bridge.upgrade import RawLayer

# Input shapes the command line gives (``--input-shape``) for every load_net in its scope.
_DEFAULT_INPUT_SHAPES: contextvars.ContextVar[Mapping[str, tuple[int, ...]] | None] = (
    contextvars.ContextVar("caffe_bridge_input_shapes", default=None))


@contextlib.contextmanager
def default_input_shapes(shapes: Mapping[str, Sequence[int]] | None) -> Iterator[None]:
    """Within this block, ``load_net`` calls without ``input_shapes`` use ``shapes``."""
    token = _DEFAULT_INPUT_SHAPES.set(
        {k: tuple(int(d) for d in v) for k, v in shapes.items()} if shapes else None)
    try:
        yield
    finally:
        _DEFAULT_INPUT_SHAPES.reset(token)


def given_input_shapes(
    input_shapes: Mapping[str, Sequence[int]] | None,
) -> Mapping[str, Sequence[int]] | None:
    """``input_shapes``, or those of an enclosing :func:`default_input_shapes` block."""
    return input_shapes if input_shapes is not None else _DEFAULT_INPUT_SHAPES.get()

DATA_TYPES = frozenset({
    # BVLC
    "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData",
    # SSD (weiliu89/caffe): AnnotatedData; video forks (C3D, video-caffe): VideoData
    "AnnotatedData", "VideoData",
    # segmentation/edge forks (DeepLab: ImageSegData; SegNet: DenseImageData; HED:
    # ImageLabelmapData; others: ImageLabelData)
    "ImageSegData", "ImageLabelData", "DenseImageData", "ImageLabelmapData",
    # DeepLab (bitbucket deeplab-public-ver2): features read from .mat files
    "MatRead",
})

# Types reading image files through image_data_param (is_color, new_height/new_width).
_IMAGE_FILES = frozenset({"ImageData", "ImageSegData", "ImageLabelmapData"})

# Layers whose top[1] is a label by the data layer's own contract.
_LABELLED = frozenset({"Data", "ImageData", "MemoryData", "WindowData", "AnnotatedData",
                       "VideoData", "ImageSegData", "ImageLabelData", "DenseImageData",
                       "ImageLabelmapData"})

DROP_TYPES = frozenset({
    # BVLC losses, accuracy, output and Silence
    "SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss", "HingeLoss",
    "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss", "Accuracy", "Silence",
    "HDF5Output",
    # SSD (weiliu89/caffe) and Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn)
    "MultiBoxLoss", "DetectionEvaluate", "SmoothL1Loss",
    # segmentation forks (DeepLab, SegNet, PSPNet training nets)
    "SegAccuracy", "SoftmaxWithLossWeighted",
    # DeepLab's MatWrite writes its bottom to .mat files (an output layer, like HDF5Output)
    "MatWrite",
    # OCR, face and others
    "CtcLoss", "CTCLoss", "WarpCTCLoss", "CenterLoss", "FocalLoss", "TripletLoss", "L1Loss",
})

# A type not listed above is treated as a training layer when its name ends with one of these.
_DROP_SUFFIXES = ("Loss", "Accuracy", "LOSS", "ACCURACY")


@dataclass(frozen=True)
class DroppedLayer:
    """A layer Caffe's deploy net would not have (loss, accuracy, label-only processing)."""

    name: str
    type: str
    line: int | None
    reason: str  # "training layer" or "reads only labels"


@dataclass(frozen=True)
class CreatedInput:
    """A model input made from a data layer's top."""

    name: str  # the blob (top) name
    layer: str  # the data layer it replaces
    layer_type: str
    shape: tuple[int, ...]
    source: str  # where the shape came from, e.g. "transform_param.crop_size"


@dataclass(frozen=True)
class DeployForm:
    layers: list[RawLayer]
    dropped: tuple[DroppedLayer, ...]
    created: tuple[CreatedInput, ...]
    hidden: frozenset[str]  # blobs Caffe does not list as outputs (read by dropped Silence)


def is_data_layer(p: pb_message.Message) -> bool:
    """Whether Caffe would feed this layer's tops from outside the graph (no bottoms)."""
    if p.bottom:
        return False
    if p.type in DATA_TYPES or p.type == "Python":
        return True
    return p.type.endswith(("Data", "DATA")) and p.type != "Input"


def is_training_layer(p: pb_message.Message) -> bool:
    return p.type in DROP_TYPES or p.type.endswith(_DROP_SUFFIXES)


def _user_shape(
    input_shapes: Mapping[str, Sequence[int]], top: str
) -> tuple[int, ...] | None:
    shape = input_shapes.get(top)
    return None if shape is None else tuple(int(d) for d in shape)


def _per_top(values: Sequence[int], k: int, n_tops: int) -> int | None:
    if len(values) == 1:
        return int(values[0])
    if len(values) == n_tops:
        return int(values[k])
    return None


def _dummy_shape(p: pb_message.Message, k: int) -> tuple[tuple[int, ...], str] | None:
    dp = p.dummy_data_param
    n = len(p.top)
    if dp.shape:
        if len(dp.shape) not in (1, n):
            return None
        shape = dp.shape[0] if len(dp.shape) == 1 else dp.shape[k]
        return tuple(int(d) for d in shape.dim), "dummy_data_param.shape"
    dims = [_per_top(v, k, n) for v in (dp.num, dp.channels, dp.height, dp.width)]
    if all(d is not None for d in dims):
        return tuple(dims), "dummy_data_param num/channels/height/width"  # type: ignore[return-value]
    return None


def _batch(p: pb_message.Message) -> tuple[int, str]:
    for name in ("data_param", "image_data_param", "window_data_param", "hdf5_data_param"):
        if p.HasField(name) and getattr(p, name).batch_size > 0:
            return int(getattr(p, name).batch_size), f"{name}.batch_size"
    return 1, "batch 1 (no batch_size)"


def _channels(p: pb_message.Message) -> tuple[int, str] | None:
    tp = p.transform_param
    if p.type in _IMAGE_FILES:
        return (3, "is_color") if p.image_data_param.is_color else (1, "is_color: false")
    if p.type == "WindowData":
        return 3, "colour windows"  # window_data_layer.cpp: top[0] has 3 channels
    if tp.force_color:
        return 3, "force_color"
    if tp.force_gray:
        return 1, "force_gray"
    if len(tp.mean_value) > 1:
        return len(tp.mean_value), f"{len(tp.mean_value)} mean_value entries"
    return None


def _spatial(p: pb_message.Message) -> tuple[int, int, str] | None:
    tp = p.transform_param
    if tp.crop_h and tp.crop_w:
        return tp.crop_h, tp.crop_w, "transform_param.crop_h/crop_w"
    crop = tp.crop_size
    for legacy in ("data_param", "image_data_param", "window_data_param"):
        if not crop and p.HasField(legacy):
            crop = getattr(p, legacy).crop_size
    if crop:
        return crop, crop, "crop_size"
    rp = tp.resize_param
    if tp.HasField("resize_param") and rp.height and rp.width:
        return rp.height, rp.width, "transform_param.resize_param"
    ip = p.image_data_param
    if p.type in _IMAGE_FILES and ip.new_height and ip.new_width:
        return ip.new_height, ip.new_width, "image_data_param.new_height/new_width"
    return None


def stated_shape(p: pb_message.Message, k: int) -> tuple[tuple[int, ...], str] | None:
    """The shape of top ``k`` of data layer ``p`` as its own parameters state it, if they do."""
    if p.type == "DummyData":
        return _dummy_shape(p, k)
    if p.type == "MemoryData":
        mp = p.memory_data_param
        if k == 0 and mp.batch_size and mp.channels and mp.height and mp.width:
            return (mp.batch_size, mp.channels, mp.height, mp.width), "memory_data_param"
        if k == 1 and mp.batch_size:
            return (mp.batch_size,), "memory_data_param.batch_size (label)"
        return None
    if p.type not in _IMAGE_FILES | {"Data", "WindowData", "AnnotatedData"}:
        return None
    batch, batch_why = _batch(p)
    if k == 1 and p.type in ("Data", "ImageData", "WindowData"):
        return (batch,), f"{batch_why} (label)"
    hw, channels = _spatial(p), _channels(p)
    if k != 0 or hw is None or channels is None:
        return None
    return (batch, channels[0], hw[0], hw[1]), f"{batch_why}, {channels[1]}, {hw[2]}"


def _missing_shape(raw: RawLayer, top: str, path: str) -> PrototxtError:
    p = raw.param
    return PrototxtError(
        f"data layer's top {top!r} has no shape in the definition: give one with "
        f"input_shapes={{{top!r}: (N, C, H, W)}} (command line: --input-shape {top}=N,C,H,W)",
        file=path, line=raw.line, layer=p.name, layer_type=p.type,
    )


UNKNOWN_SHAPE = "unknown (give --input-shape)"


def _input_layer(
    raw: RawLayer, tops: list[str], path: str, input_shapes: Mapping[str, Sequence[int]],
    lenient: bool = False,
) -> tuple[RawLayer, list[CreatedInput]]:
    p = raw.param
    layer = schema.LayerParameter()
    layer.name, layer.type = p.name, "Input"
    created = []
    for top in tops:
        k = list(p.top).index(top)
        user = _user_shape(input_shapes, top)
        found = (user, "given shape") if user is not None else stated_shape(p, k)
        if found is None:
            if not lenient:
                raise _missing_shape(raw, top, path)
            found = ((), UNKNOWN_SHAPE)  # an Input with an empty shape (inspect only)
        shape, source = found
        layer.top.append(top)
        layer.input_param.shape.add().dim.extend(shape)
        created.append(CreatedInput(top, p.name, p.type, tuple(shape), source))
    return RawLayer(layer, raw.line), created


def _override_input(raw: RawLayer, input_shapes: Mapping[str, Sequence[int]]) -> RawLayer:
    """An Input layer with the user's shapes for the tops named in ``input_shapes``."""
    p = raw.param
    if not any(t in input_shapes for t in p.top):
        return raw
    old = list(p.input_param.shape)
    layer = type(p)()
    layer.CopyFrom(p)
    del layer.input_param.shape[:]
    for k, top in enumerate(p.top):
        user = _user_shape(input_shapes, top)
        shape = layer.input_param.shape.add()
        if user is not None:
            shape.dim.extend(user)
        elif old:
            shape.CopyFrom(old[0] if len(old) == 1 else old[min(k, len(old) - 1)])
    return RawLayer(layer, raw.line)


def _classify(raw: Sequence[RawLayer]) -> tuple[set[int], list[DroppedLayer], set[str]]:
    """Indices of dropped layers, the DroppedLayer records, and blobs read by dropped Silence."""
    dead: set[str] = set()  # label blobs and outputs of dropped layers
    for r in raw:
        if is_data_layer(r.param) and r.param.type in _LABELLED:
            dead.update(r.param.top[1:])
    dropped_idx: set[int] = set()
    dropped: list[DroppedLayer] = []
    hidden: set[str] = set()
    for i, r in enumerate(raw):
        p = r.param
        if is_data_layer(p):
            continue
        if is_training_layer(p):
            reason = "training layer"
        elif p.bottom and all(b in dead for b in p.bottom):
            reason = "reads only labels"
        else:
            for t in p.top:  # a kept layer overwriting a dead name revives it
                dead.discard(t)
            continue
        dropped_idx.add(i)
        dropped.append(DroppedLayer(p.name, p.type, r.line, reason))
        dead.update(p.top)
        if p.type == "Silence":
            hidden.update(p.bottom)
    return dropped_idx, dropped, hidden


def to_deploy(
    raw: Sequence[RawLayer],
    path: str,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    lenient: bool = False,
) -> DeployForm:
    """Turn ``raw`` (TEST-phase layers) into the net Caffe deploys; warn once if it changed."""
    input_shapes = dict(input_shapes or {})
    dropped_idx, dropped, hidden = _classify(raw)
    read: set[str] = set()
    for i, r in enumerate(raw):
        if i not in dropped_idx:
            read.update(r.param.bottom)
    layers: list[RawLayer] = []
    created: list[CreatedInput] = []
    for i, r in enumerate(raw):
        if i in dropped_idx:
            continue
        if r.param.type == "Input":
            layers.append(_override_input(r, input_shapes))
        elif is_data_layer(r.param):
            tops = [t for t in r.param.top if t in read]
            if tops:
                layer, made = _input_layer(r, tops, path, input_shapes, lenient)
                layers.append(layer)
                created.extend(made)
        else:
            layers.append(r)
    _check_user_names(layers, input_shapes, path)
    form = DeployForm(layers, tuple(dropped), tuple(created), frozenset(hidden))
    _note(form, raw, dropped_idx, path)
    return form


def _check_user_names(
    layers: Sequence[RawLayer], input_shapes: Mapping[str, Sequence[int]], path: str
) -> None:
    inputs = [t for r in layers if r.param.type == "Input" for t in r.param.top]
    for name, shape in input_shapes.items():
        if name not in inputs:
            raise PrototxtError(f"input shape given for {name!r}, but the net has no input of "
                                f"that name; its inputs: {', '.join(inputs) or '(none)'}",
                                file=path)
        if not shape or any(int(d) <= 0 for d in shape) or math.prod(shape) > 2**40:
            raise PrototxtError(f"input shape {tuple(shape)} of {name!r} is not a shape of "
                                f"positive sizes", file=path)


def _describe(d: DroppedLayer) -> str:
    name = repr(d.name) if d.name else "(unnamed)"
    where = f", line {d.line}" if d.line is not None else ""
    why = ", reads only labels" if d.reason != "training layer" else ""
    return f"{name} ({d.type}{where}{why})"


def _note(form: DeployForm, raw: Sequence[RawLayer], dropped_idx: set[int], path: str) -> None:
    if not form.dropped and not form.created:
        return
    parts = []
    if form.dropped:
        listed = ", ".join(_describe(d) for d in form.dropped)
        parts.append(f"dropped {len(form.dropped)} layer(s) a deploy net does not have: {listed}")
    if form.created:
        listed = ", ".join(f"{c.name} {c.shape} from {c.layer} ({c.layer_type}; {c.source})"
                           for c in form.created)
        parts.append(f"inputs made from data layers: {listed}")
    read_after = {b for i, r in enumerate(raw) if i not in dropped_idx for b in r.param.bottom}
    for i in sorted(dropped_idx):
        p = raw[i].param
        if p.type == "SoftmaxWithLoss" and p.bottom and p.bottom[0] not in read_after:
            parts.append(f"{p.name} (SoftmaxWithLoss) has no deploy twin: its scores "
                         f"{p.bottom[0]!r} are an output, without the softmax")
    warnings.warn(f"{path}: " + "; ".join(parts), CaffeBridgeWarning, stacklevel=4)


def read_deploy_form(
    prototxt: str | os.PathLike[str],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    lenient: bool = False,
) -> tuple[pb_message.Message, DeployForm]:
    """The parsed net message and its deploy form, quietly (load_net already warned).

    ``lenient``: a data layer top without a shape becomes an Input with an empty shape
    (source :data:`UNKNOWN_SHAPE`) instead of an error; only for reports such as ``inspect``.
    """
    from caffe_bridge.prototxt import parse_prototxt
    from caffe_bridge.upgrade import upgrade

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaffeBridgeWarning)
        parsed = parse_prototxt(prototxt)
        form = to_deploy(upgrade(parsed), parsed.path, given_input_shapes(input_shapes),
                         lenient=lenient)
    return parsed.net, form


def deploy_definition(
    prototxt: str | os.PathLike[str],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> pb_message.Message:
    """The deploy form of a definition as a V2 ``NetParameter`` (for a second reader such as
    OpenCV): TEST-phase layers, data layers as Input layers, training layers dropped. Fields
    our schema lacks were skipped when reading and are not in it."""
    parsed_net, form = read_deploy_form(prototxt, input_shapes)
    net = schema.NetParameter()
    net.name = parsed_net.name
    for raw in form.layers:
        net.layer.add().CopyFrom(raw.param)
    return net
