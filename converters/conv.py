"""Convolution, Deconvolution and InnerProduct.

Caffe's weight layouts are PyTorch's: Convolution ``(O, C/group, *k)`` is ``nn.ConvNd``'s,
Deconvolution ``(C, O/group, *k)`` is ``nn.ConvTransposeNd``'s, and its output size
``s(in-1) + d(k-1) + 1 - 2p`` is ``ConvTransposeNd``'s with no output padding. A channel axis
other than 1 folds the leading axes into the batch; several bottoms share the weights.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from caffe_bridge import shapes
from caffe_bridge.converters.registry import axis_past_batch, register
from caffe_bridge.errors import ShapeError, UnsupportedLayerError
from caffe_bridge.ir import Layer, Net
from caffe_bridge.numeric import f32_tensor

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_DECONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _source(arr: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 torch view of a Caffe blob in ``shape``, only to copy from (no extra copy)."""
    a = np.asarray(arr, dtype=np.float32).reshape(shape)
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():  # a read-only view of the mapped file: never written
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def uninitialised(cls: type[nn.Module], *args: object, **kwargs: object) -> nn.Module:
    """``cls(*args, **kwargs)`` without its default (random) initialisation: empty CPU tensors.

    For parameters every one of which is overwritten right away; the module is built on the
    meta device (so the constructor call is still the plain one) and then given memory.
    """
    with torch.device("meta"):
        module = cls(*args, **kwargs)
    for m in module.modules():  # (not to_empty: its meta path imports sympy, ~0.2 s)
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                                   p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = torch.empty(b.shape, dtype=b.dtype)
    return module


def _plain(cls: type[nn.Module], *args: object, **kwargs: object) -> nn.Module:
    return cls(*args, **kwargs)


def blob_tensors(layer: Layer) -> list[torch.Tensor]:
    """The layer's blobs as float32 tensors, or zeros of Caffe's shapes when none are loaded."""
    if layer.blobs:
        return [f32_tensor(b) for b in layer.blobs]
    return [torch.zeros(s) for s in layer.param_shapes]


def load_blobs(layer: Layer, params: dict[str, torch.Tensor]) -> None:
    """Copy ``layer.blobs`` into ``params`` in order; keep the defaults without weights."""
    if not layer.blobs:
        return
    if len(layer.blobs) != len(params):
        raise ShapeError(f"{len(layer.blobs)} weight blob(s), expected {len(params)}")
    with torch.no_grad():
        for (name, dst), arr in zip(params.items(), layer.blobs, strict=True):
            if arr.size != dst.numel():
                raise ShapeError(f"weight blob {name!r} has {arr.size} values, expected "
                                 f"{dst.numel()}")
            dst.copy_(_source(arr, tuple(dst.shape)))


def loaded_module(layer: Layer, cls: type[nn.Module], *args: object,
                  **kwargs: object) -> nn.Module:
    """``cls(*args, **kwargs)`` (a weight and an optional bias) holding ``layer.blobs``; it is
    initialised by ``cls`` only when the layer has no weights."""
    make = uninitialised if layer.blobs else _plain  # weights overwrite every parameter
    module = make(cls, *args, **kwargs)
    params = {"weight": module.weight}
    if module.bias is not None:
        params["bias"] = module.bias
    load_blobs(layer, params)
    return module


class FoldedAxis(nn.Module):
    """Run ``inner`` (which wants ``(B, C, *spatial)``) on a blob whose channel axis is ``axis``.

    The axes before ``axis`` are folded into one batch axis and restored afterwards; the first of
    them may vary in size (the batch), the others are fixed by the definition.
    """

    def __init__(self, inner: nn.Module, axis: int, lead: tuple[int, ...]) -> None:
        super().__init__()
        self.inner = inner
        self.axis = axis
        self.lead = (-1, *lead[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis == 0:
            return self.inner(x.unsqueeze(0)).squeeze(0)
        y = self.inner(x.flatten(0, self.axis - 1))
        return y.unflatten(0, self.lead)


class SharedWeights(nn.Module):
    """One module applied to each of several bottoms (Caffe's multi-bottom Convolution)."""

    def __init__(self, inner: nn.Module, n: int) -> None:
        super().__init__()
        self.inner = inner
        self.n = n

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.inner(x) for x in xs)


def _conv_family(layer: Layer, net: Net, deconv: bool) -> nn.Module:
    cp = layer.param.convolution_param
    x = net.blobs[layer.bottoms[0]].shape
    if any(net.blobs[b].shape != x for b in layer.bottoms[1:]):
        raise ShapeError("bottoms of a shared-weight convolution differ in shape")
    axis = shapes.canonical_axis(cp.axis, len(x))
    n_sp = len(x) - axis - 1
    if n_sp not in _CONV:
        raise UnsupportedLayerError(f"{n_sp} spatial axes (after channel axis {axis} of "
                                    f"{x}); only 1 to 3 are supported")
    geo = shapes.conv_geometry(cp, n_sp)
    channels, group = x[axis], cp.group
    cls, extra = _DECONV[n_sp] if deconv else _CONV[n_sp], {}
    if not deconv and _pointwise_classifier(layer, net, geo):
        blocks = math.gcd(channels, MAX_BLOCKS)
        cls, extra = BlockedPointwiseConv2d, {"blocks": blocks if blocks > 1 else MAX_BLOCKS,
                                              "spatial": any(d != 1 for d in x[2:])}
    conv = loaded_module(layer, cls, channels, cp.num_output, geo.kernel,
                         stride=geo.stride, padding=geo.pad, dilation=geo.dilation,
                         groups=group, bias=cp.bias_term, **extra)
    module: nn.Module = conv
    if axis != 1:
        module = FoldedAxis(conv, axis, x[:axis])
    if len(layer.bottoms) > 1:
        module = SharedWeights(module, len(layer.bottoms))
    return module


@register("Convolution", shape=shapes.convolution_shapes,
          per_sample=axis_past_batch("convolution_param"))
def convert_convolution(layer: Layer, net: Net) -> nn.Module:
    """Convolution: nn.Conv1d/2d/3d (group, dilation, per-dim or _h/_w geometry, any axis)."""
    return _conv_family(layer, net, deconv=False)


@register("Deconvolution", shape=shapes.deconvolution_shapes,
          per_sample=axis_past_batch("convolution_param"))
def convert_deconvolution(layer: Layer, net: Net) -> nn.Module:
    """Deconvolution: nn.ConvTranspose1d/2d/3d without output padding (Caffe's output size)."""
    return _conv_family(layer, net, deconv=True)


MAX_BLOCKS = 32  # InnerProduct: partial dot products summed at the end (see BlockedLinear)


def blocked_matmul(x: torch.Tensor, weight: torch.Tensor, blocks: int, pad: int = 0
                   ) -> torch.Tensor:
    """``x @ weight.T`` for a 2-D ``x`` (N, k), each dot product summed as ``blocks`` partial
    sums.

    For one row PyTorch's CPU ``linear`` is a matrix-vector product that sums each output's
    terms in long float32 chains: ResNet-50's classifier at batch 1 put its softmax 1.0e-6 from
    the float64 result where OpenCV's is 4.5e-7 (mean of 6 inputs). Partial sums over 32 blocks
    (one ``bmm``, then ``sum``) bring it to 3.6e-7 at any batch size (128 blocks: 3.3e-7, but
    the bmm of tiny blocks and the longer sum cost time in every SE block).
    """
    if pad:  # zero terms add nothing: k + pad is a multiple of blocks (known when built)
        x = F.pad(x, (0, pad))
        weight = F.pad(weight, (0, pad))
    parts = x.reshape(-1, blocks, x.shape[1] // blocks).transpose(0, 1)  # x is (N, k)
    return torch.bmm(parts, weight.reshape(weight.shape[0], blocks, -1).permute(1, 2, 0)).sum(0)


class BlockedLinear(nn.Linear):
    """``nn.Linear`` with the dot products of :func:`blocked_matmul`; the bias added last, as
    Caffe does. Weights and state dict are ``nn.Linear``'s."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 blocks: int = 1, **kwargs: object) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocks == 1:
            return super().forward(x)
        y = blocked_matmul(x, self.weight, self.blocks)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, blocks={self.blocks}"


class BlockedPointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, unpadded, ungrouped ``nn.Conv2d`` computed as :func:`blocked_matmul`
    over the channel axis, one row per position (used where its result is the net's output or
    a Softmax's input: a classifier, or a dense head such as colorization's ``class8_ab``)."""

    def __init__(self, *args: object, blocks: int = 1, spatial: bool = False,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.blocks = blocks
        self.spatial = spatial  # from the definition: the input map is larger than 1 x 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = -self.in_channels % self.blocks
        if not self.spatial:  # N x C x 1 x 1: one row per sample, and no shape to restore (a
            y = blocked_matmul(x.flatten(1), self.weight.flatten(1), self.blocks, pad)  # traced
            if self.bias is not None:  # export keeps the batch axis dynamic)
                y = y + self.bias
            return y[:, :, None, None]
        rows = x.permute(0, 2, 3, 1).flatten(0, 2)
        y = blocked_matmul(rows, self.weight.flatten(1), self.blocks, pad)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(x.shape[0], x.shape[2], x.shape[3], -1).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, blocks={self.blocks}, spatial={self.spatial}"


def _pointwise_classifier(layer: Layer, net: Net, geo: shapes.ConvGeometry) -> bool:
    """A 1x1 convolution whose result is the net's output or read only by a Softmax: a
    classifier (over a 1x1 blob, a matrix-vector product at batch 1), or a dense head whose
    long channel sums reach the output unaveraged (colorization's 313 -> 2 ``class8_ab``: 3.1x
    OpenCV's distance to float64 before). Not the SE blocks' 1x1 convolutions: their errors
    are damped by the gate, and blocking would cost time in each."""
    x = net.blobs[layer.bottoms[0]].shape
    cp = layer.param.convolution_param
    if not (len(x) == 4 and len(layer.bottoms) == 1 and cp.group == 1 and not any(geo.pad)
            and shapes.canonical_axis(cp.axis, 4) == 1
            and (math.gcd(x[1], MAX_BLOCKS) > 1 or x[1] >= 2 * MAX_BLOCKS)
            and all(v == 1 for v in (*geo.kernel, *geo.stride))):
        return False
    top = layer.tops[0]
    readers = [other.type for other in net.layers if top in other.bottoms]
    return top in net.outputs or (bool(readers) and set(readers) <= {"Softmax"})


@register("InnerProduct", shape=shapes.inner_product_shapes,
          per_sample=axis_past_batch("inner_product_param"))
def convert_inner_product(layer: Layer, net: Net) -> nn.Module:
    """InnerProduct: flatten from ``axis``, then nn.Linear (weight transposed if ``transpose``)."""
    ip = layer.param.inner_product_param
    x = net.blobs[layer.bottoms[0]].shape
    axis = shapes.canonical_axis(ip.axis, len(x))
    k = int(np.prod(x[axis:], dtype=np.int64))
    n = ip.num_output
    make = uninitialised if layer.blobs else _plain  # weights overwrite every parameter
    # blocked sums for the usual N x k rows (axis 1); plain nn.Linear for other axes
    blocks = math.gcd(k, MAX_BLOCKS) if axis == 1 else 1
    linear = make(BlockedLinear, k, n, bias=ip.bias_term, blocks=blocks)
    if layer.blobs:
        w = np.asarray(layer.blobs[0], dtype=np.float32)
        w = w.reshape(k, n).T if ip.transpose else w.reshape(n, k)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(w, order="C")))
            if ip.bias_term:
                linear.bias.copy_(f32_tensor(layer.blobs[1]).reshape(n))
    if axis == len(x) - 1:
        return linear
    return nn.Sequential(nn.Flatten(axis, -1), linear)
