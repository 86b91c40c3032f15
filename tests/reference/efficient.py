"""Layers of the efficient-net forks (MobileNet, ShuffleNet ports) and the newer activations:
ConvolutionDepthwise, DepthwiseConvolution, ShuffleChannel, ReLU6, Clip, Swish, Mish, HardSwish.

Each function cites the C++ source whose CPU forward it follows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import conv
from ._util import Array, LayerFn, blob, f64, get, has, values


def _dw_pair(p: Any, name: str, default: int | None) -> tuple[int, int]:
    """(h, w) as ConvolutionDepthwise reads them: `name_h` and `name_w` only when both are set,
    else the repeated field's first one or two values."""
    if has(p, name + "_h") and has(p, name + "_w"):
        return int(getattr(p, name + "_h")), int(getattr(p, name + "_w"))
    vals = values(p, "kernel_size" if name == "kernel" else name)
    if not vals:
        if default is None:
            raise ValueError(f"ConvolutionDepthwise needs {name}")
        # The source reads element 0 unconditionally (undefined when the field is empty);
        # Caffe's own Convolution defaults are taken here.
        return default, default
    return int(vals[0]), int(vals[1] if len(vals) > 1 else vals[0])


def convolution_depthwise(layer: Any, inputs: list[Array]) -> list[Array]:
    """One kh x kw filter per input channel; ``num_output`` and ``group`` are never read.

    Source: BVLC/caffe (a branch carrying it), src/caffe/layers/conv_dw_layer.cpp, the layer
    of the ShuffleNet / MobileNet ports (farmingyard/ShuffleNet's shufflenet_v2 definition).
    Weight (C, 1, kh, kw); output (in + 2p - (d(k-1)+1)) / s + 1 per axis; bias (C,).
    """
    p = layer.param.convolution_param
    x = f64(inputs[0])
    n, c, h, w = x.shape
    kh, kw = _dw_pair(p, "kernel", None)
    sh, sw = _dw_pair(p, "stride", 1)
    ph, pw = _dw_pair(p, "pad", 0)
    dils = values(p, "dilation")
    dh, dw = (int(dils[0]), int(dils[1] if len(dils) > 1 else dils[0])) if dils else (1, 1)
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    wt = blob(layer, 0).reshape(c, kh, kw)
    xp = np.pad(x, [(0, 0), (0, 0), (ph, ph), (pw, pw)])
    y = np.zeros((n, c, oh, ow))
    for i in range(kh):
        for j in range(kw):
            win = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                     j * dw: j * dw + sw * (ow - 1) + 1: sw]
            y += wt[None, :, i, j, None, None] * win
    if get(p, "bias_term", True):
        y += blob(layer, 1).reshape(1, c, 1, 1)
    return [y]


def depthwise_convolution(layer: Any, inputs: list[Array]) -> list[Array]:
    """Caffe's Convolution, group and all, under another name.

    Source: yonghenglh6/DepthwiseConvolution (and eric612/MobileNet-YOLO's copy,
    src/caffe/layers/depthwise_conv_layer.cpp): a BaseConvolutionLayer whose CPU forward is
    Convolution's GEMM path, so ``group`` is the prototxt's (default 1, a dense convolution).
    """
    return conv.LAYERS["Convolution"](layer, inputs)


def shuffle_channel(layer: Any, inputs: list[Array]) -> list[Array]:
    """Channels viewed as (group, C/group) and transposed: output channel j*group + i is input
    channel i*(C/group) + j.

    Source: farmingyard/ShuffleNet, shuffle_channel_layer.cpp (Resize_cpu with group_row =
    group). Everything after axis 1 moves as one block.
    """
    x = f64(inputs[0])
    g = int(get(layer.param.shuffle_channel_param, "group", 1))
    c = x.shape[1]
    if g <= 0 or c % g:
        raise ValueError(f"group {g} must divide {c} channels")
    y = np.empty_like(x)
    cols = c // g
    for i in range(g):
        for j in range(cols):
            y[:, j * g + i] = x[:, i * cols + j]
    return [y]


def relu6(layer: Any, inputs: list[Array]) -> list[Array]:
    """min(max(x, 0) + negative_slope * min(x, 0), 6).

    Source: eric612/MobileNet-YOLO, src/caffe/layers/relu6_layer.cpp (relu6_param, a
    ReLUParameter; negative_slope 0 by default).
    """
    x = f64(inputs[0])
    slope = get(layer.param.relu6_param, "negative_slope", 0.0)
    return [np.minimum(np.maximum(x, 0) + slope * np.minimum(x, 0), 6.0)]


def clip(layer: Any, inputs: list[Array]) -> list[Array]:
    """max(min, min(x, max)). Source: BVLC/caffe src/caffe/layers/clip_layer.cpp."""
    p = layer.param.clip_param
    if not (has(p, "min") and has(p, "max")):
        raise ValueError("Clip needs clip_param min and max (required in BVLC's schema)")
    x = f64(inputs[0])
    return [np.maximum(np.float64(np.float32(p.min)), np.minimum(x, np.float32(p.max)))]


def _sigmoid(z: Array) -> Array:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def swish(layer: Any, inputs: list[Array]) -> list[Array]:
    """x * sigmoid(beta * x). Source: BVLC/caffe src/caffe/layers/swish_layer.cpp."""
    x = f64(inputs[0])
    beta = get(layer.param.swish_param, "beta", 1.0)
    return [x * _sigmoid(beta * x)]


MISH_THRESHOLD = 20.0


def mish(layer: Any, inputs: list[Array]) -> list[Array]:
    """x * tanh(softplus(x)), softplus taken as x above 20 and exp(x) below -20.

    Source: foss-for-synopsys-dwc-arc-processors/synopsys-caffe, src/caffe/layers/
    mish_layer.cpp (troyliu0105/caffe registers the same type).
    """
    x = f64(inputs[0])
    with np.errstate(over="ignore"):
        sp = np.where(x > MISH_THRESHOLD, x,
                      np.where(x < -MISH_THRESHOLD, np.exp(x), np.log1p(np.exp(x))))
    return [x * np.tanh(sp)]


def hard_swish(layer: Any, inputs: list[Array]) -> list[Array]:
    """x * min(max(x + 3, 0), 6) / 6; no parameters.

    Source: Zeitzmz/micronet-caffe src/caffe/layers/hard_swish_layer.cpp (synopsys-caffe's
    hard_swish_layer.cpp computes the same).
    """
    x = f64(inputs[0])
    return [x * np.minimum(np.maximum(x + 3.0, 0.0), 6.0) / 6.0]


LAYERS: dict[str, LayerFn] = {
    "ConvolutionDepthwise": convolution_depthwise,
    "DepthwiseConvolution": depthwise_convolution,
    "ShuffleChannel": shuffle_channel,
    "ReLU6": relu6,
    "Clip": clip,
    "Swish": swish,
    "Mish": mish,
    "HardSwish": hard_swish,
}
