"""Check converters against the numpy Caffe reference, one small definition at a time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from caffe_bridge.build import build_module
from caffe_bridge.ir import Net, build_net, with_weights
from caffe_bridge.numeric import rel_err
from caffe_bridge.prototxt import parse_prototxt_text
from caffe_bridge.random_weights import random_inputs, random_weights
from caffe_bridge.upgrade import upgrade
from tests import reference


def net_from_text(text: str) -> Net:
    """A Net from prototxt text (any generation), without weights."""
    parsed = parse_prototxt_text(text, "<test>")
    return build_net(upgrade(parsed), name=parsed.net.name, source="<test>")


def net_text(layer: str, *shapes: tuple[int, ...]) -> str:
    """An Input layer (tops data, b1, b2, ...) with ``shapes``, then ``layer`` on line 3."""
    names = ["data", *(f"b{i}" for i in range(1, len(shapes)))]
    tops = "".join(f' top: "{n}"' for n in names)
    dims = " ".join("shape {" + "".join(f" dim: {d}" for d in s) + " }" for s in shapes)
    return f'name: "t"\nlayer {{ name: "in" type: "Input"{tops} input_param {{ {dims} }} }}\n' \
           f"{layer}\n"


def layer_text(type_: str, body: str = "", n_bottoms: int = 1, tops: tuple[str, ...] = ("out",)
               ) -> str:
    """Layer "l" of ``type_`` on the first ``n_bottoms`` Input tops of :func:`net_text`."""
    bottoms = "".join(f' bottom: "{n}"' for n in ["data", *(f"b{i}" for i in range(1, n_bottoms))])
    top = "".join(f' top: "{t}"' for t in tops)
    return f'layer {{ name: "l" type: "{type_}"{bottoms}{top} {body} }}'


def check_layer(
    text: str,
    *,
    seed: int = 0,
    weights: Mapping[str, Sequence[np.ndarray]] | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    rtol: float = 1e-5,
) -> dict[str, float]:
    """Convert ``text`` and compare every net output with the numpy reference.

    Returns value name -> relative max error; asserts each is <= rtol and shapes agree with
    Caffe's shape inference.
    """
    net = net_from_text(text)
    net = with_weights(net, weights if weights is not None else random_weights(net, seed))
    feeds = dict(inputs) if inputs is not None else random_inputs(net, seed + 100)
    ref = reference.run_net(net, feeds)
    model = build_module(net)
    with torch.no_grad():
        out = model(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in net.inputs))
    outs = out if isinstance(out, tuple) else (out,)
    errors = {}
    for value, tensor in zip(net.outputs, outs, strict=True):
        got = tensor.detach().numpy()
        want = np.asarray(ref[value])
        assert got.shape == tuple(net.blobs[value].shape), (value, got.shape)
        assert want.shape == got.shape, (value, want.shape, got.shape)
        errors[value] = rel_err(got, want)
        assert errors[value] <= rtol, f"{value}: relative error {errors[value]:.3g} > {rtol}"
    return errors


def check_batch(layer: str, *shapes: tuple[int, ...], batch: int = 3) -> None:
    """Convert for the prototxt's batch, run on ``batch`` samples, compare with Caffe there."""
    small = net_from_text(net_text(layer, *shapes))
    big = net_from_text(net_text(layer, *((batch, *s[1:]) for s in shapes)))
    weights = random_weights(small, 0)
    model = build_module(with_weights(small, weights))
    feeds = random_inputs(big, 5)
    ref = reference.run_net(with_weights(big, weights), feeds)
    with torch.no_grad():
        out = model(*(torch.from_numpy(feeds[n]) for n in big.inputs))
    outs = out if isinstance(out, tuple) else (out,)
    for value, got in zip(big.outputs, outs, strict=True):
        assert got.shape == big.blobs[value].shape, (value, got.shape)
        assert rel_err(got.numpy(), ref[value]) < 1e-5
