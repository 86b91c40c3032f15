"""Data-movement layers: Slice, Flatten, Reshape, Crop, ArgMax.

Sizes come from ``caffe_bridge.shapes`` (Caffe's rules, checked when the net was loaded). Where
Caffe takes a size from the bottom at run time (Reshape's ``0`` and untouched axes, Crop's
reference blob, an equal Slice), the modules read it from the tensor too, so that a model
converted for one batch size runs on others exactly as Caffe would after reshaping.
"""

from __future__ import annotations

import torch
from torch import nn

from caffe_bridge import shapes
from caffe_bridge.converters.registry import axis_past_batch, register
from caffe_bridge.errors import ShapeError
from caffe_bridge.ir import Layer, Net


def _bottom_shape(layer: Layer, net: Net, i: int = 0) -> tuple[int, ...]:
    return net.blobs[layer.bottoms[i]].shape


class Slice(nn.Module):
    """Cuts ``axis`` into pieces at ``points``, or into ``n_tops`` equal pieces."""

    def __init__(self, axis: int, n_tops: int, points: tuple[int, ...] | None) -> None:
        super().__init__()
        self.axis, self.n_tops, self.points = axis, n_tops, points

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.n_tops == 1:
            return x
        if self.points is None:  # equal pieces of whatever the axis holds now
            parts = torch.split(x, x.shape[self.axis] // self.n_tops, dim=self.axis)
        else:
            bounds = (0, *self.points)
            sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            sizes.append(x.shape[self.axis] - self.points[-1])  # the last top takes the rest
            parts = torch.split(x, sizes, dim=self.axis)
        # indexed, not iterated: torch.fx re-traces the graph (a Proxy cannot be iterated)
        return tuple(parts[i] for i in range(self.n_tops))

    def extra_repr(self) -> str:
        return f"axis={self.axis}, n_tops={self.n_tops}, points={self.points}"


@register("Slice", shape=shapes.slice_shapes,
          per_sample=axis_past_batch("slice_param", "slice_dim"))
def convert_slice(layer: Layer, net: Net) -> nn.Module:
    """Slice along ``axis`` (legacy ``slice_dim``) at ``slice_point``s, or into equal parts."""
    axis, sizes = shapes.slice_sizes(layer.param, _bottom_shape(layer, net))
    points = None
    if layer.param.slice_param.slice_point:
        acc, points_list = 0, []
        for s in sizes[:-1]:
            acc += s
            points_list.append(acc)
        points = tuple(points_list)
    return Slice(axis, len(sizes), points)


class Flatten(nn.Module):
    def __init__(self, start: int, end: int) -> None:
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start, self.end)

    def extra_repr(self) -> str:
        return f"start={self.start}, end={self.end}"


@register("Flatten", shape=shapes.flatten_shapes, per_sample=axis_past_batch("flatten_param"))
def convert_flatten(layer: Layer, net: Net) -> nn.Module:
    """Flatten axes ``axis`` (default 1) through ``end_axis`` (default -1) into one."""
    fp = layer.param.flatten_param
    ndim = len(_bottom_shape(layer, net))
    start = shapes.canonical_axis(fp.axis, ndim)
    end = shapes.canonical_axis(fp.end_axis, ndim)
    return Flatten(start, end)


class Reshape(nn.Module):
    """Reshape to ``dims``, where the positions in ``copied`` take the input's size at run time.

    ``dims`` is Caffe's target for the prototxt's input, with -1 where Caffe infers the size.
    ``copied`` pairs (target position, input axis): the axes before and after the replaced
    range and each ``0`` of the shape, all read from the bottom as Caffe does when it reshapes.
    """

    def __init__(self, dims: tuple[int, ...], copied: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.dims, self.copied = dims, copied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape: list[int] = list(self.dims)
        for pos, src in self.copied:
            shape[pos] = x.shape[src]
        return x.reshape(shape)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, copied={self.copied}"


def _keeps_batch(layer: Layer, net: Net) -> bool:
    """Reshape's per-sample test: axis 0 is outside the reshaped span or copied (``0``)."""
    rp = layer.param.reshape_param
    start = shapes.reshape_start(rp, net.blobs[layer.bottoms[0]].shape)
    return start > 0 or (len(rp.shape.dim) > 0 and rp.shape.dim[0] == 0)


@register("Reshape", shape=shapes.reshape_shapes, per_sample=_keeps_batch)
def convert_reshape(layer: Layer, net: Net) -> nn.Module:
    """Reshape with Caffe's ``0`` (copy), ``-1`` (infer), ``axis`` and ``num_axes``."""
    x = _bottom_shape(layer, net)
    target = shapes.reshape_target(layer.param, x)
    rp = layer.param.reshape_param
    spec = [int(d) for d in rp.shape.dim]
    ndim = len(x)
    start = shapes.reshape_start(rp, x)
    end = ndim if rp.num_axes == -1 else start + rp.num_axes
    copied = [(i, i) for i in range(start)]
    copied += [(start + i, start + i) for i, d in enumerate(spec) if d == 0]
    offset = start + len(spec) - end  # target position of input axis j >= end is j + offset
    copied += [(j + offset, j) for j in range(end, ndim)]
    dims = list(target)
    if -1 in spec:
        dims[start + spec.index(-1)] = -1
    return Reshape(tuple(dims), tuple(copied))


class Crop(nn.Module):
    """``x`` cut to the reference's size on axes ``axis..``, starting at ``offsets``."""

    def __init__(self, axis: int, offsets: tuple[int, ...]) -> None:
        super().__init__()
        self.axis, self.offsets = axis, offsets

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        for i, off in enumerate(self.offsets):
            d = self.axis + i
            x = x.narrow(d, off, ref.shape[d])
        return x

    def extra_repr(self) -> str:
        return f"axis={self.axis}, offsets={self.offsets}"


@register("Crop", shape=shapes.crop_shapes, per_sample=axis_past_batch("crop_param"))
def convert_crop(layer: Layer, net: Net) -> nn.Module:
    """Crop bottom 0 to bottom 1's shape from ``axis`` (default 2) at ``offset``(s)."""
    axis, offsets = shapes.crop_offsets(layer.param,
                               _bottom_shape(layer, net, 0), _bottom_shape(layer, net, 1))
    return Crop(axis, tuple(int(o) for o in offsets))


class ArgMax(nn.Module):
    """Caffe's ArgMax: the ``top_k`` largest (indices as floats, or values), largest first.

    Ties go to the larger index first, as Caffe's ``partial_sort`` with ``std::greater`` on
    (value, index) pairs orders them: a stable descending sort of the flipped axis.
    ``axis`` None: per sample over all other axes, laid out N x (1|2) x top_k (x 1 ...).
    """

    def __init__(self, axis: int | None, top_k: int, out_max_val: bool, ndim: int) -> None:
        super().__init__()
        self.axis, self.top_k, self.out_max_val, self.ndim = axis, top_k, out_max_val, ndim

    def _top(self, v: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = v.shape[dim]
        if self.top_k == 1:  # max returns the first maximum: of the flipped axis, the last one
            vals, idx = torch.max(v.flip(dim), dim=dim, keepdim=True)
        else:
            vals, idx = torch.sort(v.flip(dim), dim=dim, descending=True, stable=True)
            vals, idx = vals.narrow(dim, 0, self.top_k), idx.narrow(dim, 0, self.top_k)
        return vals, ((n - 1) - idx).to(v.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis is not None:
            vals, idx = self._top(x, self.axis)
            return vals if self.out_max_val else idx
        vals, idx = self._top(x.reshape(x.shape[0], -1), 1)  # 1-D bottoms too, as Caffe
        out = torch.stack((idx, vals), dim=1) if self.out_max_val else idx.unsqueeze(1)
        return out.reshape(*out.shape, *([1] * (max(self.ndim, 3) - 3)))

    def extra_repr(self) -> str:
        return f"axis={self.axis}, top_k={self.top_k}, out_max_val={self.out_max_val}"


@register("ArgMax", shape=shapes.argmax_shapes)
def convert_argmax(layer: Layer, net: Net) -> nn.Module:
    """ArgMax: ``top_k`` indices (or values with ``out_max_val``) along ``axis`` or per sample."""
    ap = layer.param.argmax_param
    x = _bottom_shape(layer, net)
    axis = shapes.canonical_axis(ap.axis, len(x)) if ap.HasField("axis") \
        else None
    if ap.top_k < 1:
        raise ShapeError(f"top_k {ap.top_k} must be >= 1")
    return ArgMax(axis, int(ap.top_k), bool(ap.out_max_val), len(x))
