"""BVLC's recurrent layers (`LSTM`, `RNN`) and jolibrain's `ContinuationIndicator`.

Caffe's recurrent layers take x (T x N x ...) and cont (T x N): cont[t, n] == 0 starts a new
sequence in stream n (the carried h, and for LSTM the cell, are multiplied by cont). BVLC's
LSTM stores its gate rows in the order i, f, o, g; PyTorch's nn.LSTM expects i, f, g, o and
has no cont input, so the modules here compute the cell themselves with torch ops.

T is fixed when converting (Caffe fixes it too: "input number of timesteps changed"), so the
time loop unrolls into T steps when torch.fx traces the module; N may vary. Without
expose_hidden the modules start every forward from zero state, as a freshly set-up Caffe net
does; a Caffe net that is run again instead carries the previous forward's final state into
the next one wherever cont[0] != 0.

senlinuc/caffe_ocr's recurrent_layer.cpp also accepts x alone: its unrolled net's cont input is
then never written and stays all 0, so every step starts afresh (no recurrence at all). The
modules reproduce that when the layer has one bottom.

OpenCV (4.14) refuses these caffemodels: its Caffe importer hands the blobs to its own LSTM layer,
which expects (W_h, W_x, b, h_0, c_0) rather than BVLC's (W_xc, b_c, W_hc), and it has no cont.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from google.protobuf import message as pb_message
from torch import nn

from caffe_bridge.converters.conv import blob_tensors
from caffe_bridge.converters.registry import register
from caffe_bridge.ir import Layer, Net
from caffe_bridge.shapes import LayerShapes, Shape, ShapeRuleError


def _recurrent_layout(p: pb_message.Message, ins: Sequence[Shape], n_recur: int
                      ) -> tuple[int, bool, bool]:
    """(num_output, has x_static, expose_hidden), checking bottoms as recurrent_layer.cpp does."""
    rp = p.recurrent_param
    hidden = int(rp.num_output)
    if hidden <= 0:
        raise ShapeRuleError("recurrent_param.num_output must be positive")
    expose = bool(rp.expose_hidden)
    n_hidden = n_recur if expose else 0
    if len(ins) == 1 and not expose:  # caffe_ocr: x alone, cont stays all 0 (see CaffeLSTM)
        ins = [ins[0], tuple(ins[0][:2])]
    if len(ins) not in (2 + n_hidden, 3 + n_hidden):
        raise ShapeRuleError(f"needs bottoms x, cont, [x_static]"
                             f"{f', {n_hidden} initial states' if expose else ''}; got {len(ins)}")
    x, cont = ins[0], ins[1]
    if len(x) < 3:
        raise ShapeRuleError(f"x {x} must have at least 3 axes (T x N x ...)")
    if tuple(cont) != tuple(x[:2]):
        raise ShapeRuleError(f"cont {cont} must be T x N = {tuple(x[:2])}")
    static = len(ins) == 3 + n_hidden
    if static and ins[2][0] != x[1]:
        raise ShapeRuleError(f"x_static {ins[2]} must have N = {x[1]} rows")
    state = (1, x[1], hidden)
    for s in ins[len(ins) - n_hidden:] if expose else ():
        if tuple(s) != state:
            raise ShapeRuleError(f"initial state {s} must be {state}")
    want_tops = 1 + n_hidden
    if len(p.top) != want_tops:
        raise ShapeRuleError(f"needs {want_tops} tops, got {len(p.top)}")
    return hidden, static, expose


def lstm_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """h: T x N x H (+ h_T, c_T: 1 x N x H); blobs W_xc, b_c, [W_xc_static], W_hc."""
    hidden, static, expose = _recurrent_layout(p, ins, 2)
    t, n = ins[0][:2]
    params = [(4 * hidden, math.prod(ins[0][2:])), (4 * hidden,)]
    if static:
        params.append((4 * hidden, math.prod(ins[2][1:])))
    params.append((4 * hidden, hidden))
    tops = [(t, n, hidden)] + [(1, n, hidden)] * (2 if expose else 0)
    return LayerShapes(tuple(tops), tuple(params))


def rnn_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """o: T x N x H (+ h_T); blobs W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o."""
    hidden, static, expose = _recurrent_layout(p, ins, 1)
    t, n = ins[0][:2]
    params = [(hidden, math.prod(ins[0][2:])), (hidden,)]
    if static:
        params.append((hidden, math.prod(ins[2][1:])))
    params += [(hidden, hidden), (hidden, hidden), (hidden,)]
    tops = [(t, n, hidden)] + [(1, n, hidden)] * (1 if expose else 0)
    return LayerShapes(tuple(tops), tuple(params))


def _cont(x: torch.Tensor, rest: tuple[torch.Tensor, ...], has_cont: bool
          ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(cont, the bottoms after it); without a cont bottom an all-0 T x N cont (caffe_ocr)."""
    if has_cont:
        return rest[0], rest[1:]
    return x.new_zeros((x.shape[0], x.shape[1])), rest


class CaffeLSTM(nn.Module):
    """BVLC LSTM over a fixed number of steps: gate rows i, f, o, g; cont resets h and c."""

    def __init__(self, steps: int, blobs: list[torch.Tensor], static: bool, expose: bool,
                 has_cont: bool = True) -> None:
        super().__init__()
        self.steps, self.static, self.expose, self.has_cont = steps, static, expose, has_cont
        self.hidden = blobs[-1].shape[1]
        self.weight_xc = nn.Parameter(blobs[0])
        self.bias_c = nn.Parameter(blobs[1])
        self.weight_xc_static = nn.Parameter(blobs[2]) if static else None
        self.weight_hc = nn.Parameter(blobs[-1])

    def forward(self, x: torch.Tensor, *rest: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cont, rest = _cont(x, rest, self.has_cont)
        xw = F.linear(x.flatten(2), self.weight_xc, self.bias_c)
        sw = F.linear(rest[0].flatten(1), self.weight_xc_static) if self.static else None
        if self.expose:
            h, c = rest[-2][0], rest[-1][0]
        else:
            h = c = x.new_zeros((x.shape[1], self.hidden))
        hd = self.hidden
        outs = []
        for t in range(self.steps):
            ct = cont[t].unsqueeze(1)
            a = F.linear(h * ct, self.weight_hc) + xw[t]
            if sw is not None:
                a = a + sw
            i, f = torch.sigmoid(a[:, :hd]), torch.sigmoid(a[:, hd:2 * hd])
            o, g = torch.sigmoid(a[:, 2 * hd:3 * hd]), torch.tanh(a[:, 3 * hd:])
            c = ct * f * c + i * g
            h = o * torch.tanh(c)
            outs.append(h)
        out = torch.stack(outs)
        if self.expose:
            return out, h.unsqueeze(0), c.unsqueeze(0)
        return out


class CaffeRNN(nn.Module):
    """BVLC RNN: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h), o_t = tanh(W_ho h_t + b_o)."""

    def __init__(self, steps: int, blobs: list[torch.Tensor], static: bool, expose: bool,
                 has_cont: bool = True) -> None:
        super().__init__()
        self.steps, self.static, self.expose, self.has_cont = steps, static, expose, has_cont
        self.weight_xh = nn.Parameter(blobs[0])
        self.bias_h = nn.Parameter(blobs[1])
        self.weight_xh_static = nn.Parameter(blobs[2]) if static else None
        self.weight_hh, self.weight_ho, self.bias_o = (nn.Parameter(b) for b in blobs[-3:])
        self.hidden = blobs[-1].shape[0]

    def forward(self, x: torch.Tensor, *rest: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        cont, rest = _cont(x, rest, self.has_cont)
        xw = F.linear(x.flatten(2), self.weight_xh, self.bias_h)
        sw = F.linear(rest[0].flatten(1), self.weight_xh_static) if self.static else None
        h = rest[-1][0] if self.expose else x.new_zeros((x.shape[1], self.hidden))
        outs = []
        for t in range(self.steps):
            a = F.linear(h * cont[t].unsqueeze(1), self.weight_hh) + xw[t]
            if sw is not None:
                a = a + sw
            h = torch.tanh(a)
            outs.append(torch.tanh(F.linear(h, self.weight_ho, self.bias_o)))
        out = torch.stack(outs)
        return (out, h.unsqueeze(0)) if self.expose else out


def _layout(layer: Layer, n_recur: int) -> tuple[bool, bool, bool]:
    """(has x_static, expose_hidden, has a cont bottom)."""
    expose = bool(layer.param.recurrent_param.expose_hidden)
    return len(layer.bottoms) == 3 + (n_recur if expose else 0), expose, len(layer.bottoms) > 1


@register("LSTM", shape=lstm_shape)
def convert_lstm(layer: Layer, net: Net) -> nn.Module:
    """LSTM (BVLC): x (T x N x ...), cont (T x N) -> h; gate rows i, f, o, g; cont resets state."""
    static, expose, has_cont = _layout(layer, 2)
    steps = net.blobs[layer.bottoms[0]].shape[0]
    return CaffeLSTM(steps, blob_tensors(layer), static, expose, has_cont)


@register("RNN", shape=rnn_shape)
def convert_rnn(layer: Layer, net: Net) -> nn.Module:
    """RNN (BVLC): tanh recurrence with a tanh output layer; cont resets the state."""
    static, expose, has_cont = _layout(layer, 1)
    steps = net.blobs[layer.bottoms[0]].shape[0]
    return CaffeRNN(steps, blob_tensors(layer), static, expose, has_cont)


def continuation_indicator_shape(p: pb_message.Message, ins: Sequence[Shape]) -> LayerShapes:
    """time_step x B, B = bottom.shape(axis) (jolibrain master) or batch_size (no bottom)."""
    cp = p.continuation_indicator_param
    steps = int(cp.time_step)
    if len(ins) > 1:
        raise ShapeRuleError(f"takes at most one bottom, got {len(ins)}")
    if ins:
        if not 0 <= cp.axis < len(ins[0]):
            raise ShapeRuleError(f"axis {cp.axis} out of range for bottom {ins[0]}")
        batch = ins[0][cp.axis]
    else:
        batch = int(cp.batch_size)
    if steps <= 0 or batch <= 0:
        raise ShapeRuleError(f"time_step ({steps}) and batch size ({batch}) must be positive")
    return LayerShapes(((steps, batch),))


class ContinuationIndicator(nn.Module):
    """A time_step x B indicator: row 0 all 0 (new sequences), every later row all 1."""

    def __init__(self, steps: int, axis: int | None, batch: int) -> None:
        super().__init__()
        self.steps, self.axis = steps, axis
        fixed = torch.ones((steps, batch))
        fixed[0] = 0.0
        self.register_buffer("fixed", fixed)  # the no-bottom form: B = batch_size

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return self.fixed
        b = x[0].shape[self.axis]
        return torch.cat([x[0].new_zeros((1, b)), x[0].new_ones((self.steps - 1, b))])


@register("ContinuationIndicator", shape=continuation_indicator_shape,
          fork="jolibrain/caffe")
def convert_continuation_indicator(layer: Layer, net: Net) -> nn.Module:
    """ContinuationIndicator (jolibrain): T x B cont for LSTM/RNN, 0 at t = 0, else 1."""
    cp = layer.param.continuation_indicator_param
    steps, batch = net.blobs[layer.tops[0]].shape
    return ContinuationIndicator(steps, int(cp.axis) if layer.bottoms else None, batch)
