"""torchrun process groups and CUDA float32 settings for evaluation and verification."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from caffe_bridge.errors import CaffeBridgeError


def set_tf32(allow: bool) -> None:
    """Allow or forbid TF32 in CUDA matmuls and cuDNN convolutions (forbidden: exact float32).

    Caffe computed in full float32; TF32's 10-bit mantissa moves logits by ~1e-3, enough to flip
    near-tied images.
    """
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> tuple[bool, torch.device]:
    """Join the torchrun group when launched by torchrun with several processes.

    Returns (whether this call created the group, this process's device): CUDA processes take
    ``cuda:LOCAL_RANK``; NCCL on CUDA, Gloo on CPU.
    """
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise CaffeBridgeError("--device cuda: CUDA is not available in this torch "
                                   "build/machine")
        dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return False, dev
    if not dist.is_available():
        raise CaffeBridgeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return True, dev
