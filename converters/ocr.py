"""The OCR forks' layers: `Lstm`, `Reverse`, `Transpose`, `CTCGreedyDecoder`; BVLC's `Im2col`.

caffe_ocr's `DenseBlock` (a whole DenseNet block in one layer) is not converted yet.

Sources: tianzhi0549/CTPN (caffe/src/caffe/layers/{lstm,reverse,transpose}_layer.cpp/.cu) and
senlinuc/caffe_ocr (src/caffe/layers/lstm_layer_Junhyuk.cpp, reverse_layer.cpp,
transpose_layer.cpp, ctc_decoder_layer.cpp), which agree on the shared types.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from google.protobuf import message as pb_message
from torch import nn

from caffe_bridge.converters.registry import register
from caffe_bridge.ir import Layer, Net
from caffe_bridge.shapes import LayerShapes, ShapeRuleError, conv_geometry

Shape = tuple[int, ...]
OCR_FORKS = "tianzhi0549/CTPN, senlinuc/caffe_ocr"


def _count(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


# ---------------------------------------------------------------- Lstm (lstm_param)


def lstm_fork_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """x (T x N x ...) [, clip] -> T x N x num_output; blobs W_i (4H x I), W_h (4H x H), b (4H)."""
    hidden = int(p.lstm_param.num_output)
    if hidden <= 0:
        raise ShapeRuleError("lstm_param.num_output must be positive")
    if len(ins) not in (1, 2) or len(ins[0]) < 2:
        raise ShapeRuleError(f"needs x (T x N x ...) and an optional clip; got {list(ins)}")
    t, n = ins[0][:2]
    # With a clip bottom the fork checks clip.num() == clip.count() and reads clip[t + n]: one
    # entry per step, which is per stream only when N == 1.
    if len(ins) == 2 and (_count(ins[1]) != ins[1][0] or ins[1][0] != t or n != 1):
        raise ShapeRuleError(f"clip {ins[1]} is supported with one stream (N = 1) and T = {t}"
                             f" entries; the fork reads clip[t + n], past its end for N > 1")
    params = ((4 * hidden, _count(ins[0][2:])), (4 * hidden, hidden), (4 * hidden,))
    return LayerShapes(((t, n, hidden),), params)


class OcrLstm(nn.Module):
    """The OCR forks' Lstm (their GPU forward): gate rows i, f, o, g; clip_t defaults to t > 0."""

    def __init__(self, steps: int, w_i: torch.Tensor, w_h: torch.Tensor, b: torch.Tensor,
                 clip: bool) -> None:
        super().__init__()
        self.steps, self.clip = steps, clip
        self.hidden = w_h.shape[1]
        self.weight_i, self.weight_h, self.bias = (nn.Parameter(v) for v in (w_i, w_h, b))

    def forward(self, x: torch.Tensor, *clip: torch.Tensor) -> torch.Tensor:
        pre = F.linear(x.reshape(x.shape[0], x.shape[1], -1), self.weight_i, self.bias)
        hd = self.hidden
        h = c = x.new_zeros((x.shape[1], hd))
        cont = clip[0].reshape(self.steps, 1, 1) if self.clip else None
        outs = []
        for t in range(self.steps):
            scale = cont[t] if cont is not None else float(t > 0)
            a = pre[t] + scale * F.linear(h, self.weight_h)
            i, f = torch.sigmoid(a[:, :hd]), torch.sigmoid(a[:, hd:2 * hd])
            o, g = torch.sigmoid(a[:, 2 * hd:3 * hd]), torch.tanh(a[:, 3 * hd:])
            c = scale * f * c + i * g
            h = o * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs)


@register("Lstm", shape=lstm_fork_shape, fork=OCR_FORKS)
def convert_lstm_fork(layer: Layer, net: Net) -> nn.Module:
    """Lstm (CTPN, caffe_ocr; lstm_param): x (T x N x ...) -> T x N x H, zero initial state."""
    if layer.blobs:
        w = [torch.from_numpy(np.array(b, dtype=np.float32)) for b in layer.blobs]
    else:
        w = [torch.zeros(s) for s in layer.param_shapes]
    steps = net.blobs[layer.bottoms[0]].shape[0]
    return OcrLstm(steps, w[0], w[1], w[2], len(layer.bottoms) > 1)


# ---------------------------------------------------------------- Reverse, Transpose


def _reverse_axis(p: pb_message.Message, ndim: int) -> int:
    axis = int(p.reverse_param.axis)
    if not 0 <= axis < ndim:  # the fork CHECKs 0 <= axis < num_axes: no negative axes
        raise ShapeRuleError(f"reverse_param.axis {axis} must be in [0, {ndim})")
    return axis


def reverse_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """Same shape as the bottom."""
    _reverse_axis(p, len(ins[0]))
    return LayerShapes((tuple(ins[0]),))


class ReverseAxis(nn.Module):
    """Reverses the order of the entries along one axis."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(x, (self.axis,))


@register("Reverse", shape=reverse_shape, fork=OCR_FORKS)
def convert_reverse(layer: Layer, net: Net) -> nn.Module:
    """Reverse (CTPN, caffe_ocr): flips reverse_param.axis (default 0, the time axis)."""
    return ReverseAxis(_reverse_axis(layer.param, len(net.blobs[layer.bottoms[0]].shape)))


def _transpose_dims(p: pb_message.Message, ndim: int) -> tuple[int, ...]:
    dims = tuple(int(d) for d in p.transpose_param.dim)
    if sorted(dims) != list(range(ndim)):
        raise ShapeRuleError(f"transpose_param.dim {list(dims)} must be a permutation of "
                             f"0..{ndim - 1}")
    return dims


def transpose_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """Top axis i has the size of bottom axis dim[i]."""
    dims = _transpose_dims(p, len(ins[0]))
    return LayerShapes((tuple(ins[0][d] for d in dims),))


class TransposeAxes(nn.Module):
    """Top axis i is bottom axis dims[i]; the result is made contiguous as Caffe's copy is."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims).contiguous()


@register("Transpose", shape=transpose_shape, fork=OCR_FORKS)
def convert_transpose(layer: Layer, net: Net) -> nn.Module:
    """Transpose (CTPN, caffe_ocr): permutes axes, top axis i = bottom axis dim[i]."""
    return TransposeAxes(_transpose_dims(layer.param, len(net.blobs[layer.bottoms[0]].shape)))


# ---------------------------------------------------------------- Im2col


def im2col_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """N x C x H x W -> N x (C*kh*kw) x H' x W' (convolution_param geometry)."""
    if len(ins[0]) != 4 or p.convolution_param.axis not in (1, -3):
        raise ShapeRuleError(f"Im2col is supported for N x C x H x W (axis 1), got {ins[0]}")
    geo = conv_geometry(p.convolution_param, 2)
    n, c, *hw = ins[0]
    out = [(s + 2 * pd - (d * (k - 1) + 1)) // st + 1
           for s, k, st, pd, d in zip(hw, geo.kernel, geo.stride, geo.pad, geo.dilation,
                                           strict=True)]
    if min(out) <= 0:
        raise ShapeRuleError(f"kernel {geo.kernel} does not fit the padded input {hw}")
    return LayerShapes(((n, c * geo.kernel[0] * geo.kernel[1], *out),))


class Im2colUnfold(nn.Module):
    """Caffe's im2col as a layer: torch's unfold (same (c, ki, kj) row order), kept 4-D."""

    def __init__(self, kernel: tuple[int, ...], stride: tuple[int, ...], pad: tuple[int, ...],
                 dilation: tuple[int, ...]) -> None:
        super().__init__()
        self.kernel, self.stride, self.pad, self.dilation = kernel, stride, pad, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(x, self.kernel, self.dilation, self.pad, self.stride)
        out_h = (x.shape[2] + 2 * self.pad[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) \
            // self.stride[0] + 1
        return cols.reshape(x.shape[0], cols.shape[1], out_h, -1)


@register("Im2col", shape=im2col_shape)
def convert_im2col(layer: Layer, net: Net) -> nn.Module:
    """Im2col (BVLC; CTPN feeds it to its Lstm): N x (C*kh*kw) x H' x W' patches."""
    geo = conv_geometry(layer.param.convolution_param, 2)
    return Im2colUnfold(geo.kernel, geo.stride, geo.pad, geo.dilation)


# ---------------------------------------------------------------- CTCGreedyDecoder


def ctc_greedy_decoder_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """T x N x C scores -> N x T x 1 x 1 labels (decoding form: one bottom, one top)."""
    if len(ins) != 1 or len(p.top) != 1:
        raise ShapeRuleError("only the decoding form (one bottom, one top) is supported; the "
                             "two-bottom form computes a training accuracy")
    x = ins[0]
    if len(x) < 3 or _count(x[2:]) != x[2]:
        raise ShapeRuleError(f"scores {x} must be T x N x C (trailing axes of size 1)")
    blank = p.ctc_decoder_param.blank_index
    if blank >= x[2]:
        raise ShapeRuleError(f"blank_index {blank} out of range for {x[2]} classes")
    return LayerShapes(((x[1], x[0], 1, 1),))


class CTCGreedyDecode(nn.Module):
    """Per stream: argmax label per step, repeats merged (optional), blanks dropped, -1 padded."""

    def __init__(self, blank: int, merge: bool) -> None:
        super().__init__()
        self.blank, self.merge = blank, merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        best = x.flatten(2).argmax(2)  # T x N, the first maximum as the fork's strict '>'
        keep = best != self.blank
        if self.merge:
            prev = torch.cat([torch.full_like(best[:1], -1), best[:-1]])
            keep = keep & (best != prev)
        steps = best.shape[0]
        slot = torch.where(keep, torch.cumsum(keep.long(), 0) - 1, steps)  # dropped -> row T
        out = x.new_full((steps + 1, best.shape[1]), -1.0).scatter(0, slot, best.to(x.dtype))
        return out[:steps].t().reshape(best.shape[1], steps, 1, 1)


@register("CTCGreedyDecoder", shape=ctc_greedy_decoder_shape,
          fork="senlinuc/caffe_ocr")
def convert_ctc_greedy_decoder(layer: Layer, net: Net) -> nn.Module:
    """CTCGreedyDecoder (caffe_ocr): best-path decoding to N x T labels padded with -1."""
    cp = layer.param.ctc_decoder_param
    classes = net.blobs[layer.bottoms[0]].shape[2]
    blank = classes - 1 if cp.blank_index < 0 else int(cp.blank_index)
    return CTCGreedyDecode(blank, bool(cp.ctc_merge_repeated))
