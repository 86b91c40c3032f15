"""Convolution, Deconvolution and InnerProduct.

Caffe's weight layouts are PyTorch's: Convolution ``(O, C/group, *k)`` is ``nn.ConvNd``'s,
Deconvolution ``(C, O/group, *k)`` is ``nn.ConvTransposeNd``'s, and its output size
``s(in-1) + d(k-1) + 1 - 2p`` is ``ConvTransposeNd``'s with no output padding. A channel axis
other than 1 folds the leading axes into the batch; several bottoms share the weights.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from caffe_bridge import shapes
from caffe_bridge.converters.registry import register
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
    table = _DECONV if deconv else _CONV
    conv = loaded_module(layer, table[n_sp], channels, cp.num_output, geo.kernel,
                         stride=geo.stride, padding=geo.pad, dilation=geo.dilation,
                         groups=group, bias=cp.bias_term)
    module: nn.Module = conv
    if axis != 1:
        module = FoldedAxis(conv, axis, x[:axis])
    if len(layer.bottoms) > 1:
        module = SharedWeights(module, len(layer.bottoms))
    return module


@register("Convolution", shape=shapes.convolution_shapes)
def convert_convolution(layer: Layer, net: Net) -> nn.Module:
    """Convolution: nn.Conv1d/2d/3d (group, dilation, per-dim or _h/_w geometry, any axis)."""
    return _conv_family(layer, net, deconv=False)


@register("Deconvolution", shape=shapes.deconvolution_shapes)
def convert_deconvolution(layer: Layer, net: Net) -> nn.Module:
    """Deconvolution: nn.ConvTranspose1d/2d/3d without output padding (Caffe's output size)."""
    return _conv_family(layer, net, deconv=True)


@register("InnerProduct", shape=shapes.inner_product_shapes)
def convert_inner_product(layer: Layer, net: Net) -> nn.Module:
    """InnerProduct: flatten from ``axis``, then nn.Linear (weight transposed if ``transpose``)."""
    ip = layer.param.inner_product_param
    x = net.blobs[layer.bottoms[0]].shape
    axis = shapes.canonical_axis(ip.axis, len(x))
    k = int(np.prod(x[axis:], dtype=np.int64))
    n = ip.num_output
    make = uninitialised if layer.blobs else _plain  # weights overwrite every parameter
    linear = make(nn.Linear, k, n, bias=ip.bias_term)
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
