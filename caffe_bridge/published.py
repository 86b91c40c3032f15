"""The accuracies published with the released Caffe SENets, and how to recognise those nets.

A released SENet definition is recognised by its structure (layer types, parameter shapes and
blob shapes; not its name), so ``eval`` can print the published accuracy beside ours.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from caffe_bridge.ir import Net

__all__ = ["PROTOCOL", "PUBLISHED", "Published", "published_for", "structure_fingerprint"]


@dataclass(frozen=True)
class Published:
    """The accuracy a network's authors published, and how they scored it."""

    name: str
    top1_error: float  # percent
    top5_error: float
    protocol: str = "shorter side 256, centre crop 224, BGR, mean 104,117,123, no scale"

    @property
    def top1(self) -> float:
        return round(100.0 - self.top1_error, 2)

    @property
    def top5(self) -> float:
        return round(100.0 - self.top5_error, 2)


# The released SENet deploy definitions, keyed by structure_fingerprint(). Errors are the
# single-crop ImageNet-2012 validation errors published with the Caffe SENet models.
PUBLISHED: dict[str, Published] = {
    "01b4635606cf24e27fa7": Published("SE-BN-Inception", 23.62, 7.04),
    "0e9fdba65fef5440fe3f": Published("SE-ResNet-50", 22.37, 6.36),
    "09e39fb92213716206e6": Published("SE-ResNet-101", 21.75, 5.72),
    "9330125a094fa1c1b311": Published("SE-ResNet-152", 21.34, 5.54),
    "21ba0ed11a2c621302ec": Published("SE-ResNeXt-50 (32x4d)", 20.97, 5.54),
    "3e811828992845bf0353": Published("SE-ResNeXt-101 (32x4d)", 19.81, 4.96),
    "81d5df626e15b147fc12": Published("SENet-154", 18.68, 4.47),
}
# How the published numbers were scored (see Published.protocol).
PROTOCOL = {"resize": 256, "crop": 224, "mean": (104.0, 117.0, 123.0), "mean_file": None,
            "scale": None, "channel_order": "bgr"}


def structure_fingerprint(net: Net) -> str:
    """A short hash of the net's structure: per layer its type, group, parameter and top shapes.

    Names, formatting and the batch dimension do not enter, so a reformatted or renamed copy of
    a definition keeps its fingerprint; any change of architecture changes it.
    """
    lines = []
    for layer in net.layers:
        group = layer.param.convolution_param.group if layer.type == "Convolution" else 0
        params = [list(s) for s in layer.param_shapes]
        tops = [list(net.blobs[t].shape[1:]) for t in layer.tops]
        lines.append(f"{layer.type}|{group}|{params}|{tops}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]


def published_for(net: Net) -> Published | None:
    """The published accuracy of ``net`` if it is one of the released SENet definitions."""
    return PUBLISHED.get(structure_fingerprint(net))
