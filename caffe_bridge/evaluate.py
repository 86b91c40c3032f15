"""Top-1/top-5 accuracy of a model on a labelled image set; one or several processes.

:func:`evaluate` is the scoring loop. Under an initialised ``torch.distributed`` group (torchrun,
see :mod:`caffe_bridge.distributed`) every process scores the samples ``rank::world_size`` (no
sample repeated, none dropped: unlike torch's ``DistributedSampler``, nothing is padded) and the
correct counts are summed with ``all_reduce``: the counts equal those of one process. (Batches
are composed differently, so a logit may differ in its last bits; only an exact tie between two
classes could flip.) The command is :mod:`caffe_bridge.evaluate_cli`; ``python -m
caffe_bridge.evaluate`` (and ``torchrun ... -m caffe_bridge.evaluate``) runs it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from caffe_bridge.data import opencv_fork_safe, worker_init
from caffe_bridge.distributed import set_tf32, world
from caffe_bridge.errors import CaffeBridgeError

__all__ = ["EvalError", "EvalResult", "evaluate", "set_tf32"]


class EvalError(CaffeBridgeError):
    """The evaluation loop failed (an image, a label, or the model on a batch)."""

    remote = False  # True on the processes that only learnt that another process failed
    in_shard = False  # True where this process's own shard failed (it reports the cause)


@dataclass(frozen=True)
class EvalResult:
    """Accuracies in percent, counts summed over all processes, throughput of the whole run."""

    top1: float
    top5: float
    count: int
    correct1: int
    correct5: int
    seconds: float
    images_per_s: float
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Tally:
    correct1: int = 0
    correct5: int = 0
    seen: int = 0
    error: str = ""


def _check_perm(perm: Sequence[int] | np.ndarray | None) -> torch.Tensor | None:
    if perm is None:
        return None
    arr = np.asarray(perm)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or \
            not np.array_equal(np.sort(arr), np.arange(arr.size)):
        raise EvalError("class order must be a permutation of 0 .. classes-1")
    return torch.from_numpy(arr.astype(np.int64))


def _check_args(batch_size: int, workers: int, limit: int | None) -> None:
    if batch_size < 1:
        raise EvalError(f"batch size must be at least 1, not {batch_size}")
    if workers < 0:
        raise EvalError(f"workers must be 0 or more, not {workers}")
    if limit is not None and limit < 1:
        raise EvalError(f"limit must be at least 1, not {limit}")


def _unpack(batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if len(batch) == 3:
        x, y, errors = batch
        return x, y, [e for e in errors if e]
    x, y = batch
    return x, y, []


def _scores(model: nn.Module, x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor | str:
    """The class scores of a batch (reordered by ``perm``), or why there are none."""
    try:
        out = model(x)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        return f"the model failed on a batch of shape {tuple(x.shape)}: {first}"
    if isinstance(out, (tuple, list)):
        return f"the model returns {len(out)} outputs; evaluate needs one (class scores)"
    scores = out.reshape(out.shape[0], -1)
    if perm is not None:
        if perm.numel() != scores.shape[1]:
            return f"class order maps {perm.numel()} classes, the net has {scores.shape[1]}"
        scores = scores[:, perm]
    return scores


def _score_batch(tally: _Tally, scores: torch.Tensor, y: torch.Tensor) -> None:
    classes = scores.shape[1]
    bad = (y < 0) | (y >= classes)
    if bool(bad.any()):
        tally.error = (f"label {int(y[bad][0])} is outside the net's {classes} classes "
                       f"(0..{classes - 1})")
        return
    hits = scores.topk(min(5, classes), dim=1).indices == y[:, None]
    tally.correct1 += int(hits[:, 0].sum())
    tally.correct5 += int(hits.any(dim=1).sum())
    tally.seen += int(y.numel())


def _sum_over_processes(tally: _Tally, seconds: float, device: torch.device) -> float:
    """Sum the counts over the group (slowest process's time); raise if another one failed."""
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    counts = torch.tensor([tally.correct1, tally.correct5, tally.seen, int(bool(tally.error))],
                          dtype=torch.int64, device=on)
    dist.all_reduce(counts)
    slowest = torch.tensor([seconds], dtype=torch.float64, device=on)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    tally.correct1, tally.correct5, tally.seen, failures = (int(v) for v in counts.tolist())
    if failures and not tally.error:
        err = EvalError("evaluation failed in another process (see its message)")
        err.remote = True
        raise err
    return float(slowest.item())


def _loader(subset: torch.utils.data.Dataset, batch_size: int, workers: int,
            device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", worker_init_fn=worker_init if workers else None)


def evaluate(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 50,
    workers: int = 0,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    class_order_perm: Sequence[int] | np.ndarray | None = None,
    *,
    progress: bool = False,
) -> EvalResult:
    """Top-1/top-5 of ``model`` over ``dataset`` (items ``(CHW image, label[, error])``).

    The first ``limit`` samples are scored. ``class_order_perm[j]`` is the model output that
    stands for class ``j`` of the labels (outputs are reordered before scoring). Top-k with ``k``
    at or above the number of classes counts every valid label as correct. Under an initialised
    ``torch.distributed`` group each process scores ``rank::world_size`` and counts are summed.
    """
    _check_args(batch_size, workers, limit)
    perm = _check_perm(class_order_perm)
    rank, size = world()
    device = torch.device(device)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    shard = list(range(rank, total, size))
    loader = _loader(torch.utils.data.Subset(dataset, shard), batch_size, workers, device)
    model = model.to(device).eval()
    perm = None if perm is None else perm.to(device)
    tally = _Tally()
    bar = tqdm(total=len(shard), unit="img", desc="eval", file=sys.stderr, dynamic_ncols=True,
               disable=not progress or rank != 0)
    start = time.perf_counter()
    with torch.inference_mode(), bar, opencv_fork_safe(workers > 0):
        for batch in loader:
            x, y, errors = _unpack(batch)
            scores = errors[0] if errors else _scores(model, x.to(device, non_blocking=True), perm)
            if isinstance(scores, str):
                tally.error = scores
                break
            _score_batch(tally, scores, y.to(device, non_blocking=True))
            if tally.error:
                break
            bar.update(int(y.numel()))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if size > 1:
        seconds = _sum_over_processes(tally, seconds, device)
    if tally.error:
        err = EvalError(tally.error)
        err.in_shard = size > 1
        raise err
    if tally.seen == 0:
        raise EvalError("no images to evaluate")
    return EvalResult(
        top1=100.0 * tally.correct1 / tally.seen, top5=100.0 * tally.correct5 / tally.seen,
        count=tally.seen, correct1=tally.correct1, correct5=tally.correct5, seconds=seconds,
        images_per_s=tally.seen / seconds if seconds > 0 else math.inf, world_size=size,
    )


if __name__ == "__main__":  # python -m caffe_bridge.evaluate / torchrun -m caffe_bridge.evaluate
    from caffe_bridge.evaluate_cli import eval_command

    eval_command(prog_name="python -m caffe_bridge.evaluate")
