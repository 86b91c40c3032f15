"""Seeded random weights for any Net, shaped so that numerical checks cannot hide errors.

Used by the tests, the benchmarks and ``caffe2torch demo``. Weights are drawn layer by layer
while a seeded batch runs through the net, so that every BatchNorm gets the statistics of its
actual input (times a moving-average factor != 1, as real caffemodels store): activations stay
O(1), SE gates and softmax outputs are not saturated.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from caffe_bridge import schema
from caffe_bridge.ir import Layer, Net, with_weights

BN_FACTOR = 0.999  # the third BatchNorm blob; real files store e.g. 999.98 (open_nsfw)


def _fan_in(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:])) if len(shape) > 1 else max(1, shape[0])


def _residual_tails(net: Net) -> set[str]:
    """Scale (or fork BN) layers ending a residual branch: Axpy's X, or an Eltwise's
    last-computed bottom.

    (An Eltwise's other bottoms are the shortcut, possibly a projection, which stays full-size.)
    """
    producer = {top: layer for layer in net.layers for top in layer.tops}
    order = {layer.name: i for i, layer in enumerate(net.layers)}
    branch_ends: set[str] = set()
    for layer in net.layers:
        if layer.type == "Axpy":
            branch_ends.add(layer.bottoms[1])
        elif layer.type == "Eltwise":
            branch_ends.add(max(layer.bottoms, key=lambda v: order[producer[v].name]))
    return {producer[v].name for v in branch_ends
            if (producer[v].type == "Scale" and len(producer[v].bottoms) == 1)
            or producer[v].type == "BN"}


def _draw(layer: Layer, rng: np.random.Generator, tail: bool = False) -> list[np.ndarray]:
    """Random blobs for every non-BatchNorm parameter layer.

    A residual branch's last Scale gets a small gamma (``tail``): the stream stays dominated by
    its shortcut, as in trained ResNets, so float32 rounding does not grow ~10% per block and two
    correct implementations agree to 1e-5 even on 150-layer nets; a wrong branch still shows.
    """
    blobs: list[np.ndarray] = []
    for i, shape in enumerate(layer.param_shapes):
        if layer.type in ("Convolution", "InnerProduct") and i == 0:
            fan = _fan_in(shape)
            if layer.type == "InnerProduct" and layer.param.inner_product_param.transpose:
                fan = shape[0]
            arr = rng.standard_normal(shape) * np.sqrt(1.0 / fan)
        elif layer.type == "Deconvolution" and i == 0:
            arr = rng.standard_normal(shape) * np.sqrt(1.0 / (shape[0] * np.prod(shape[2:])))
        elif layer.type == "Scale" and i == 0 and len(layer.bottoms) == 1:
            arr = rng.uniform(0.05, 0.2, shape) if tail else rng.uniform(0.5, 1.5, shape)
        elif layer.type == "PReLU":
            arr = rng.uniform(0.05, 0.3, shape)
        elif layer.type == "Scale" and i == 1:  # beta: spreads the SE gates
            arr = rng.standard_normal(shape) * 0.5
        else:  # biases
            arr = rng.standard_normal(shape) * 0.1
        blobs.append(arr.astype(np.float32))
    return blobs


def _fork_bn(layer: Layer, x: torch.Tensor, rng: np.random.Generator, tail: bool = False
             ) -> list[np.ndarray]:
    """The forks' BN: scale ~ U(0.5, 1.5) (U(0.05, 0.2) ending a residual branch, as for
    Scale), shift ~ N(0, 0.1); stored statistics (4 blobs) are the input's own; SegNet's
    2-blob INFERENCE layer gets its statistics folded in, as compute_bn_statistics.py does."""
    shape = layer.param_shapes[0]
    bp = layer.param.bn_param
    axis = bp.axis if bp.HasField("axis") else 1
    dims = [d for d in range(x.dim()) if d != axis]
    mean = x.mean(dim=dims).numpy().reshape(shape)
    # + half the input's overall variance: a 1 x 1 map at batch 1 has no spread of its own
    var = (x.var(dim=dims, unbiased=False) + 0.5 * x.var(unbiased=False)).numpy().reshape(shape)
    scale = rng.uniform(0.05, 0.2, shape) if tail else rng.uniform(0.5, 1.5, shape)
    shift = rng.standard_normal(shape) * 0.1
    if len(layer.param_shapes) == 4:
        blobs = [scale, shift, mean, var]
    elif bp.bn_mode == schema.BNParameter.INFERENCE:  # y = scale * x + shift
        scale = scale / np.sqrt(var + 1e-5)
        blobs = [scale, shift - mean * scale]
    else:
        blobs = [scale, shift]
    return [np.asarray(b, dtype=np.float32) for b in blobs]


def _dense_block(layer: Layer, rng: np.random.Generator) -> list[np.ndarray]:
    """caffe_ocr's DenseBlock (blob groups of numTransition, see converters/ocr.py): He-scaled
    filters, BN scale ~ U(0.5, 1.5), shift and mean ~ N(0, 0.1), variance ~ U(0.5, 1.5) (it
    must stay positive), and 0 for the last scalar, as GPU training leaves it."""
    n_t = max(layer.param.denseblock_param.numTransition, 1)
    blobs = []
    for i, shape in enumerate(layer.param_shapes):
        group = i // n_t
        if len(shape) == 1:
            arr = np.zeros(shape)
        elif group in (0, 5):
            arr = rng.standard_normal(shape) * np.sqrt(2.0 / _fan_in(shape))
        elif group in (1, 4, 6, 9):
            arr = rng.uniform(0.5, 1.5, shape)
        else:
            arr = rng.standard_normal(shape) * 0.1
        blobs.append(arr.astype(np.float32))
    return blobs


def random_inputs(net: Net, seed: int = 0, batch: int | None = None) -> dict[str, np.ndarray]:
    """Seeded N(0, 1) inputs for every net input (optionally with another batch size)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in net.inputs.items():
        s = (batch, *shape[1:]) if batch is not None else shape
        out[name] = rng.standard_normal(s).astype(np.float32)
    return out


@torch.no_grad()
def random_weights(
    net: Net, seed: int = 0, *, calibration_batch: int | None = None,
    bn_factor: float = BN_FACTOR,
) -> dict[str, list[np.ndarray]]:
    """Seeded weights for every parameter layer of ``net``: layer name -> Caffe blobs.

    BatchNorm statistics are calibrated on seeded inputs of the declared shapes (or with the
    first axis resized to ``calibration_batch``, for nets whose inputs all carry the batch).
    """
    from caffe_bridge import converters

    rng = np.random.default_rng(seed)
    inputs = random_inputs(net, seed + 1, batch=calibration_batch)
    env: dict[str, torch.Tensor] = {}
    weights: dict[str, list[np.ndarray]] = {}
    tails = _residual_tails(net)
    for layer in net.layers:
        if layer.type == "Input":
            for top, caffe in zip(layer.tops, layer.caffe_tops, strict=True):
                env[top] = torch.from_numpy(inputs[caffe])
            continue
        args = [env[b] for b in layer.bottoms]
        if layer.param_shapes:
            if layer.type == "BatchNorm":
                x = args[0].double()
                dims = [d for d in range(x.dim()) if d != 1]
                mean = x.mean(dim=dims).numpy()
                var = x.var(dim=dims, unbiased=False).numpy()
                blobs = [(mean * bn_factor).astype(np.float32),
                         (var * bn_factor).astype(np.float32),
                         np.array([bn_factor], dtype=np.float32)]
            elif layer.type == "BN":
                blobs = _fork_bn(layer, args[0].double(), rng, layer.name in tails)
            elif layer.type == "DenseBlock":
                blobs = _dense_block(layer, rng)
            else:
                blobs = _draw(layer, rng, layer.name in tails)
            weights[layer.name] = blobs
            layer = dataclasses.replace(layer, blobs=tuple(blobs))
        out = converters.REGISTRY.convert(layer, net).eval()(*args)
        outs = out if isinstance(out, tuple) else (out,)
        for top, value in zip(layer.tops, outs, strict=True):
            env[top] = value
    return weights


def net_with_random_weights(net: Net, seed: int = 0) -> Net:
    """``net`` with :func:`random_weights` attached."""
    return with_weights(net, random_weights(net, seed))
