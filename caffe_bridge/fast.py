"""The fast form of a converted model: what ``convert`` returns unless ``exact=True``.

Each transformation here changes results only within float32 rounding, *as measured*:
``tests/test_fast_default.py`` holds, for every SENet and zoo net, the fast model's distance to
the exact one (Caffe's order of operations) to at most 2x the exact model's own noise floor (its
output change when each input value moves by one ulp).

* **BatchNorm folded into the preceding convolution.** ``w' = w * alpha``,
  ``b' = b * alpha + beta`` with PyTorch's own per-channel factor and shift (``bn(x) =
  fma(x, alpha, beta)``, read from the BatchNorm module; a following per-channel Scale is already
  part of it, see ``converters/norm.py``), each folded constant rounded once. The exact model's
  rounding of ``alpha`` and ``beta`` is one error shared by a whole channel, which no later sum
  averages out; the folded model shares it (before, ``1 / sqrt`` and a two-rounding shift gave
  other constants in 13% of channels: ResNet-50 2.75x the floor from the exact model).
* **ReLU in place** where nothing else reads its input (bit-for-bit the same).
* **Windowed pooling on a channels-last copy** (max and average pooling; PyTorch's NCHW kernels
  are scalar loops). The convolutions stay NCHW, see :func:`make_fast`.
* **Pointwise convolutions on maps of 28 x 28 or more as one batched GEMM**
  (:class:`PointwiseGemm`; PyTorch's NCHW convolution path reorders every input and output).

The folded model is for inference: it has no BatchNorm modules left to train.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn

from caffe_bridge.build import CAFFE_FOLDED, CAFFE_LAYER, CAFFE_SHAPES, CAFFE_TOPS
from caffe_bridge.micro_batch import MICRO_BATCH, PART_LIMIT

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# float32: PyTorch's alpha and beta (the exact model's per-channel rounding). float64 (the
# real-number alpha and beta) is as close to the float64 result but further from the exact
# model (ResNet-50: 2.75x its noise floor, the limit is 2): not the default.
FOLD_DTYPE = torch.float32


def _bn_terms(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel factor and shift of eval ``bn`` exactly as PyTorch's kernel rounds them
    (``bn(x) = fma(x, alpha, beta)``): read from the BatchNorm itself, ``alpha`` as its output
    for ones with the mean and shift zeroed, ``beta`` as its output for zeros."""
    n = bn.num_features
    shape = (1, n, 1)
    weight = bn.weight.float() if bn.weight is not None else None
    var = bn.running_var.float()
    alpha = F.batch_norm(torch.ones(shape), torch.zeros(n), var, weight, None, False, 0.0, bn.eps)
    bias = bn.bias.float() if bn.bias is not None else None
    beta = F.batch_norm(torch.zeros(shape), bn.running_mean.float(), var, weight, bias, False,
                        0.0, bn.eps)
    return alpha.reshape(n), beta.reshape(n)


@torch.no_grad()
def folded_conv(conv: nn.Module, bn: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``conv`` computing ``bn(conv(x))`` (eval ``bn``), its constants in ``dtype``.

    float32: the per-channel factor and shift are PyTorch's own (:func:`_bn_terms`), so the
    folded model shares the exact model's per-channel rounding (one error for a whole channel,
    which no averaging removes); only ``w * alpha`` is rounded anew. float64: the real-number
    factor and shift, each folded constant rounded once.
    """
    dtype = dtype or FOLD_DTYPE
    if dtype == torch.float32:
        scale, base = (t.double() for t in _bn_terms(bn))
    else:
        scale = 1 / torch.sqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        base = -(bn.running_mean.double() * scale)
        if bn.bias is not None:
            base = bn.bias.double() + base
    shift = base if conv.bias is None else conv.bias.double() * scale + base
    view = (-1,) + (1,) * (conv.weight.dim() - 1)
    if dtype == torch.float32:  # a float32 product is rounded once: no float64 copy needed
        weight = conv.weight * scale.to(conv.weight.dtype).reshape(view)
    else:
        weight = (conv.weight.double() * scale.reshape(view)).to(conv.weight.dtype)
    return _conv_with(conv, weight, shift.to(conv.weight.dtype))


def _conv_with(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A new convolution like ``conv`` (built by its constructor, so generated code can repeat
    the call) holding ``weight`` and ``bias``."""
    with torch.device("meta"):  # no initialisation: the tensors are given
        out = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size,
                         stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                         groups=conv.groups, padding_mode=conv.padding_mode)
    return _holding(out, weight, bias, conv.weight.requires_grad)


def _holding(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None,
             grad: bool) -> nn.Module:
    """``module`` (built on the meta device) with ``weight`` and ``bias`` as its parameters."""
    module.weight = nn.Parameter(weight, grad)
    if bias is not None:
        module.bias = nn.Parameter(bias, grad)
    return module


def _foldable(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """``node`` calls an eval BatchNorm with running statistics on a plain convolution's output,
    used by nothing else (not even as a graph output)."""
    if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
        return False
    bn = modules[node.target]
    prev = node.args[0] if node.args else None
    if bn.training or not bn.track_running_stats or bn.running_mean is None:
        return False
    if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
        return False
    conv = modules.get(prev.target)
    return (type(conv) in CONV_TYPES and conv.padding_mode == "zeros"
            and conv.out_channels == bn.num_features and bn.running_var is not None)


def fold_batch_norm(gm: fx.GraphModule) -> int:
    """Fold every BatchNorm that follows a convolution into it (in place); return how many."""
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        if not _foldable(node, modules):
            continue
        prev = node.args[0]
        fused = folded_conv(modules[prev.target], modules[node.target])
        gm.add_submodule(prev.target, fused)
        modules[prev.target] = fused
        node.replace_all_uses_with(prev)
        if CAFFE_LAYER in node.meta:  # the conv node now computes up to the BatchNorm's layer
            if CAFFE_LAYER in prev.meta:
                prev.meta[CAFFE_FOLDED] = prev.meta[CAFFE_LAYER]
            prev.meta[CAFFE_LAYER] = node.meta[CAFFE_LAYER]
        if CAFFE_TOPS in node.meta:
            prev.meta[CAFFE_TOPS] = node.meta[CAFFE_TOPS]
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
        count += 1
    gm.graph.lint()
    gm.recompile()
    return count


def relu_in_place(gm: fx.GraphModule) -> int:
    """Let every ReLU overwrite its input where nothing else reads that value; return how many.

    Bit-for-bit the same result, one allocation and one pass over memory fewer.
    """
    modules = dict(gm.named_modules())
    count = 0
    for node in gm.graph.nodes:
        relu = modules.get(node.target) if node.op == "call_module" else None
        if type(relu) is not nn.ReLU or relu.inplace or len(node.args) != 1:
            continue
        (arg,) = node.args
        if (isinstance(arg, fx.Node) and arg.op in ("call_module", "call_function")
                and len(arg.users) == 1):
            gm.add_submodule(node.target, nn.ReLU(inplace=True))  # new: codegen records it
            count += 1
    return count


def _pools() -> tuple[type, ...]:
    from caffe_bridge.converters.pooling import PaddedAvgPool2d, PaddedMaxPool2d

    return (nn.MaxPool2d, nn.AvgPool2d, PaddedMaxPool2d, PaddedAvgPool2d)


class ChannelsLastPool(nn.Module):
    """``pool`` run on a channels-last copy of its input, its result contiguous (NCHW) again.

    PyTorch's NCHW max and average pooling kernels are scalar loops, its channels-last ones
    vectorised over channels (SE-BN-Inception: 21 ms of a 74 ms forward at batch 1, 1.7 ms).
    """

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.contiguous(memory_format=torch.channels_last)).contiguous()


def pool_channels_last(gm: fx.GraphModule) -> int:
    """Wrap every windowed 2-D pooling in :class:`ChannelsLastPool` (in place); return how many.

    The convolutions stay NCHW (see :func:`make_fast`).
    """
    pools = _pools()
    count = 0
    for node in gm.graph.nodes:
        pool = gm.get_submodule(node.target) if node.op == "call_module" else None
        if type(pool) not in pools or len(node.args) != 1:  # Caffe pools 4-D blobs only
            continue
        gm.add_submodule(node.target, ChannelsLastPool(pool))
        count += 1
    return count


GEMM_MIN_AREA = 28 * 28  # pointwise convolutions on maps this large run as one batched GEMM


class PointwiseGemm(nn.Module):
    """A 1x1 convolution (stride 1, no padding, one group) as a batched matrix product.

    PyTorch's NCHW path for it reorders every input and output to oneDNN's blocked layout; on
    large maps the product itself is 1.1-3.2x faster at batch 16 (on 7 x 7 maps slower, so
    those stay convolutions). Measured no less accurate: ``tests/test_fast_default.py``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        flat = x.contiguous().reshape(n, c, h * w)
        if self.bias is None:
            y = torch.matmul(self.weight, flat)
        else:
            y = torch.baddbmm(self.bias[None, :, None].expand(n, -1, h * w),
                              self.weight.expand(n, -1, -1), flat)
        return y.reshape(n, -1, h, w)


def _pointwise(conv: nn.Module, shapes: tuple[tuple[int, ...], ...]) -> bool:
    """A plain 1x1 convolution on one 4-D bottom of at least ``GEMM_MIN_AREA`` positions."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.groups == 1 and conv.padding_mode == "zeros"
            and len(shapes) == 1 and len(shapes[0]) == 4
            and shapes[0][2] * shapes[0][3] >= GEMM_MIN_AREA)


@torch.no_grad()
def pointwise_gemm(gm: fx.GraphModule) -> int:
    """Replace every large-map pointwise convolution by :class:`PointwiseGemm`; return how many."""
    count = 0
    for node in gm.graph.nodes:
        conv = gm.get_submodule(node.target) if node.op == "call_module" else None
        shapes = node.meta.get(CAFFE_SHAPES, ())
        if conv is None or len(node.args) != 1 or not _pointwise(conv, shapes):
            continue
        with torch.device("meta"):  # no initialisation: the tensors are given
            gemm = PointwiseGemm(conv.in_channels, conv.out_channels, conv.bias is not None)
        bias = None if conv.bias is None else conv.bias.detach()
        weight = conv.weight.detach().reshape(conv.out_channels, -1)
        gm.add_submodule(node.target, _holding(gemm, weight, bias, conv.weight.requires_grad))
        count += 1
    return count


def make_fast(model: fx.GraphModule) -> fx.GraphModule:
    """Turn a converted model into its fast form, in place (no copy of the weights); return it:
    BatchNorm folded, ReLU in place, pooling on channels-last copies, pointwise convolutions on
    large maps as one batched GEMM, large batches in parts (:mod:`caffe_bridge.micro_batch`,
    nets that never mix samples only), eval mode.

    The convolutions stay NCHW: oneDNN's channels-last (NHWC) kernels sum a 3x3 convolution's
    ``9 * C_in`` products in a float32 order whose error grows with ``C_in`` (RMS error 2x
    NCHW's at 64 input channels, 4.5x at 512), which put the fast model further from the
    float64 result than OpenCV on SE-ResNet-50 and SE-BN-Inception and 2.75x ResNet-50's noise
    floor from the exact model.
    """
    fold_batch_norm(model)
    model.meta[MICRO_BATCH] = model.meta.get(PART_LIMIT, 0)
    relu_in_place(model)
    pool_channels_last(model)
    pointwise_gemm(model)
    return model.eval()


def fast_model(model: fx.GraphModule) -> fx.GraphModule:
    """The fast form of a converted model as a new module (``model`` is left as it is)."""
    return make_fast(copy.deepcopy(model))
