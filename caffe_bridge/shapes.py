"""Caffe's shape formulas: the only place that knows them.

One rule per layer family, ``rule(param, in_shapes) -> LayerShapes``, giving the top shapes and
the parameter-blob shapes Caffe expects; each is registered together with its converter
(``register("Type", shape=rule)``), so a layer type has one registration. Converters and the
code generator ask the helpers here (``conv_geometry``, ``pool_geometry``, ...) instead of
re-deriving sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf import message as pb_message

from caffe_bridge import schema

Shape = tuple[int, ...]


class ShapeRuleError(ValueError):
    """Raised by a rule or a converter; re-raised as a ShapeError naming file, line and layer."""


@dataclass(frozen=True)
class LayerShapes:
    tops: tuple[Shape, ...]
    params: tuple[Shape, ...] = ()


Rule = Callable[[pb_message.Message, Sequence[Shape]], LayerShapes]


def infer(param: pb_message.Message, in_shapes: Sequence[Shape]) -> LayerShapes:
    """Shapes of one layer's tops and parameter blobs (KeyError if no converter handles it).

    The rule is the one registered with the layer's converter (``register(..., shape=rule)``);
    a converter registered without one has its tops inferred by running its module on meta
    tensors. Like Caffe, a blob may hold at most ``MAX_COUNT`` values: larger tops or parameter
    blobs are a :class:`ShapeRuleError` here, before anything is allocated.
    """
    if param.type == "Input":
        result = input_shapes(param, in_shapes)
    else:
        from caffe_bridge import converters

        converters.load_plugins()
        result = converters.REGISTRY.infer_shapes(param, in_shapes)
    for what, group in (("top", result.tops), ("parameter blob", result.params)):
        for i, shape in enumerate(group):
            check_count(shape, f"{what} {i}")
    return result


def known_types() -> frozenset[str]:
    """The layer types that load: ``Input`` and every registered converter's."""
    from caffe_bridge import converters

    return frozenset({"Input", *converters.REGISTRY.types()})


MAX_COUNT = 2**31 - 1  # Caffe's Blob::Reshape: "blob size exceeds INT_MAX"


def check_count(shape: Shape, what: str) -> None:
    """``shape`` must hold at most ``MAX_COUNT`` values (Caffe's limit of one blob)."""
    if _count(shape) > MAX_COUNT:
        raise ShapeRuleError(f"{what} of shape {tuple(shape)} would hold {_count(shape):,} "
                             f"values, more than a Caffe blob can ({MAX_COUNT:,})")


def canonical_axis(axis: int, ndim: int) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
    if not -ndim <= axis < ndim:
        raise ShapeRuleError(f"axis {axis} out of range for a {ndim}-D blob")
    return axis % ndim


def need_bottoms(in_shapes: Sequence[Shape], lo: int, hi: int | None = None) -> None:
    """``lo`` bottoms (``lo`` to ``hi``; ``hi`` -1: any number from ``lo``), else an error."""
    hi = lo if hi is None else hi
    if not lo <= len(in_shapes) <= (hi if hi >= 0 else 10**9):
        want = str(lo) if hi == lo else f"{lo} or more" if hi < 0 else f"{lo} to {hi}"
        raise ShapeRuleError(f"expects {want} bottom(s), got {len(in_shapes)}")


def _count(shape: Sequence[int]) -> int:
    return math.prod(shape)


# ---------------------------------------------------------------- Input


def input_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    shapes = [tuple(int(d) for d in s.dim) for s in p.input_param.shape]
    n = len(p.top)
    if len(shapes) == 1 and n > 1:
        shapes = shapes * n
    if len(shapes) != n:
        raise ShapeRuleError(f"{n} tops but {len(shapes)} input shapes")
    for s in shapes:
        if any(d < 0 for d in s):
            raise ShapeRuleError(f"negative input dimension in {s}")
        if any(d == 0 for d in s):
            raise ShapeRuleError(f"zero input dimension in {s}: empty blobs are not supported")
    return LayerShapes(tuple(shapes))


# ---------------------------------------------------------------- Convolution family


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]


def _per_dim(values: Sequence[int], n: int, default: int, what: str) -> tuple[int, ...]:
    if not values:
        return (default,) * n
    if len(values) == 1:
        return (int(values[0]),) * n
    if len(values) != n:
        raise ShapeRuleError(f"{what} has {len(values)} values for {n} spatial dims")
    return tuple(int(v) for v in values)


def conv_geometry(cp: pb_message.Message, n_spatial: int) -> ConvGeometry:
    """Kernel/stride/pad/dilation per spatial dim; ``_h``/``_w`` win when *present*."""
    if cp.HasField("kernel_h") or cp.HasField("kernel_w"):
        if n_spatial != 2 or not (cp.HasField("kernel_h") and cp.HasField("kernel_w")):
            raise ShapeRuleError("kernel_h and kernel_w must both be set, for 2-D only")
        kernel = (cp.kernel_h, cp.kernel_w)
    else:
        if not cp.kernel_size:
            raise ShapeRuleError("kernel_size (or kernel_h/kernel_w) is required")
        kernel = _per_dim(cp.kernel_size, n_spatial, 1, "kernel_size")
    if cp.HasField("stride_h") or cp.HasField("stride_w"):
        if n_spatial != 2:
            raise ShapeRuleError("stride_h and stride_w are for 2-D convolution only")
        stride = (cp.stride_h if cp.HasField("stride_h") else 1,
                  cp.stride_w if cp.HasField("stride_w") else 1)
    else:
        stride = _per_dim(cp.stride, n_spatial, 1, "stride")
    if cp.HasField("pad_h") or cp.HasField("pad_w"):
        if n_spatial != 2:
            raise ShapeRuleError("pad_h and pad_w are for 2-D convolution only")
        pad = (cp.pad_h if cp.HasField("pad_h") else 0, cp.pad_w if cp.HasField("pad_w") else 0)
    else:
        pad = _per_dim(cp.pad, n_spatial, 0, "pad")
    dilation = _per_dim(cp.dilation, n_spatial, 1, "dilation")
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        raise ShapeRuleError(f"kernel {kernel}, stride {stride}, dilation {dilation} must be > 0")
    if any(x < 0 for x in pad):
        raise ShapeRuleError(f"negative pad {pad}")
    _int_sized(kernel=kernel, stride=stride, pad=pad, dilation=dilation)
    return ConvGeometry(tuple(kernel), tuple(stride), tuple(pad), tuple(dilation))


def conv_out_sizes(spatial: Sequence[int], geo: ConvGeometry) -> tuple[int, ...]:
    """Caffe's convolution output size per spatial dim: floor((in + 2p - extent) / s) + 1."""
    out = []
    for size, k, s, pd, d in zip(spatial, geo.kernel, geo.stride, geo.pad, geo.dilation,
                                 strict=True):
        extent = d * (k - 1) + 1
        o = (size + 2 * pd - extent) // s + 1  # Caffe floors
        if o <= 0:
            raise ShapeRuleError(f"kernel extent {extent} exceeds padded input {size + 2 * pd}")
        out.append(o)
    return tuple(out)


def _int_sized(**geometry: Sequence[int]) -> None:
    """Caffe keeps kernel, stride, pad and dilation in ``int``: larger values overflow there."""
    for name, values in geometry.items():
        if any(v > MAX_COUNT for v in values):
            raise ShapeRuleError(f"{name} {tuple(values)} exceeds {MAX_COUNT} (Caffe holds it "
                                 f"in an int)")


def _conv_common(p: pb_message.Message, ins: Sequence[Shape]) -> tuple[
    pb_message.Message, Shape, int, ConvGeometry
]:
    cp = p.convolution_param
    if not ins:
        raise ShapeRuleError("expects at least one bottom")
    x = ins[0]
    axis = canonical_axis(cp.axis, len(x))
    channels = x[axis]
    geo = conv_geometry(cp, len(x) - axis - 1)
    if cp.num_output <= 0:
        raise ShapeRuleError("num_output must be > 0")
    if cp.group <= 0 or channels % cp.group or cp.num_output % cp.group:
        raise ShapeRuleError(
            f"group {cp.group} must divide input channels {channels} and num_output "
            f"{cp.num_output}"
        )
    return cp, x, axis, geo


def convolution_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    cp, x, axis, geo = _conv_common(p, ins)
    top = (*x[:axis], cp.num_output, *conv_out_sizes(x[axis + 1:], geo))
    params: list[Shape] = [(cp.num_output, x[axis] // cp.group, *geo.kernel)]
    if cp.bias_term:
        params.append((cp.num_output,))
    return LayerShapes(tuple(top for _ in ins), tuple(params))


def deconvolution_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    cp, x, axis, geo = _conv_common(p, ins)
    spatial = []
    for size, k, s, pd, d in zip(x[axis + 1:], geo.kernel, geo.stride, geo.pad, geo.dilation,
                                 strict=True):
        out = s * (size - 1) + d * (k - 1) + 1 - 2 * pd  # no output padding in Caffe
        if out <= 0:
            raise ShapeRuleError(f"deconvolution output size {out} <= 0")
        spatial.append(out)
    top = (*x[:axis], cp.num_output, *spatial)
    params: list[Shape] = [(x[axis], cp.num_output // cp.group, *geo.kernel)]
    if cp.bias_term:
        params.append((cp.num_output,))
    return LayerShapes(tuple(top for _ in ins), tuple(params))


def inner_product_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1)
    ip = p.inner_product_param
    x = ins[0]
    axis = canonical_axis(ip.axis, len(x))
    k = _count(x[axis:])
    n = ip.num_output
    if n <= 0:
        raise ShapeRuleError("num_output must be > 0")
    params: list[Shape] = [(k, n) if ip.transpose else (n, k)]
    if ip.bias_term:
        params.append((n,))
    return LayerShapes(((*x[:axis], n),), tuple(params))


# ---------------------------------------------------------------- Pooling


@dataclass(frozen=True)
class PoolGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    ceil: bool
    global_pooling: bool
    out: tuple[int, int]


def pool_ceil_mode(pp: pb_message.Message) -> bool:
    """CEIL unless FLOOR is asked: upstream ``round_mode`` or the forks' ``ceil_mode`` bool."""
    if pp.HasField("ceil_mode"):  # fork spelling; wins when present
        return bool(pp.ceil_mode)
    return pp.round_mode == schema.PoolingParameter.CEIL


def pooled_size(size: int, k: int, s: int, pd: int, ceil: bool, extra: int = 0) -> int:
    """Caffe's pooled size: ceil (or floor) division, then clip a window starting in the pad.

    ``extra`` windows are added before the clip (ChenYingpeng/caffe-yolov3's fork rule).
    """
    span = size + 2 * pd - k
    out = (-(-span // s) if ceil else span // s) + 1 + extra
    if pd > 0 and (out - 1) * s >= size + pd:
        out -= 1  # the last window would start inside the bottom/right padding
    return out


def pool_geometry(pp: pb_message.Message, hw: Sequence[int]) -> PoolGeometry:
    """Geometry of a 2-D Pooling layer over spatial size ``hw``."""
    h, w = hw
    gp = pp.global_pooling
    if gp:
        if pp.HasField("kernel_size") or pp.HasField("kernel_h") or pp.HasField("kernel_w"):
            raise ShapeRuleError("global_pooling takes no kernel size")
        kernel = (h, w)
    elif pp.HasField("kernel_h") or pp.HasField("kernel_w"):
        if not (pp.HasField("kernel_h") and pp.HasField("kernel_w")):
            raise ShapeRuleError("kernel_h and kernel_w must both be set")
        kernel = (pp.kernel_h, pp.kernel_w)
    elif pp.HasField("kernel_size"):
        kernel = (pp.kernel_size, pp.kernel_size)
    else:
        raise ShapeRuleError("kernel_size (or kernel_h/kernel_w, or global_pooling) is required")
    pad = (pp.pad_h, pp.pad_w) if pp.HasField("pad_h") or pp.HasField("pad_w") else (pp.pad, pp.pad)
    if pp.HasField("stride_h") or pp.HasField("stride_w"):
        stride = (pp.stride_h if pp.HasField("stride_h") else 1,
                  pp.stride_w if pp.HasField("stride_w") else 1)
    else:
        stride = (pp.stride, pp.stride)  # default 1, unlike PyTorch's default of the kernel
    if gp and (pad != (0, 0) or stride != (1, 1)):
        raise ShapeRuleError("global pooling requires pad 0 and stride 1")
    if min(kernel) <= 0 or min(stride) <= 0:
        raise ShapeRuleError(f"kernel {kernel} and stride {stride} must be > 0")
    _int_sized(kernel=kernel, stride=stride, pad=pad)
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise ShapeRuleError(f"pad {pad} must be smaller than kernel {kernel}")
    ceil = pool_ceil_mode(pp)
    if gp:
        out = (1, 1)
    else:
        # ChenYingpeng/caffe-yolov3 pooling_layer.cpp: both sizes grow by one when
        # (kernel_h - stride_h) is odd (it tests the height only)
        extra = int(pp.odd_window_extra and (kernel[0] - stride[0]) % 2 == 1)
        out = (pooled_size(h, kernel[0], stride[0], pad[0], ceil, extra),
               pooled_size(w, kernel[1], stride[1], pad[1], ceil, extra))
        if min(out) <= 0:
            raise ShapeRuleError(f"kernel {kernel} larger than padded input {(h, w)}")
    return PoolGeometry(kernel, stride, pad, ceil, gp, out)


def pooling_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1)
    x = ins[0]
    if len(x) != 4:
        raise ShapeRuleError(f"Pooling needs a 4-D bottom, got {x}")
    geo = pool_geometry(p.pooling_param, x[2:])
    out = (x[0], x[1], *geo.out)
    if len(p.top) == 2 and p.pooling_param.pool == schema.PoolingParameter.MAX:  # the mask top
        return LayerShapes((out, out))
    return LayerShapes((out,))


# ---------------------------------------------------------------- shape-preserving layers


def same_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """One bottom, one top of the same shape (neuron layers)."""
    need_bottoms(ins, 1)
    return LayerShapes((ins[0],))


def softmax_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1)
    canonical_axis(p.softmax_param.axis, len(ins[0]))
    return LayerShapes((ins[0],))


def lrn_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1)
    size = p.lrn_param.local_size
    if size % 2 == 0:
        raise ShapeRuleError("LRN local_size must be odd")
    _int_sized(local_size=(size,))
    x = ins[0]
    if p.lrn_param.norm_region == schema.LRNParameter.ACROSS_CHANNELS and len(x) > 1:  # pads C
        check_count((*x[:1], x[1] + size - 1, *x[2:]), f"LRN local_size {size}: its "
                    f"channel-padded buffer")
    return LayerShapes((ins[0],))


def prelu_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1)
    x = ins[0]
    channels = x[1] if len(x) > 1 else 1
    return LayerShapes((x,), ((1,) if p.prelu_param.channel_shared else (channels,),))


def batch_norm_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1)
    x = ins[0]
    c = x[1] if len(x) > 1 else 1
    return LayerShapes((x,), ((c,), (c,), (1,)))  # mean, variance, moving-average factor


def _scale_shape(x: Shape, axis_field: int, num_axes: int) -> Shape:
    axis = canonical_axis(axis_field, len(x))
    if num_axes == -1:
        return x[axis:]
    if num_axes < -1 or axis + num_axes > len(x):
        raise ShapeRuleError(f"num_axes {num_axes} out of range from axis {axis} of {x}")
    return x[axis: axis + num_axes]


def broadcast_axis(x: Shape, y: Shape, axis_field: int) -> int:
    """Start axis of a two-bottom Scale/Bias: bottom[1]'s dims must match x's from there."""
    axis = canonical_axis(axis_field, len(x)) if len(x) else 0
    if len(y) == 0:  # scalar scale
        return axis
    if axis + len(y) > len(x) or x[axis: axis + len(y)] != y:
        raise ShapeRuleError(f"bottom[1] shape {y} does not match {x} from axis {axis}")
    return axis


def scale_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1, 2)
    x = ins[0]
    sp = p.scale_param if p.type == "Scale" else p.bias_param
    if len(ins) == 2:
        broadcast_axis(x, ins[1], sp.axis)
        params: tuple[Shape, ...] = ()
        if p.type == "Scale" and sp.bias_term:
            params = (ins[1],)
        return LayerShapes((x,), params)
    shape = _scale_shape(x, sp.axis, sp.num_axes)
    if p.type == "Scale":
        return LayerShapes((x,), (shape, shape) if sp.bias_term else (shape,))
    return LayerShapes((x,), (shape,))


# ---------------------------------------------------------------- multi-input


def eltwise_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 2, -1)
    if any(s != ins[0] for s in ins):
        raise ShapeRuleError(f"Eltwise bottoms differ in shape: {list(ins)}")
    ep = p.eltwise_param
    if ep.coeff and len(ep.coeff) != len(ins):
        raise ShapeRuleError(f"{len(ep.coeff)} coeff values for {len(ins)} bottoms")
    if ep.coeff and ep.operation == schema.EltwiseParameter.PROD:  # MAX ignores it, as Caffe
        raise ShapeRuleError("coeff is not valid with operation PROD")
    return LayerShapes((ins[0],))


def axpy_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    # SENet's Axpy: bottoms (a, X, Y) -> a * X + Y, a being N x C (x 1 x 1).
    need_bottoms(ins, 3)
    a, x, y = ins
    if x != y:
        raise ShapeRuleError(f"Axpy X {x} and Y {y} differ")
    if a[:2] != x[:2] or any(d != 1 for d in a[2:]):
        raise ShapeRuleError(f"Axpy scale {a} must be N x C (x 1 x 1) for X {x}")
    return LayerShapes((x,))


def concat_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1, -1)
    cp = p.concat_param
    axis_field = cp.concat_dim if cp.HasField("concat_dim") else cp.axis
    axis = canonical_axis(axis_field, len(ins[0]))
    for s in ins[1:]:
        if len(s) != len(ins[0]) or any(
            a != b for i, (a, b) in enumerate(zip(s, ins[0], strict=True)) if i != axis
        ):
            raise ShapeRuleError(f"Concat bottoms {list(ins)} differ outside axis {axis}")
    total = sum(s[axis] for s in ins)
    return LayerShapes(((*ins[0][:axis], total, *ins[0][axis + 1:]),))


def slice_sizes(p: pb_message.Message, x: Shape) -> tuple[int, list[int]]:
    """Axis and per-top sizes of a Slice layer."""
    sp = p.slice_param
    axis = canonical_axis(sp.slice_dim if sp.HasField("slice_dim") else sp.axis, len(x))
    n_tops = len(p.top)
    dim = x[axis]
    if sp.slice_point:
        points = list(sp.slice_point)
        if len(points) != n_tops - 1:
            raise ShapeRuleError(f"{len(points)} slice points for {n_tops} tops")
        bounds = [0, *points, dim]
        if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ShapeRuleError(f"slice points {points} must increase within 1..{dim - 1}")
        return axis, [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    if dim % n_tops:
        raise ShapeRuleError(f"dimension {dim} does not split evenly into {n_tops} tops")
    return axis, [dim // n_tops] * n_tops


def slice_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1)
    x = ins[0]
    axis, sizes = slice_sizes(p, x)
    return LayerShapes(tuple((*x[:axis], s, *x[axis + 1:]) for s in sizes))


def split_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1)
    return LayerShapes(tuple(ins[0] for _ in p.top))


def flatten_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1)
    x = ins[0]
    fp = p.flatten_param
    start = canonical_axis(fp.axis, len(x))
    end = canonical_axis(fp.end_axis, len(x))
    if end < start:
        raise ShapeRuleError(f"end_axis {fp.end_axis} before axis {fp.axis}")
    return LayerShapes(((*x[:start], _count(x[start: end + 1]), *x[end + 1:]),))


def reshape_start(rp: pb_message.Message, x: Shape) -> int:
    """The first axis of bottom shape ``x`` a Reshape replaces (``axis``; -1: after the last)."""
    start = rp.axis + len(x) + 1 if rp.axis < 0 else rp.axis
    if not 0 <= start <= len(x):
        raise ShapeRuleError(f"reshape axis {rp.axis} out of range for {x}")
    return start


def reshape_target(p: pb_message.Message, x: Shape) -> Shape:
    """Caffe's Reshape: 0 copies the bottom dim at that position, one -1 is inferred."""
    rp = p.reshape_param
    dims = [int(d) for d in rp.shape.dim]
    ndim = len(x)
    start = reshape_start(rp, x)
    if rp.num_axes == -1:
        end = ndim
    else:
        end = start + rp.num_axes
        if rp.num_axes < -1 or end > ndim:
            raise ShapeRuleError(f"reshape num_axes {rp.num_axes} out of range for {x}")
    out: list[int] = []
    inferred = None
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= ndim:
                raise ShapeRuleError(f"dim {i} is 0 but the bottom has no axis {start + i}")
            out.append(x[start + i])
        elif d == -1:
            if inferred is not None:
                raise ShapeRuleError("at most one -1 in reshape_param.shape")
            inferred = i
            out.append(1)
        elif d < -1:
            raise ShapeRuleError(f"invalid reshape dim {d}")
        else:
            out.append(d)
    full = [*x[:start], *out, *x[end:]]
    total = _count(x)
    if inferred is not None:
        known = _count(full)
        if known == 0 or total % known:
            raise ShapeRuleError(f"cannot infer -1: {total} values into {full}")
        full[start + inferred] = total // known
    if _count(full) != total:
        raise ShapeRuleError(f"reshape of {x} ({total} values) to {tuple(full)} changes count")
    return tuple(full)


def reshape_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1)
    return LayerShapes((reshape_target(p, ins[0]),))


def crop_offsets(p: pb_message.Message, x: Shape, ref: Shape) -> tuple[int, list[int]]:
    """Start axis and per-axis offsets of a Crop layer (one offset value applies to all)."""
    cp = p.crop_param
    axis = canonical_axis(cp.axis, len(x))
    n = len(x) - axis
    offs = list(cp.offset)
    if len(offs) == 0:
        offs = [0] * n
    elif len(offs) == 1:
        offs = offs * n
    elif len(offs) != n:
        raise ShapeRuleError(f"{len(offs)} crop offsets for {n} cropped axes")
    for i, o in enumerate(offs):
        if o + ref[axis + i] > x[axis + i]:
            raise ShapeRuleError(f"crop of axis {axis + i} at offset {o} to {ref[axis + i]} "
                                 f"exceeds {x[axis + i]}")
    return axis, offs


def crop_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 2)
    x, ref = ins
    if len(x) != len(ref):
        raise ShapeRuleError(f"Crop bottoms {x} and {ref} differ in rank")
    axis, _ = crop_offsets(p, x, ref)
    return LayerShapes(((*x[:axis], *ref[axis:]),))


def argmax_shapes(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    need_bottoms(ins, 1)
    x = ins[0]
    ap = p.argmax_param
    k = ap.top_k
    if ap.HasField("axis"):
        axis = canonical_axis(ap.axis, len(x))
        if k > x[axis]:
            raise ShapeRuleError(f"top_k {k} exceeds dimension {x[axis]}")
        return LayerShapes(((*x[:axis], k, *x[axis + 1:]),))
    if k > _count(x[1:]):
        raise ShapeRuleError(f"top_k {k} exceeds {_count(x[1:])} values per sample")
    # Caffe: max(ndim, 3) axes of 1, then (N, 1 or 2 with out_max_val, top_k, 1, ...).
    top = [1] * max(len(x), 3)
    top[0], top[1], top[2] = x[0], 2 if ap.out_max_val else 1, k
    return LayerShapes((tuple(top),))
