"""The fast form of a converted model: what ``convert`` returns unless ``exact=True``.

Each transformation here changes results only within float32 rounding, *as measured*:
``tests/test_fast_default.py`` holds, for every SENet and zoo net, the fast model's distance to
the exact one (Caffe's order of operations) to at most 2x the exact model's own noise floor (its
output change when each input value moves by one ulp).

* **BatchNorm folded into the preceding convolution.** ``w' = w * g / sqrt(var + eps)``,
  ``b' = (b - mean) * g / sqrt(var + eps) + beta``, computed in float64 and rounded to float32
  once (a following per-channel Scale is already part of the BatchNorm module, see
  ``converters/norm.py``). Caffe rounds after each of convolution, mean, divide, scale and shift;
  the folded form rounds the convolution's sum only, so it is as close to the exact real-number
  result as Caffe's own order, usually closer.
* **ReLU in place** where nothing else reads its input (bit-for-bit the same).
* **Channels-last weights**, so oneDNN runs its NHWC kernels and the activations stay NHWC
  (the first convolution converts its input).

The folded model is for inference: it has no BatchNorm modules left to train.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from caffe_bridge.build import CAFFE_LAYER

CAFFE_FOLDED = "caffe_folded"  # node.meta key: the convolution's own Caffe layer, once folded

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# float32: the folded constants round as PyTorch's eval BatchNorm rounds its own, which keeps the
# fast model within 2x the exact model's noise floor on every reference net. float64 (round the
# folded weights once) is closer to the real-number result (SE-ResNet-50: 3.9e-7 from float64 vs
# 1.1e-6 for the exact model) but 2.8x the floor away from the exact model: not the default.
FOLD_DTYPE = torch.float32
FAST_MEMORY_FORMAT = torch.channels_last


@torch.no_grad()
def folded_conv(conv: nn.Module, bn: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``conv`` computing ``bn(conv(x))`` (eval ``bn``), its constants in ``dtype``.

    In float32 the per-channel factor and shift are rounded as PyTorch's own eval BatchNorm
    rounds them (``alpha = weight / sqrt(var + eps)``, ``beta = bias - mean * alpha``).
    """
    dtype = dtype or FOLD_DTYPE
    n = bn.num_features
    invstd = 1 / torch.sqrt(bn.running_var.to(dtype) + torch.tensor(bn.eps, dtype=dtype))
    scale = invstd * bn.weight.to(dtype) if bn.weight is not None else invstd
    shift = -(bn.running_mean.to(dtype) * scale)
    if bn.bias is not None:
        shift = bn.bias.to(dtype) + shift
    if conv.bias is not None:
        shift = conv.bias.to(dtype) * scale + shift
    shift = shift.reshape(n)
    view = (-1,) + (1,) * (conv.weight.dim() - 1)
    weight = (conv.weight.to(dtype) * scale.reshape(view)).to(conv.weight.dtype)
    grad = conv.weight.requires_grad
    # deepcopy with the new tensors given: the old weight is never copied (one allocation)
    memo = {id(conv.weight): nn.Parameter(weight, grad)}
    if conv.bias is not None:
        memo[id(conv.bias)] = conv.bias
    out = copy.deepcopy(conv, memo)
    out.bias = nn.Parameter(shift.to(conv.weight.dtype), grad)
    return out


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
            relu.inplace = True
            count += 1
    return count


def fast_structure(model: fx.GraphModule) -> fx.GraphModule:
    """The fast form's modules, in place: BatchNorm folded, ReLU in place, eval mode (the
    weights keep their layout; the generated code converts them to channels-last itself)."""
    fold_batch_norm(model)
    relu_in_place(model)
    return model.eval()


def make_fast(model: fx.GraphModule) -> fx.GraphModule:
    """Turn a converted model into its fast form, in place (no copy of the weights); return it."""
    return fast_structure(model).to(memory_format=FAST_MEMORY_FORMAT)


def fast_model(model: fx.GraphModule) -> fx.GraphModule:
    """The fast form of a converted model as a new module (``model`` is left as it is)."""
    return make_fast(copy.deepcopy(model))
