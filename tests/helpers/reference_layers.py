"""Single layers for the numpy reference's self-tests: a duck-typed layer from prototxt text."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
from google.protobuf import text_format

from caffe_bridge import schema
from tests.reference import run_layer


def make_layer(
    type_: str, text: str = "", blobs: tuple[Any, ...] = (), tops: int = 1, name: str = "l"
) -> SimpleNamespace:
    """A duck-typed layer: `text` is the LayerParameter body in prototxt syntax."""
    param = schema.LayerParameter()
    text_format.Parse(text, param)
    param.type = type_
    return SimpleNamespace(
        name=name,
        type=type_,
        param=param,
        blobs=tuple(np.asarray(b, dtype=np.float32) for b in blobs),
        tops=tuple(f"t{i}" for i in range(tops)),
    )


def run1(layer: SimpleNamespace, *inputs: Any) -> np.ndarray:
    outs = run_layer(layer, [np.asarray(x, dtype=np.float64) for x in inputs])
    assert len(outs) == 1
    return outs[0]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
