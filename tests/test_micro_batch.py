"""Running a batch in parts (``caffe_bridge.micro_batch``): which layers may be split, against
the numpy Caffe reference; how big the parts are; that a split model computes what the whole
batch does, and that nets which mix samples are never split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from caffe_bridge import converters
from caffe_bridge.build import build_module, convert
from caffe_bridge.fast import fast_model
from caffe_bridge.ir import load_net, with_weights
from caffe_bridge.micro_batch import (
    MICRO_BATCH,
    PART_LIMIT,
    joined,
    part_limit,
    run_in_parts,
    splittable,
)
from caffe_bridge.random_weights import random_inputs, random_weights
from tests import reference
from tests.helpers.layer_check import layer_text, net_from_text, net_text

FIXTURES = Path(__file__).parent / "fixtures"
X4 = (1, 4, 6, 6)
X2 = (2, 4, 6, 6)
CONV = "convolution_param { num_output: 2 kernel_size: 3 }"
DROPOUT = ('python_param { module: "spatial_dropout" layer: "SpatialDropoutLayer" '
           "param_str: \"{\\'phase\\': \\'TEST\\', \\'p\\': \\'0.1\\'}\" }")

# (layer type, body, bottom shapes at batch 1, number of tops)
PER_SAMPLE = {
    "ReLU": ("ReLU", "relu_param { negative_slope: 0.1 }", (X4,), 1),
    "PReLU": ("PReLU", "", (X4,), 1),
    "ELU": ("ELU", "", (X4,), 1),
    "Sigmoid": ("Sigmoid", "", (X4,), 1),
    "TanH": ("TanH", "", (X4,), 1),
    "AbsVal": ("AbsVal", "", (X4,), 1),
    "Power": ("Power", "power_param { power: 2 scale: 0.5 shift: 1 }", (X4,), 1),
    "Exp": ("Exp", "", (X4,), 1),
    "Log": ("Log", "log_param { shift: 10 }", (X4,), 1),
    "BNLL": ("BNLL", "", (X4,), 1),
    "Threshold": ("Threshold", "", (X4,), 1),
    "Dropout": ("Dropout", "", (X4,), 1),
    "Python:spatial_dropout.SpatialDropoutLayer": ("Python", DROPOUT, (X4,), 1),
    "Softmax": ("Softmax", "", (X4,), 1),
    "Axpy": ("Axpy", "", ((1, 4, 1, 1), X4, X4), 1),
    "Convolution": ("Convolution", CONV, (X4,), 1),
    "Deconvolution": ("Deconvolution", CONV, (X4,), 1),
    "InnerProduct": ("InnerProduct", "inner_product_param { num_output: 3 }", (X4,), 1),
    "Normalize": ("Normalize", "norm_param { across_spatial: true }", (X4,), 1),
    "ConvolutionDepthwise": ("ConvolutionDepthwise",
                             "convolution_param { num_output: 4 kernel_size: 3 }", (X4,), 1),
    "DepthwiseConvolution": ("DepthwiseConvolution",
                             "convolution_param { num_output: 4 kernel_size: 3 group: 4 }",
                             (X4,), 1),
    "ShuffleChannel": ("ShuffleChannel", "shuffle_channel_param { group: 2 }", (X4,), 1),
    "ReLU6": ("ReLU6", "", (X4,), 1),
    "Clip": ("Clip", "clip_param { min: -0.5 max: 0.5 }", (X4,), 1),
    "Swish": ("Swish", "", (X4,), 1),
    "Mish": ("Mish", "", (X4,), 1),
    "HardSwish": ("HardSwish", "", (X4,), 1),
    "Eltwise": ("Eltwise", "eltwise_param { operation: PROD }", (X4, X4), 1),
    "Concat": ("Concat", "", (X4, X4), 1),
    "Split": ("Split", "", (X4,), 2),
    "BatchNorm": ("BatchNorm", "", (X4,), 1),
    "Scale": ("Scale", "scale_param { bias_term: true }", (X4,), 1),
    "Bias": ("Bias", "", (X4,), 1),
    "LRN": ("LRN", "lrn_param { local_size: 3 }", (X4,), 1),
    "Pooling": ("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }", (X4,), 1),
    "Interp": ("Interp", "interp_param { zoom_factor: 2 }", (X4,), 1),
    "Upsample": ("Upsample", "upsample_param { scale: 2 }", (X4,), 1),
    "Reorg": ("Reorg", "reorg_param { stride: 2 }", ((1, 8, 4, 4),), 1),
    "MVN": ("MVN", "", (X4,), 1),
    "Slice": ("Slice", "slice_param { slice_point: 1 }", (X4,), 2),
    "Flatten": ("Flatten", "", (X4,), 1),
    "Crop": ("Crop", "crop_param { offset: 1 }", (X4, (1, 4, 4, 4)), 1),
    "Reshape": ("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 3 } }", (X4,), 1),
    "Permute": ("Permute", "permute_param { order: 0 order: 2 order: 3 order: 1 }", (X4,), 1),
    "Reduction": ("Reduction", "reduction_param { operation: MEAN axis: 2 }", (X4,), 1),
    "BN": ("BN", "bn_param { eps: 1e-5 }", (X4,), 1),  # PSPNet's: stored statistics
}
# More parameters of declared types that keep the samples apart.
PER_SAMPLE_TOO = {
    "bn-segnet-inference": ("BN", "bn_param { bn_mode: INFERENCE }", (X4,), 1),
    "bn-initial-moving-average": ("BN", "bn_param { moving_average: true var_eps: 1e-3 }",
                                  (X4,), 1),
    # SE-BN-Inception's gates: bottom[1] holds one value per sample and channel, from axis 0.
    "scale-by-bottom-from-axis-0": ("Scale", "scale_param { axis: 0 }", (X4, (1, 4)), 1),
    "bias-by-bottom-from-axis-0": ("Bias", "bias_param { axis: 0 }", (X4, (1, 4, 6)), 1),
}

# Parameters that make a declared type mix the samples of a batch (never split); bottom
# shapes as given (a batch of 2).
MIXING = {
    "softmax-axis-0": ("Softmax", "softmax_param { axis: 0 }", (X2,)),
    "inner-product-axis-0": ("InnerProduct", "inner_product_param { num_output: 3 axis: 0 }",
                             (X2,)),
    "concat-dim-0": ("Concat", "concat_param { concat_dim: 0 }", (X2, X2)),
    "concat-axis-minus-4": ("Concat", "concat_param { axis: -4 }", (X2, X2)),
    "slice-dim-0": ("Slice", "slice_param { slice_dim: 0 }", (X2,)),
    "flatten-axis-0": ("Flatten", "flatten_param { axis: 0 }", (X2,)),
    "crop-axis-0": ("Crop", "crop_param { axis: 0 }", (X2, (2, 4, 4, 4))),
    "reshape-infers-batch": ("Reshape", "reshape_param { shape { dim: -1 dim: 48 } }", (X2,)),
    "permute-batch-moved": ("Permute", "permute_param { order: 1 order: 0 }", (X2,)),
    "batch-norm-batch-stats": ("BatchNorm", "batch_norm_param { use_global_stats: false }",
                               (X2,)),
    "scale-axis-0": ("Scale", "scale_param { axis: 0 num_axes: 1 }", (X2,)),
    "scale-by-bottom-from-axis-1": ("Scale", "scale_param { axis: 1 }", (X2, (4, 6))),
    "reduction-default-axis-0": ("Reduction", "", (X2,)),
    "reshape-fixed-batch-1": ("Reshape", "reshape_param { shape { dim: 1 dim: 2 dim: -1 } }",
                              (X2,)),
    "bn-segnet-learn": ("BN", "bn_param { bn_mode: LEARN }", (X2,)),
    "bn-initial-batch-stats": ("BN", "bn_param { var_eps: 1e-3 }", (X2,)),
    "undeclared-type": ("PriorBox", "prior_box_param { min_size: 2 }", (X2, (2, 3, 12, 12))),
}


def _text(type_: str, body: str, shapes: tuple[tuple[int, ...], ...], tops: int,
          batch: int = 1) -> str:
    names = ("out",) if tops == 1 else tuple(f"out{i}" for i in range(tops))
    return net_text(layer_text(type_, body, n_bottoms=len(shapes), tops=names),
                    *((batch, *s[1:]) for s in shapes))


def _layer(net):
    return next(layer for layer in net.layers if layer.type != "Input")


def test_every_declared_type_is_checked_here() -> None:
    declared = {info.type for info in converters.REGISTRY if info.per_sample is not False}
    assert declared == set(PER_SAMPLE)


@pytest.mark.parametrize("key", sorted(PER_SAMPLE) + sorted(PER_SAMPLE_TOO))
def test_declared_layers_compute_each_sample_alone(key: str) -> None:
    """Caffe's result (the numpy reference) for a batch of 3 is the results of the samples
    run one at a time, so a part of the batch may run alone."""
    type_, body, shapes, tops = {**PER_SAMPLE, **PER_SAMPLE_TOO}[key]
    one = net_from_text(_text(type_, body, shapes, tops))
    three = net_from_text(_text(type_, body, shapes, tops, batch=3))
    assert converters.REGISTRY.per_sample(_layer(three), three)
    weights = random_weights(one, 0)
    feeds = random_inputs(three, 1)
    whole = reference.run_net(with_weights(three, weights), feeds)
    parts = [reference.run_net(with_weights(one, weights),
                               {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(3)]
    for value in three.outputs:
        alone = np.concatenate([p[value] for p in parts])
        np.testing.assert_allclose(whole[value], alone, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("key", sorted(MIXING))
def test_layers_that_mix_samples_are_not_declared(key: str) -> None:
    type_, body, shapes = MIXING[key]
    net = net_from_text(net_text(layer_text(type_, body, n_bottoms=len(shapes)), *shapes))
    assert not converters.REGISTRY.per_sample(_layer(net), net)
    assert part_limit(net, converters.REGISTRY.per_sample) == 0


def _conv_net(channels: int, side: int, extra: str = "", middle: str = "") -> str:
    """conv 3x3 (``channels``) -> ReLU -> ``middle`` -> global AVE pooling -> ``extra``."""
    return (f'name: "c"\nlayer {{ name: "in" type: "Input" top: "data" '
            f"input_param {{ shape {{ dim: 1 dim: 3 dim: {side} dim: {side} }} }} }}\n"
            f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            f"convolution_param {{ num_output: {channels} kernel_size: 3 pad: 1 }} }}\n"
            f'layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}\n{middle}'
            f'layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool" '
            f"pooling_param {{ pool: AVE global_pooling: true }} }}\n{extra}")


@pytest.mark.parametrize(("channels", "side", "part"), [
    (16, 256, 4),  # largest blob 4 MiB: the cap
    (64, 256, 2),  # 16 MiB: two fit in 32 MiB
    (64, 512, 1),  # 64 MiB: one at a time
])
def test_part_size_keeps_the_largest_blob_within_the_cache(channels: int, side: int,
                                                           part: int) -> None:
    net = net_from_text(_conv_net(channels, side))
    assert part_limit(net, converters.REGISTRY.per_sample) == part


SENETS = ("SE-ResNet-50", "SE-ResNet-101", "SE-ResNet-152", "SE-ResNeXt-50", "SE-ResNeXt-101",
          "SENet-154", "SE-BN-Inception")


@pytest.mark.parametrize("name", SENETS)
def test_every_senet_runs_in_parts_of_four(name: str) -> None:
    """SE-BN-Inception gates with a two-bottom Scale from axis 0 (one gate per sample), which
    keeps the samples apart; the other SENets with Axpy."""
    net = load_net(FIXTURES / "senet" / f"{name}.prototxt")
    assert part_limit(net, converters.REGISTRY.per_sample) == 4


def test_only_the_fast_form_runs_in_parts() -> None:
    net = load_net(FIXTURES / "senet" / "SE-ResNet-50.prototxt")
    exact = build_module(net)
    assert exact.meta[PART_LIMIT] == 4 and exact.meta.get(MICRO_BATCH, 0) == 0
    assert fast_model(exact).meta[MICRO_BATCH] == 4


def test_run_in_parts_slices_every_input_and_joins_every_output() -> None:
    seen = []

    class Two(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            seen.append(len(a))
            return a + b, a * 2

    a, b = torch.arange(10.0), torch.arange(10.0, 20.0)
    out = run_in_parts(Two(), (a, b), 4)
    assert seen == [4, 4, 2]
    assert torch.equal(out[0], a + b) and torch.equal(out[1], a * 2)
    assert torch.equal(joined([torch.ones(1), torch.zeros(2)]), torch.tensor([1.0, 0, 0]))


def _split_and_whole(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    part = model.meta[MICRO_BATCH]
    with torch.no_grad():
        split = model(x)
        model.meta[MICRO_BATCH] = 0
        try:
            whole = model(x)
        finally:
            model.meta[MICRO_BATCH] = part
    return split, whole


def test_fast_model_runs_a_large_batch_in_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each part is the model run on that slice alone; the joined result is the whole batch's
    within float32 rounding (oneDNN may pick other kernels for other batch sizes)."""
    text = _conv_net(8, 32, 'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" '
                     "inner_product_param { num_output: 5 } }\n"
                     'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n')
    net = net_from_text(text)
    model = convert(with_weights(net, random_weights(net, 0)))
    assert model.meta[MICRO_BATCH] == 4
    calls = []
    from caffe_bridge import micro_batch

    monkeypatch.setattr(micro_batch, "run_in_parts",
                        lambda m, args, part: calls.append(part) or run_in_parts(m, args, part))
    x = torch.from_numpy(random_inputs(net, 3, batch=10)["data"])
    split, whole = _split_and_whole(model, x)
    assert calls == [4]
    with torch.no_grad():
        alone = torch.cat([model(x[i:i + 4]) for i in range(0, 10, 4)])
    assert torch.equal(split, alone)
    torch.testing.assert_close(split, whole, rtol=1e-6, atol=1e-7)


def test_hooks_and_tracing_see_the_whole_batch() -> None:
    net = net_from_text(_conv_net(8, 16))
    model = convert(with_weights(net, random_weights(net, 0)))
    x = torch.randn(6, 3, 16, 16)
    assert splittable(model, (x,), 4)
    sizes = []
    handle = model.get_submodule("conv").register_forward_hook(
        lambda m, i, o: sizes.append(len(o)))
    try:
        assert not splittable(model, (x,), 4)
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    assert sizes == [6]
    assert not splittable(model, (x[:4],), 4)  # not larger than a part
    assert not splittable(model, (x, x[:5]), 4)  # inputs of different batch sizes
    assert not splittable(model, (x.to("meta"),), 4)  # not on the CPU (a GPU wants it whole)
    traced = torch.jit.trace(model, x, check_trace=False)
    assert len(traced(x)) == 6


def test_batch_statistics_net_is_never_split() -> None:
    """The trap: BatchNorm with ``use_global_stats: false`` normalises with the statistics of
    the whole batch; parts of 4 would give each part its own mean and variance."""
    text = _conv_net(8, 16, middle='layer { name: "bn" type: "BatchNorm" bottom: "conv" '
                     'top: "conv" batch_norm_param { use_global_stats: false } }\n')
    net = net_from_text(text)
    net = with_weights(net, random_weights(net, 0))
    fast, exact = convert(net), convert(net, exact=True)
    assert fast.meta[MICRO_BATCH] == 0
    x = torch.from_numpy(random_inputs(net, 2, batch=8)["data"])
    with torch.no_grad():
        got, want = fast(x), exact(x)
        parted = torch.cat([exact(x[:4]), exact(x[4:])])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (parted - want).abs().max() > 1e-2  # what splitting it would have done
