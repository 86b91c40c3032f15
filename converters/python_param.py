"""``python_param.param_str`` of the Python layers converted here, read without running it.

Two dialects: a Python dict literal (layers that ``eval`` it, as ENet's SpatialDropoutLayer)
and py-faster-rcnn's flat YAML mapping (``yaml.load``; CTPN copies it).
"""

from __future__ import annotations

import ast
import re

from caffe_bridge.errors import PrototxtError


def literal_dict(text: str) -> dict[str, object]:
    """``param_str`` read as the dict literal its layer evaluates (empty text: ``{}``)."""
    try:
        value = ast.literal_eval(text or "{}")
    except (ValueError, SyntaxError) as err:
        raise PrototxtError(f"python_param.param_str {text!r} is not a Python literal "
                            f"({err})") from None
    if not isinstance(value, dict):
        raise PrototxtError(f"python_param.param_str {text!r} is not a dict literal")
    return value


def yaml_dict(text: str) -> dict[str, object]:
    """The flat YAML mapping of a py-faster-rcnn ``param_str`` ("'feat_stride': 16", one key
    a line or a {...} flow mapping; ``!!python/tuple`` tags allowed), without a YAML library."""
    body = re.sub(r"!!python/tuple\s*", "", text).strip()
    if not body.startswith("{"):
        body = "{" + ", ".join(line for line in body.splitlines() if line.strip()) + "}"
    return literal_dict(body)
