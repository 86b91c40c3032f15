"""The OCR forks' layers: `Lstm`, `Reverse`, `Transpose`, `CTCGreedyDecoder`, `DenseBlock`;
BVLC's `Im2col`; and CTPN's Python text-proposal layer.

Sources: tianzhi0549/CTPN (caffe/src/caffe/layers/{lstm,reverse,transpose}_layer.cpp/.cu) and
senlinuc/caffe_ocr (src/caffe/layers/lstm_layer_Junhyuk.cpp, reverse_layer.cpp,
transpose_layer.cpp, ctc_decoder_layer.cpp), which agree on the shared types.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from google.protobuf import message as pb_message
from torch import nn

from caffe_bridge.converters.conv import blob_tensors
from caffe_bridge.converters.detection import CaffePermute
from caffe_bridge.converters.python_param import yaml_dict
from caffe_bridge.converters.registry import register
from caffe_bridge.errors import PrototxtError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.shapes import (
    MAX_COUNT,
    LayerShapes,
    Shape,
    ShapeRuleError,
    check_count,
    conv_geometry,
    conv_out_sizes,
)

OCR_FORKS = "tianzhi0549/CTPN, senlinuc/caffe_ocr"


# ---------------------------------------------------------------- Lstm (lstm_param)


def lstm_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """x (T x N x ...) [, clip] -> T x N x num_output; blobs W_i (4H x I), W_h (4H x H), b (4H)."""
    hidden = int(p.lstm_param.num_output)
    if hidden <= 0:
        raise ShapeRuleError("lstm_param.num_output must be positive")
    if len(ins) not in (1, 2) or len(ins[0]) < 2:
        raise ShapeRuleError(f"needs x (T x N x ...) and an optional clip; got {list(ins)}")
    t, n = ins[0][:2]
    # With a clip bottom the fork checks clip.num() == clip.count() and reads clip[t + n]: one
    # entry per step, which is per stream only when N == 1.
    if len(ins) == 2 and (math.prod(ins[1]) != ins[1][0] or ins[1][0] != t or n != 1):
        raise ShapeRuleError(f"clip {ins[1]} is supported with one stream (N = 1) and T = {t}"
                             f" entries; the fork reads clip[t + n], past its end for N > 1")
    params = ((4 * hidden, math.prod(ins[0][2:])), (4 * hidden, hidden), (4 * hidden,))
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


@register("Lstm", shape=lstm_shape, fork=OCR_FORKS)
def convert_lstm(layer: Layer, net: Net) -> nn.Module:
    """Lstm (CTPN, caffe_ocr; lstm_param): x (T x N x ...) -> T x N x H, zero initial state."""
    w = blob_tensors(layer)
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


@register("Transpose", shape=transpose_shape, fork=OCR_FORKS)
def convert_transpose(layer: Layer, net: Net) -> nn.Module:
    """Transpose (CTPN, caffe_ocr): permutes axes, top axis i = bottom axis dim[i]."""
    return CaffePermute(_transpose_dims(layer.param, len(net.blobs[layer.bottoms[0]].shape)))


# ---------------------------------------------------------------- Im2col


def im2col_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """N x C x H x W -> N x (C*kh*kw) x H' x W' (convolution_param geometry)."""
    if len(ins[0]) != 4 or p.convolution_param.axis not in (1, -3):
        raise ShapeRuleError(f"Im2col is supported for N x C x H x W (axis 1), got {ins[0]}")
    geo = conv_geometry(p.convolution_param, 2)
    n, c, *hw = ins[0]
    out = conv_out_sizes(hw, geo)
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
    if len(x) < 3 or math.prod(x[2:]) != x[2]:
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


# ---------------------------------------------------------------- DenseBlock


def _dense_layout(p: pb_message.Message) -> tuple[int, int, bool]:
    dp = p.denseblock_param
    n_t, growth, bc = int(dp.numTransition), int(dp.growthRate), bool(dp.use_BC)
    if n_t <= 0 or growth <= 0:
        raise ShapeRuleError(f"numTransition ({n_t}) and growthRate ({growth}) must be positive")
    return n_t, growth, bc


def dense_block_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """N x C x H x W -> N x (C + numTransition * growthRate) x H x W; the fork's blob layout."""
    if len(ins) != 1 or len(ins[0]) != 4:
        raise ShapeRuleError(f"DenseBlock takes one N x C x H x W bottom, got {list(ins)}")
    n_t, g, bc = _dense_layout(p)
    n, c0, h, w = ins[0]
    check_count((n, c0 + n_t * g, h, w), "DenseBlock output")
    # the 3x3 filters alone hold 9 g (n_t c0 + g n_t (n_t - 1) / 2) values: refuse an absurd
    # block before listing its n_t transitions' blob shapes
    if 9 * g * (n_t * c0 + g * n_t * (n_t - 1) // 2) > MAX_COUNT:
        raise ShapeRuleError(f"DenseBlock of {n_t} transitions growing by {g} from {c0} "
                             f"channels: its filters would hold more than {MAX_COUNT:,} values")
    chans = [c0 + t * g for t in range(n_t)]
    filters = [(g, 4 * g if bc else c, 3, 3) for c in chans]
    per_c = [(1, c, 1, 1) for c in chans]
    params = filters + per_c * 4
    if bc:
        params += [(4 * g, c, 1, 1) for c in chans] + [(1, 4 * g, 1, 1)] * (4 * n_t)
    return LayerShapes(((n, c0 + n_t * g, h, w),), tuple(params) + ((1,),))


class DenseBlockCudnn(nn.Module):
    """caffe_ocr's DenseBlock (its GPU forward at test time): per transition BN-ReLU
    [-Conv1x1-BN-ReLU]-Conv3x3, kernels flipped as CUDNN_CONVOLUTION, output appended."""

    def __init__(self, blobs: list[torch.Tensor], n_t: int, bc: bool) -> None:
        super().__init__()
        self.n_t, self.bc = n_t, bc
        for i, b in enumerate(blobs[:-1]):  # the last blob only matters to the CPU forward
            is_filter = i < n_t or 5 * n_t <= i < 6 * n_t
            # filters flipped once here, so that conv2d (a correlation) convolves as cuDNN does
            self.register_buffer(f"b{i}", b.flip((2, 3)) if is_filter else b.reshape(-1))

    def _blob(self, group: int, t: int) -> torch.Tensor:
        return getattr(self, f"b{group * self.n_t + t}")

    def _bn_relu(self, x: torch.Tensor, t: int, first: int) -> torch.Tensor:
        scale, bias, mean, var = (self._blob(first + k, t) for k in range(4))
        return F.relu(F.batch_norm(x, mean, var, scale, bias, False, 0.0, 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = x
        for t in range(self.n_t):
            y = self._bn_relu(feats, t, 1)
            if self.bc:
                y = self._bn_relu(F.conv2d(y, self._blob(5, t)), t, 6)
            feats = torch.cat([feats, F.conv2d(y, self._blob(0, t), padding=1)], 1)
        return feats


@register("DenseBlock", shape=dense_block_shape, fork="senlinuc/caffe_ocr")
def convert_dense_block(layer: Layer, net: Net) -> nn.Module:
    """DenseBlock (caffe_ocr): numTransition x BN-ReLU-[bottleneck-]Conv3x3, channels appended."""
    n_t, _, bc = _dense_layout(layer.param)
    return DenseBlockCudnn(blob_tensors(layer), n_t, bc)


# ---------------------------------------------------------------- CTPN's text proposals

CTPN_ANCHOR_HEIGHTS = (11, 16, 23, 33, 48, 68, 97, 139, 198, 283)  # CTPN src/anchor.py


def ctpn_basic_anchors() -> list[tuple[int, int, int, int]]:
    """CTPN's AnchorText.basic_anchors: width 16, ten heights, centred on (7.5, 7.5).

    Under Python 2.7 (CTPN's README) ``h/2`` and ``w/2`` are integer divisions and the float
    corners are truncated into an int32 array: x 0..15, y int(7.5 - h//2)..int(7.5 + h//2).
    (Python 3 would give anchors one pixel taller for the odd heights.)
    """
    return [(int(7.5 - 16 // 2), int(7.5 - h // 2), int(7.5 + 16 // 2), int(7.5 + h // 2))
            for h in CTPN_ANCHOR_HEIGHTS]


def _feat_stride(p: pb_message.Message) -> float:
    cfg = yaml_dict(p.python_param.param_str)
    if "feat_stride" not in cfg:
        raise PrototxtError("CTPN's proposal layer needs 'feat_stride' in param_str")
    return float(cfg["feat_stride"])


def text_proposal_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """(1 x 2A x H x W probs, 1 x 2A x H x W deltas, im_info) -> H*W*A x 4 boxes, H*W*A x 1."""
    _feat_stride(p)
    a = len(CTPN_ANCHOR_HEIGHTS)
    if len(ins) != 3 or len(ins[0]) != 4 or tuple(ins[1]) != tuple(ins[0]):
        raise ShapeRuleError(f"needs bottoms probs and deltas (1 x {2 * a} x H x W) and im_info")
    if ins[0][0] != 1 or ins[0][1] != 2 * a:
        raise ShapeRuleError(f"the layer asserts batch 1 and has {a} anchors ({2 * a} "
                             f"channels), got {ins[0]}")
    if len(p.top) != 2:
        raise ShapeRuleError("the layer has two tops (boxes, scores)")
    rows = ins[0][2] * ins[0][3] * a
    return LayerShapes(((rows, 4), (rows, 1)))


class CTPNTextProposals(nn.Module):
    """Every anchor's vertical box from its (dy, dh), clipped to the image; no NMS here."""

    def __init__(self, feat_stride: float) -> None:
        super().__init__()
        self.feat_stride = feat_stride
        self.register_buffer("basic", torch.tensor(ctpn_basic_anchors(), dtype=torch.float32))

    def forward(self, probs: torch.Tensor, deltas: torch.Tensor, im_info: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.basic.shape[0]
        scores = probs[:, a:].permute(0, 2, 3, 1).reshape(-1, 1)
        d = deltas.permute(0, 2, 3, 1).reshape(-1, 2)
        ys = torch.arange(probs.shape[2], dtype=probs.dtype, device=probs.device)
        xs = torch.arange(probs.shape[3], dtype=probs.dtype, device=probs.device)
        gy, gx = torch.meshgrid(ys * self.feat_stride, xs * self.feat_stride, indexing="ij")
        shift = torch.stack([gx, gy, gx, gy], dim=-1).unsqueeze(2)  # H x W x 1 x 4
        anchors = (shift + self.basic.to(probs.dtype)).reshape(-1, 4)
        y_ctr = (anchors[:, 1] + anchors[:, 3]) / 2.0
        h = anchors[:, 3] - anchors[:, 1] + 1.0
        box_h = torch.exp(d[:, 1]) * h
        top = d[:, 0] * h + y_ctr - box_h / 2.0
        info = im_info.reshape(-1)
        x_max, y_max = info[1] - 1.0, info[0] - 1.0
        x1 = torch.clamp(torch.minimum(anchors[:, 0], x_max), min=0.0)
        x2 = torch.clamp(torch.minimum(anchors[:, 2], x_max), min=0.0)
        y1 = torch.clamp(torch.minimum(top, y_max), min=0.0)
        y2 = torch.clamp(torch.minimum(top + box_h, y_max), min=0.0)
        return torch.stack([x1, y1, x2, y2], dim=1), scores


@register("Python:layers.text_proposal_layer.ProposalLayer", shape=text_proposal_shape,
          fork="tianzhi0549/CTPN")
def convert_text_proposal_layer(layer: Layer, net: Net) -> nn.Module:
    """CTPN's text proposal layer (Python): every anchor's clipped box and score, no NMS."""
    return CTPNTextProposals(_feat_stride(layer.param))
