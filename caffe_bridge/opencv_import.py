"""The one place that imports OpenCV (an optional dependency) and explains what is missing."""

from __future__ import annotations

from typing import Any

from caffe_bridge.errors import CaffeBridgeError


def import_cv2(purpose: str, *, dnn: bool = False,
               error: type[CaffeBridgeError] = CaffeBridgeError) -> Any:
    """The ``cv2`` module, or ``error`` saying it is needed for ``purpose``.

    With ``dnn``, also require ``cv2.dnn.readNetFromCaffe`` (OpenCV 5 removed it).
    """
    try:
        import cv2
    except ImportError as err:
        raise error(f"OpenCV (the cv2 module: pip install 'opencv-python-headless<5') is needed "
                    f"for {purpose}: {err}") from None
    if dnn and not (hasattr(cv2, "dnn") and hasattr(cv2.dnn, "readNetFromCaffe")):
        raise error(f"this OpenCV ({cv2.__version__}) has no cv2.dnn.readNetFromCaffe (OpenCV 5 "
                    "removed it); install OpenCV 4.x")
    return cv2
