"""Per-layer converters, installed as ``caffe_bridge.converters``.

Importing this package imports every family module, whose ``@register`` decorators fill the
default registry. Third-party converters plug in through the ``caffe_bridge.converters``
entry-point group (see ``registry.load_plugins``).
"""

from caffe_bridge.converters import (  # noqa: F401  (imported for their registrations)
    activation,
    axpy,
    bvlc_extra,
    conv,
    detection,
    efficient,
    elementwise,
    fork_norm,
    norm,
    ocr,
    pooling,
    rcnn,
    recurrent,
    resample,
    shape_ops,
    volumetric,
    yolo,
)
from caffe_bridge.converters.registry import (
    REGISTRY,
    ConverterInfo,
    Registry,
    load_plugins,
    lookup,
    register,
    register_fusion,
    supported_types,
)

__all__ = [
    "REGISTRY",
    "ConverterInfo",
    "Registry",
    "load_plugins",
    "lookup",
    "register",
    "register_fusion",
    "supported_types",
]
