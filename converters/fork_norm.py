"""The forks' custom ``BN`` layer (PSPNet/TSN, SegNet/ENet, PSPNet's initial commit) and MVN.

Which variant a ``BN`` layer is comes from its ``bn_param`` fields (and, with weights, its blob
count): see :func:`bn_variant` and docs/SEMANTICS.md. Stored statistics map onto
``nn.BatchNorm2d``; variants that normalise with the batch's own statistics at test time
(SegNet's ``bn_mode: LEARN``, the default there, and the initial PSPNet variant without
``moving_average``) use :class:`BatchStatNorm`, reproducing each fork's variance formula.
MVN (BVLC mvn_layer.cpp) adds eps to the standard deviation, not to the variance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from google.protobuf import message as pb_message
from torch import nn

from caffe_bridge import schema
from caffe_bridge.converters.registry import register
from caffe_bridge.errors import UnsupportedLayerError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.numeric import f32_tensor
from caffe_bridge.shapes import LayerShapes, Shape, ShapeRuleError

PSPNET, SEGNET, INITIAL = "pspnet", "segnet", "pspnet-initial"
_FIELDS = {
    PSPNET: ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine"),
    SEGNET: ("bn_mode",),
    INITIAL: ("var_eps", "moving_average", "decay", "axis"),
}
N_BLOBS = {PSPNET: 4, SEGNET: 2, INITIAL: 4}
SEGNET_EPS = 1e-9  # hard-coded in caffe-segnet's BNLayer::LayerSetUp
INFERENCE = schema.BNParameter.INFERENCE


def bn_variant(p: pb_message.Message, n_blobs: int | None = None) -> str:
    """The BN variant named by ``p.bn_param``'s fields; ``n_blobs`` (when weights are loaded)
    decides only where the fields do not, and must then agree.

    PSPNet/TSN fields -> "pspnet"; ``bn_mode`` -> "segnet"; ``var_eps``/``moving_average``/
    ``decay``/``axis`` -> "pspnet-initial"; only ``scale_filler``/``shift_filler`` -> "segnet"
    (2 blobs) or "pspnet-initial" (4 blobs); nothing set -> "segnet" with 2 blobs, else "pspnet".
    """
    bp = p.bn_param
    kinds = {k for k, names in _FIELDS.items() if any(bp.HasField(n) for n in names)}
    if len(kinds) > 1:
        raise ShapeRuleError(f"BN fields of different forks' variants {sorted(kinds)} in one "
                             "layer; cannot tell which BN this is")
    if not kinds:
        fillers = bp.HasField("scale_filler") or bp.HasField("shift_filler")
        if fillers:
            kinds = {INITIAL if n_blobs == 4 else SEGNET}
        else:
            kinds = {SEGNET if n_blobs == 2 else PSPNET}
    kind = kinds.pop()
    if n_blobs is not None and n_blobs != N_BLOBS[kind]:
        raise ShapeRuleError(f"BN variant {kind!r} (from its fields) stores {N_BLOBS[kind]} "
                             f"blobs, the weights have {n_blobs}")
    if kind == INITIAL and bp.axis not in (1, 2):
        raise ShapeRuleError(f"BN axis must be 1 or 2, got {bp.axis}")
    return kind


def bn_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    if len(ins) != 1 or len(ins[0]) != 4:
        raise ShapeRuleError(f"BN takes one 4-D bottom, got {list(ins)}")
    if len(p.top) != 1:
        raise ShapeRuleError("BN's batch mean/variance tops (training only) are not supported")
    kind = bn_variant(p)
    axis = p.bn_param.axis if kind == INITIAL else 1
    blob = [1, 1, 1, 1]
    blob[axis] = ins[0][axis]
    return LayerShapes(tops=(ins[0],), params=(tuple(blob),) * N_BLOBS[kind])


class BatchStatNorm(nn.Module):
    """``(x - E x) / sqrt(var + eps) * scale + shift`` with the batch's statistics over every
    axis but ``axis``; ``var`` is ``E(x^2) - (E x)^2`` (SegNet) or ``E((x - E x)^2)``."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, eps: float, axis: int,
                 moments: bool) -> None:
        super().__init__()
        self.scale, self.shift = nn.Parameter(scale), nn.Parameter(shift)
        self.eps, self.axis, self.moments = eps, axis, moments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(4) if d != self.axis]
        mean = x.mean(dim=dims, keepdim=True)
        if self.moments:
            var = (x * x).mean(dim=dims, keepdim=True) - mean * mean
        else:
            var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.scale + self.shift


class ChannelAffine(nn.Module):
    """``scale * x + shift`` per channel (SegNet's ``bn_mode: INFERENCE``)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.scale, self.shift = nn.Parameter(scale), nn.Parameter(shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x + self.shift


def _blobs(layer: Layer, kind: str, shape: Shape) -> list[torch.Tensor]:
    """The layer's blobs in ``shape`` (Caffe's initial values when none are loaded)."""
    if layer.blobs:
        return [f32_tensor(b).reshape(shape) for b in layer.blobs]
    init = [1.0, 0.0, 0.0, 1.0 if kind == PSPNET and layer.param.bn_param.frozen else 0.0]
    return [torch.full(shape, v) for v in init[:N_BLOBS[kind]]]


def _stored_stats(blobs: list[torch.Tensor], eps: float) -> nn.Module:
    c = blobs[0].numel()
    bn = nn.BatchNorm2d(c, eps=eps).eval()
    with torch.no_grad():
        for dst, src in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), blobs,
                            strict=True):
            dst.copy_(src.reshape(-1))
    return bn


def _variant(layer: Layer) -> str:
    return bn_variant(layer.param, len(layer.blobs) if layer.blobs else None)


def batch_statistics(layer: Layer) -> bool:
    """Whether this BN normalises with the statistics of the batch it is given at test time
    (SegNet's ``bn_mode: LEARN``, the initial PSPNet variant without ``moving_average``), so
    mixing the samples of a batch; the other variants apply stored statistics."""
    kind, bp = _variant(layer), layer.param.bn_param
    if kind == SEGNET:
        return bp.bn_mode != INFERENCE
    return kind == INITIAL and not bp.moving_average


@register("BN", shape=bn_shape,
          fork="hszhao/PSPNet, yjxiong/caffe, alexgkendall/caffe-segnet, TimoSaemann/caffe-enet",
          per_sample=lambda layer, net: not batch_statistics(layer))
def convert_bn(layer: Layer, net: Net) -> nn.Module:
    """BN of the forks (PSPNet/TSN, SegNet/ENet incl. bn_mode LEARN, PSPNet initial commit)."""
    kind, bp = _variant(layer), layer.param.bn_param
    axis = bp.axis if kind == INITIAL else 1
    blobs = _blobs(layer, kind, tuple(layer.param_shapes[0]))
    if batch_statistics(layer):
        eps, moments = (SEGNET_EPS, True) if kind == SEGNET else (bp.var_eps, False)
        return BatchStatNorm(blobs[0], blobs[1], eps, axis, moments=moments)
    if kind == SEGNET:  # bn_mode: INFERENCE
        return ChannelAffine(*blobs)
    if axis != 1:
        raise UnsupportedLayerError("BN with axis 2 and moving_average is not converted")
    return _stored_stats(blobs, bp.eps if kind == PSPNET else bp.var_eps)


class MeanVarNorm(nn.Module):
    """BVLC MVN over the trailing axes from ``start`` (1: across channels, 2: per channel)."""

    def __init__(self, start: int, normalize_variance: bool, eps: float) -> None:
        super().__init__()
        self.start, self.normalize_variance, self.eps = start, normalize_variance, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.unsqueeze(-1).flatten(self.start)  # also for a 2-D bottom
        y = flat - flat.mean(dim=-1, keepdim=True)
        if self.normalize_variance:
            y = y / ((y * y).mean(dim=-1, keepdim=True).sqrt() + self.eps)
        return y.reshape_as(x)


def mvn_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    if len(ins) != 1 or len(ins[0]) < 2:
        raise ShapeRuleError(f"MVN takes one bottom of 2+ axes, got {list(ins)}")
    return LayerShapes(tops=(ins[0],))


@register("MVN", shape=mvn_shape, per_sample=True)
def convert_mvn(layer: Layer, net: Net) -> nn.Module:
    """MVN: mean (and std, eps added to the std) over H*W or C*H*W."""
    mp = layer.param.mvn_param
    return MeanVarNorm(1 if mp.across_channels else 2, mp.normalize_variance, mp.eps)
