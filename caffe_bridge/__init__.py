"""caffe-bridge: read Caffe models without Caffe, run them exactly in PyTorch, carry them on."""

from caffe_bridge.build import convert
from caffe_bridge.caffemodel import read_caffemodel, write_caffemodel
from caffe_bridge.errors import (
    CaffeBridgeError,
    CaffemodelError,
    PrototxtError,
    ShapeError,
    UnsupportedLayerError,
)
from caffe_bridge.ir import Blob, Layer, Net, SourceLoc, load_net

__version__ = "0.1.0"


def register(*types: str):  # noqa: ANN201
    """Register a converter for Caffe layer ``types`` (see ``caffe_bridge.converters``)."""
    from caffe_bridge.converters import register as _register

    return _register(*types)


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
