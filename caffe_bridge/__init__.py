"""caffe-bridge: read Caffe models without Caffe, run them exactly in PyTorch, carry them on.

Attributes are imported lazily, so ``import caffe_bridge.caffemodel`` (or the CLI's ``--help``)
does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from caffe_bridge.errors import (
    CaffeBridgeError,
    CaffemodelError,
    PrototxtError,
    ShapeError,
    UnsupportedLayerError,
)

__version__ = "0.1.0"

_LAZY = {
    "convert": "caffe_bridge.build",
    "read_caffemodel": "caffe_bridge.caffemodel",
    "write_caffemodel": "caffe_bridge.caffemodel",
    "load_net": "caffe_bridge.ir",
    "Net": "caffe_bridge.ir",
    "Layer": "caffe_bridge.ir",
    "Blob": "caffe_bridge.ir",
    "SourceLoc": "caffe_bridge.ir",
    "register": "caffe_bridge.converters.registry",
}

if TYPE_CHECKING:
    from caffe_bridge.build import convert
    from caffe_bridge.caffemodel import read_caffemodel, write_caffemodel
    from caffe_bridge.converters.registry import register
    from caffe_bridge.ir import Blob, Layer, Net, SourceLoc, load_net


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'caffe_bridge' has no attribute {name!r}")
    if name == "register":  # the built-in converters must be registered before any user's
        importlib.import_module("caffe_bridge.converters")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "Blob",
    "CaffeBridgeError",
    "CaffemodelError",
    "Layer",
    "Net",
    "PrototxtError",
    "ShapeError",
    "SourceLoc",
    "UnsupportedLayerError",
    "convert",
    "load_net",
    "read_caffemodel",
    "register",
    "write_caffemodel",
]
