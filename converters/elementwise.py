"""Layers combining or copying whole blobs: Eltwise, Concat, Split."""

from __future__ import annotations

import torch
from torch import nn

from caffe_bridge import schema, shapes
from caffe_bridge.converters.registry import axis_past_batch, register
from caffe_bridge.errors import PrototxtError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.shapes import canonical_axis

PROD, SUM, MAX = (schema.EltwiseParameter.PROD, schema.EltwiseParameter.SUM,
                  schema.EltwiseParameter.MAX)


class EltwiseSum(nn.Module):
    """``sum_i coeff_i * x_i``, accumulated in bottom order as Caffe does."""

    def __init__(self, coeff: tuple[float, ...] | None) -> None:
        super().__init__()
        self.coeff = coeff

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.coeff is None:
            y = xs[0] + xs[1]
            for x in xs[2:]:
                y = y + x
            return y
        y = xs[0] * self.coeff[0] if self.coeff[0] != 1.0 else xs[0]
        for c, x in zip(self.coeff[1:], xs[1:], strict=True):
            y = y + x if c == 1.0 else torch.add(y, x, alpha=c)
        return y

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"


class EltwiseProd(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = xs[0] * xs[1]
        for x in xs[2:]:
            y = y * x
        return y


class EltwiseMax(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = torch.maximum(xs[0], xs[1])
        for x in xs[2:]:
            y = torch.maximum(y, x)
        return y


@register("Eltwise", shape=shapes.eltwise_shapes, per_sample=True)
def convert_eltwise(layer: Layer, net: Net) -> nn.Module:
    """Eltwise SUM (optional per-bottom ``coeff``), PROD or MAX of equally shaped bottoms."""
    ep = layer.param.eltwise_param
    op = ep.operation
    if op == SUM:
        coeff = tuple(float(c) for c in ep.coeff) or None
        if coeff is not None and all(c == 1.0 for c in coeff):
            coeff = None
        return EltwiseSum(coeff)
    if ep.coeff and op == PROD:
        raise PrototxtError("Eltwise PROD takes no coeff")
    if op == PROD:
        return EltwiseProd()
    if op == MAX:  # Caffe accepts and ignores coeff here
        return EltwiseMax()
    raise PrototxtError(f"unknown Eltwise operation {op}")


class Concat(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


@register("Concat", shape=shapes.concat_shapes,
          per_sample=axis_past_batch("concat_param", "concat_dim"))
def convert_concat(layer: Layer, net: Net) -> nn.Module:
    """Concat along ``axis`` (default 1; the legacy ``concat_dim`` wins when set)."""
    cp = layer.param.concat_param
    axis = cp.concat_dim if cp.HasField("concat_dim") else cp.axis
    return Concat(canonical_axis(axis, len(net.blobs[layer.bottoms[0]].shape)))


class Split(nn.Module):
    """The bottom, once per top (a tuple when there are several tops)."""

    def __init__(self, n_tops: int) -> None:
        super().__init__()
        self.n_tops = n_tops

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.n_tops == 1:
            return x
        return (x,) * self.n_tops

    def extra_repr(self) -> str:
        return f"n_tops={self.n_tops}"


@register("Split", shape=shapes.split_shapes, per_sample=True)
def convert_split(layer: Layer, net: Net) -> nn.Module:
    """Split: copies of the bottom, one per top."""
    return Split(len(layer.tops))
