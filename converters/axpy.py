"""SENet's custom Axpy layer: ``top = a * X + Y``.

Operand order (SENet's axpy_layer.cpp): bottom[0] = a, the N x C (x 1 x 1) excitation gates;
bottom[1] = X, the residual branch they scale; bottom[2] = Y, the shortcut, added unscaled.

OpenCV's Caffe importer (4.x) converts Axpy itself as ``a * bottom[2] + bottom[1]``, scaling the
shortcut instead of the branch; to compare with OpenCV, hand it a prototxt whose Axpy layers
have bottoms 1 and 2 swapped. This converter follows Caffe, not OpenCV.
"""

from __future__ import annotations

import torch
from torch import nn

from caffe_bridge.converters.registry import register
from caffe_bridge.ir import Layer, Net
from caffe_bridge.shapes import axpy_shapes


class Axpy(nn.Module):
    """``a * x + y`` with ``a`` (N x C or N x C x 1 x 1) broadcast over x's spatial axes."""

    def __init__(self, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims

    def forward(self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The rank comes from the IR, not from x.dim(), so torch.fx can re-trace the module.
        gate = a.reshape(a.shape[:2] + (1,) * self.spatial_dims)
        return torch.addcmul(y, gate, x)


@register("Axpy", shape=axpy_shapes, fork="hujie-frank/SENet", per_sample=True)
def convert_axpy(layer: Layer, net: Net) -> nn.Module:
    """Axpy (SENet): bottoms (a, X, Y) -> a * X + Y, a per sample and channel."""
    return Axpy(len(net.blobs[layer.bottoms[1]].shape) - 2)
