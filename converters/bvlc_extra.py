"""The rest of BVLC's deploy-time layers: Reduction, Tile, Embed, Parameter, BatchReindex, SPP
(BVLC/caffe src/caffe/layers/<name>_layer.cpp), and Filter's refusal.

``Filter`` is not convertible: the number of items its tops hold is the number of non-zero
selector values, read from the data at every forward (filter_layer.cpp's Reshape), so no
static graph has its shape. It is registered as refused, with that reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from google.protobuf import message as pb_message
from torch import nn

from caffe_bridge import schema, shapes
from caffe_bridge.converters import conv, pooling
from caffe_bridge.converters.registry import axis_past_batch, refuse, register
from caffe_bridge.ir import Layer, Net
from caffe_bridge.numeric import f32
from caffe_bridge.shapes import LayerShapes, Shape, ShapeRuleError

_OP = schema.ReductionParameter
SUM, ASUM, SUMSQ, MEAN = _OP.SUM, _OP.ASUM, _OP.SUMSQ, _OP.MEAN


# ---------------------------------------------------------------- Reduction


def reduction_shape(param: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    shapes.need_bottoms(ins, 1)
    rp = param.reduction_param
    if rp.operation not in (SUM, ASUM, SUMSQ, MEAN):
        raise ShapeRuleError(f"unknown reduction operation {rp.operation}")
    axis = shapes.canonical_axis(rp.axis, len(ins[0]))
    return LayerShapes((ins[0][:axis],))


class ReductionCaffe(nn.Module):
    """SUM / ASUM / SUMSQ / MEAN over every axis from ``axis`` on, times ``coeff``."""

    def __init__(self, op: int, axis: int, coeff: float) -> None:
        super().__init__()
        self.op, self.axis, self.coeff = op, axis, coeff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(self.axis)
        if self.op == ASUM:
            y = flat.abs().sum(-1)
        elif self.op == SUMSQ:
            y = (flat * flat).sum(-1)
        elif self.op == MEAN:
            y = flat.mean(-1)
        else:
            y = flat.sum(-1)
        return y if self.coeff == 1.0 else y * self.coeff

    def extra_repr(self) -> str:
        return f"op={self.op}, axis={self.axis}, coeff={self.coeff}"


@register("Reduction", shape=reduction_shape, per_sample=axis_past_batch("reduction_param"))
def convert_reduction(layer: Layer, net: Net) -> nn.Module:
    """Reduction SUM/ASUM/SUMSQ/MEAN of all axes from ``axis`` (default 0) on, times coeff."""
    rp = layer.param.reduction_param
    ndim = len(net.blobs[layer.bottoms[0]].shape)
    axis = shapes.canonical_axis(rp.axis, ndim)
    return ReductionCaffe(rp.operation, axis, f32(rp.coeff))


# ---------------------------------------------------------------- Tile


def tile_shape(param: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    shapes.need_bottoms(ins, 1)
    tp = param.tile_param
    if not tp.HasField("tiles") or tp.tiles <= 0:
        raise ShapeRuleError("tile_param tiles must be set and > 0")
    x = ins[0]
    axis = shapes.canonical_axis(tp.axis, len(x))
    return LayerShapes(((*x[:axis], x[axis] * tp.tiles, *x[axis + 1:]),))


class TileCaffe(nn.Module):
    """Repeat the block of axes from ``axis`` ``tiles`` times (torch ``repeat`` on that axis)."""

    def __init__(self, reps: tuple[int, ...]) -> None:
        super().__init__()
        self.reps = reps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(self.reps)

    def extra_repr(self) -> str:
        return f"reps={self.reps}"


@register("Tile", shape=tile_shape)
def convert_tile(layer: Layer, net: Net) -> nn.Module:
    """Tile: the whole block from ``axis`` repeated ``tiles`` times (a b a b, not a a b b)."""
    tp = layer.param.tile_param
    ndim = len(net.blobs[layer.bottoms[0]].shape)
    axis = shapes.canonical_axis(tp.axis, ndim)
    return TileCaffe(tuple(tp.tiles if i == axis else 1 for i in range(ndim)))


# ---------------------------------------------------------------- Embed


def embed_shape(param: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    shapes.need_bottoms(ins, 1)
    ep = param.embed_param
    if ep.num_output <= 0 or ep.input_dim <= 0:
        raise ShapeRuleError("embed_param num_output and input_dim must be > 0")
    params: list[Shape] = [(ep.input_dim, ep.num_output)]
    if ep.bias_term:
        params.append((ep.num_output,))
    return LayerShapes(((*ins[0], ep.num_output),), tuple(params))


class EmbedCaffe(nn.Module):
    """Row ``int(x)`` (truncated toward zero) of ``weight`` per value, plus ``bias``; an index
    outside [0, input_dim) raises (Caffe only debug-checks it)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.embedding(x.long(), self.weight)
        return y if self.bias is None else y + self.bias


@register("Embed", shape=embed_shape)
def convert_embed(layer: Layer, net: Net) -> nn.Module:
    """Embed: weight (input_dim, num_output) rows looked up by int(x), plus bias."""
    ep = layer.param.embed_param
    weight = torch.zeros(ep.input_dim, ep.num_output)
    bias = torch.zeros(ep.num_output) if ep.bias_term else None
    params = {"weight": weight, **({"bias": bias} if bias is not None else {})}
    conv.load_blobs(layer, params)
    return EmbedCaffe(weight, bias)


# ---------------------------------------------------------------- Parameter


def parameter_shape(param: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    shapes.need_bottoms(ins, 0)
    shape = tuple(int(d) for d in param.parameter_param.shape.dim)
    if any(d <= 0 for d in shape):
        raise ShapeRuleError(f"parameter_param shape {shape} must be positive")
    return LayerShapes((shape,), (shape,))


class ParameterCaffe(nn.Module):
    """No input; returns its one learned blob."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value)

    def forward(self) -> torch.Tensor:
        return self.value


@register("Parameter", shape=parameter_shape)
def convert_parameter(layer: Layer, net: Net) -> nn.Module:
    """Parameter: a top that is its own blob (zeros without weights)."""
    (shape,) = layer.param_shapes
    value = torch.zeros(shape)
    conv.load_blobs(layer, {"value": value})
    return ParameterCaffe(value)


# ---------------------------------------------------------------- BatchReindex


def batch_reindex_shape(param: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    shapes.need_bottoms(ins, 2)
    x, idx = ins
    if len(idx) != 1:
        raise ShapeRuleError(f"BatchReindex indices must be 1-D, got {idx}")
    return LayerShapes(((idx[0], *x[1:]),))


class BatchReindexCaffe(nn.Module):
    """Item i of the top is item ``int(permut[i])`` of the bottom."""

    def forward(self, x: torch.Tensor, permut: torch.Tensor) -> torch.Tensor:
        return x.index_select(0, permut.long())


@register("BatchReindex", shape=batch_reindex_shape)
def convert_batch_reindex(layer: Layer, net: Net) -> nn.Module:
    """BatchReindex: gather items of the batch by a 1-D index blob (repeats allowed)."""
    return BatchReindexCaffe()


# ---------------------------------------------------------------- SPP


def spp_pooling_param(spp: pb_message.Message, level: int, hw: Shape) -> pb_message.Message:
    """The Pooling layer of one pyramid level, as spp_layer.cpp's GetPoolingParam builds it:
    2^level bins, kernel ceil(H / bins), pad (kernel * bins - H + 1) / 2, stride = kernel."""
    lp = schema.LayerParameter()
    lp.type = "Pooling"
    pp = lp.pooling_param
    bins = 2 ** level
    for axis, size in zip("hw", hw, strict=True):
        k = math.ceil(size / bins)
        setattr(pp, f"kernel_{axis}", k)
        setattr(pp, f"stride_{axis}", k)
        setattr(pp, f"pad_{axis}", (k * bins - size + 1) // 2)
    pp.pool = spp.pool
    return lp


def _spp_levels(param: pb_message.Message, x: Shape) -> list[pb_message.Message]:
    sp = param.spp_param
    if len(x) != 4:
        raise ShapeRuleError(f"SPP needs a 4-D bottom, got {x}")
    if sp.pyramid_height < 1:
        raise ShapeRuleError("spp_param pyramid_height must be >= 1")
    if sp.pool not in (pooling.MAX, pooling.AVE):
        raise ShapeRuleError("SPP pools MAX or AVE (STOCHASTIC has no test-phase CPU path)")
    return [spp_pooling_param(sp, i, x[2:]) for i in range(sp.pyramid_height)]


def spp_shape(param: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    shapes.need_bottoms(ins, 1)
    x = ins[0]
    outs = []
    for i, lp in enumerate(_spp_levels(param, x)):
        try:
            geo = shapes.pool_geometry(lp.pooling_param, x[2:])
        except ShapeRuleError as err:
            raise ShapeRuleError(f"pyramid level {i}: {err}") from None
        outs.append(geo.out)
    if len(outs) == 1:
        return LayerShapes(((x[0], x[1], *outs[0]),))
    return LayerShapes(((x[0], x[1] * sum(h * w for h, w in outs)),))


class SPPCaffe(nn.Module):
    """Each level's pooling, flattened from axis 1, concatenated along axis 1."""

    def __init__(self, levels: list[nn.Module]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([level(x).flatten(1) for level in self.levels], 1)


@register("SPP", shape=spp_shape)
def convert_spp(layer: Layer, net: Net) -> nn.Module:
    """SPP: pyramid of Caffe poolings (kernel ceil(H/2^i), pad, stride = kernel), concatenated."""
    x = net.blobs[layer.bottoms[0]].shape
    levels = _spp_levels(layer.param, x)
    mods = [pooling.convert_pooling(dataclasses.replace(layer, type="Pooling", param=lp), net)
            for lp in levels]
    return mods[0] if len(mods) == 1 else SPPCaffe(mods)


# ---------------------------------------------------------------- Filter

refuse("Filter", "Filter is not convertible: its tops hold as many items as the selector (last "
                 "bottom) has non-zero values, decided from the data at every forward (BVLC "
                 "filter_layer.cpp), so no static graph has its shape")
