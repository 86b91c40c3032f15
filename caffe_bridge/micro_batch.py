"""Running a large batch in parts (micro-batches), for nets that never mix samples.

A whole batch of 16 SE-ResNet-50 images allocates blobs of up to 51 MB, above glibc malloc's
mmap threshold (at most 32 MiB), so every forward maps fresh pages that the kernel zeroes on
first touch (251,500 minor page faults per forward), and every elementwise op and layout
reorder streams them through DRAM. In parts of 4 each blob (13 MB) stays below the threshold
and in the last-level cache (43,700 faults), and the batch runs 1.3x (SE-ResNet-50) to 2.4x
(MobileNet v2) faster (``BENCHMARKS.md``). This is only valid when sample ``i`` of every output
depends on sample ``i`` of the inputs alone: each layer type declares that in its registration
(``per_sample``), and a net with one undeclared layer is never split. Only the fast form splits
(``caffe_bridge.fast``), and only on the CPU (a GPU wants the whole batch); the exact form runs
the batch whole, as Caffe does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import fx, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from caffe_bridge.ir import Layer, Net

PART_LIMIT = "caffe_part_limit"  # GraphModule.meta key: most samples per part (0: never split)
MICRO_BATCH = "caffe_micro_batch"  # GraphModule.meta key: samples per part in use (0: whole)
PART_BYTES = 32 * 2**20  # a part's largest blob (float32) fits a 32 MiB last-level cache
MAX_PART = 4  # fewer samples per part gain nothing more and lose batched-GEMM efficiency


def part_limit(net: Net, per_sample: Callable[[Layer, Net], bool]) -> int:
    """Samples per part for ``net`` (1 to ``MAX_PART``), or 0 when some layer mixes samples.

    ``per_sample(layer, net)`` is the registry's per-layer test.
    """
    layers = [layer for layer in net.layers if layer.type != "Input"]
    if not net.inputs or not layers or not all(per_sample(layer, net) for layer in layers):
        return 0
    largest = max(4 * math.prod(blob.shape[1:]) for blob in net.blobs.values())
    return max(1, min(MAX_PART, PART_BYTES // max(largest, 1)))


def _hooked(module: nn.Module) -> bool:
    """Forward hooks anywhere in ``module`` (or global ones): they must see the whole batch."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def splittable(module: nn.Module, args: tuple[object, ...], part: int) -> bool:
    """Whether ``module(*args)`` may run in parts of ``part`` samples: CPU tensors of one batch
    size above ``part``, no tracing or compiling, no forward hooks."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or is_fx_symbolic_tracing():
        return False
    if part <= 0 or not args or not all(isinstance(a, torch.Tensor) and a.dim() > 0
                                        and a.device.type == "cpu" for a in args):
        return False  # a GPU wants the whole batch: the parts are for a CPU's cache
    if len({a.shape[0] for a in args}) != 1 or args[0].shape[0] <= part:
        return False
    return not _hooked(module)


def joined(parts: list[object]) -> object:
    """The outputs of the parts concatenated along the batch axis (tensor, tuple or list)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)  # type: ignore[arg-type]
    if isinstance(first, tuple | list):
        return type(first)(joined(list(p)) for p in zip(*parts, strict=True))  # type: ignore
    raise TypeError(f"cannot join outputs of type {type(first).__name__}")


def run_in_parts(module: nn.Module, args: tuple[torch.Tensor, ...], part: int) -> object:
    """``module`` (its plain ``nn.Module`` call) on consecutive slices of ``part`` samples of
    ``args``, the outputs joined."""
    n = args[0].shape[0]
    return joined([nn.Module.__call__(module, *(a[i:i + part] for a in args))
                   for i in range(0, n, part)])


class CaffeGraphModule(fx.GraphModule):
    """A converted net's GraphModule; in the fast form (``meta[MICRO_BATCH]`` > 0) a larger
    batch runs in parts of that many samples (see the module docstring)."""

    def __call__(self, *args: object, **kwargs: object) -> object:
        part = int(self.meta.get(MICRO_BATCH, 0))
        if not kwargs and splittable(self, args, part):
            return run_in_parts(self, args, part)  # type: ignore[arg-type]
        return super().__call__(*args, **kwargs)
