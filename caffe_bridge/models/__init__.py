"""Idiomatic PyTorch definitions of model families, with their Caffe mappings.

``from_caffe`` / ``to_caffe`` (``senet_caffe``) and ``load_senet`` / ``fold_input``
(``senet_export``) are imported on first use: they need the parser and the caffemodel writer,
which the plain model definitions do not.
"""

from __future__ import annotations

from typing import Any

from caffe_bridge.models.senet import (
    SEBNInception,
    SENet,
    se_bn_inception,
    se_resnet50,
    se_resnet101,
    se_resnet152,
    se_resnext50_32x4d,
    se_resnext101_32x4d,
    senet154,
)

__all__ = [
    "SEBNInception",
    "SENet",
    "fold_input",
    "from_caffe",
    "load_senet",
    "se_bn_inception",
    "se_resnet50",
    "se_resnet101",
    "se_resnet152",
    "se_resnext50_32x4d",
    "se_resnext101_32x4d",
    "senet154",
    "to_caffe",
]


def __getattr__(name: str) -> Any:
    if name in ("from_caffe", "to_caffe"):
        from caffe_bridge.models import senet_caffe

        return getattr(senet_caffe, name)
    if name in ("load_senet", "fold_input"):
        from caffe_bridge.models import senet_export

        return getattr(senet_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
