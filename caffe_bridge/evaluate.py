"""Top-1/top-5 accuracy of a converted net on a labelled image set; one or several processes.

``caffe2torch eval NET.prototxt WEIGHTS --val-dir DIR --labels val.txt`` scores a net with
Caffe-identical preprocessing (:mod:`caffe_bridge.data`). Launched by torchrun
(``torchrun --nproc-per-node N -m caffe_bridge.evaluate ...``) every process scores the
samples ``rank::world_size`` (no sample repeated, none dropped: unlike torch's
``DistributedSampler``, nothing is padded), the correct counts are summed with ``all_reduce``
(NCCL on CUDA, Gloo on CPU) and rank 0 prints and writes the JSON: the counts equal those of one
process. (Batches are composed differently, so a logit may differ in its last bits; only an exact
tie between two classes could flip.)

On CUDA, TF32 is off unless ``--allow-tf32``: Caffe computed in full float32, and TF32's 10-bit
mantissa moves logits by ~1e-3, enough to flip near-tied images.

A released SENet definition is recognised by its structure (layer types, parameter shapes and
blob shapes; not its name) and its published accuracy is printed beside ours.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import click
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from caffe_bridge.data import (
    DataError,
    ImageDataset,
    Preprocess,
    Sample,
    image_folder,
    make_preprocess,
    opencv_fork_safe,
    read_label_file,
    worker_init,
)
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.ir import Net
from caffe_bridge.options import preprocess_options

__all__ = [
    "PUBLISHED",
    "EvalError",
    "EvalResult",
    "Published",
    "eval_command",
    "evaluate",
    "published_for",
    "set_tf32",
    "structure_fingerprint",
]


class EvalError(CaffeBridgeError):
    """The evaluation loop failed (an image, a label, or the model on a batch)."""

    remote = False  # True on the processes that only learnt that another process failed
    in_shard = False  # True where this process's own shard failed (it reports the cause)


# -- published accuracies ----------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """The accuracy a network's authors published, and how they scored it."""

    name: str
    top1_error: float  # percent
    top5_error: float
    protocol: str = "shorter side 256, centre crop 224, BGR, mean 104,117,123, no scale"

    @property
    def top1(self) -> float:
        return round(100.0 - self.top1_error, 2)

    @property
    def top5(self) -> float:
        return round(100.0 - self.top5_error, 2)


# The released SENet deploy definitions, keyed by structure_fingerprint(). Errors are the
# single-crop ImageNet-2012 validation errors published with the Caffe SENet models.
PUBLISHED: dict[str, Published] = {
    "01b4635606cf24e27fa7": Published("SE-BN-Inception", 23.62, 7.04),
    "0e9fdba65fef5440fe3f": Published("SE-ResNet-50", 22.37, 6.36),
    "09e39fb92213716206e6": Published("SE-ResNet-101", 21.75, 5.72),
    "9330125a094fa1c1b311": Published("SE-ResNet-152", 21.34, 5.54),
    "21ba0ed11a2c621302ec": Published("SE-ResNeXt-50 (32x4d)", 20.97, 5.54),
    "3e811828992845bf0353": Published("SE-ResNeXt-101 (32x4d)", 19.81, 4.96),
    "81d5df626e15b147fc12": Published("SENet-154", 18.68, 4.47),
}
# How the published numbers were scored (see Published.protocol).
PROTOCOL = {"resize": 256, "crop": 224, "mean": (104.0, 117.0, 123.0), "mean_file": None,
            "scale": None, "channel_order": "bgr"}


def structure_fingerprint(net: Net) -> str:
    """A short hash of the net's structure: per layer its type, group, parameter and top shapes.

    Names, formatting and the batch dimension do not enter, so a reformatted or renamed copy of
    a definition keeps its fingerprint; any change of architecture changes it.
    """
    lines = []
    for layer in net.layers:
        group = layer.param.convolution_param.group if layer.type == "Convolution" else 0
        params = [list(s) for s in layer.param_shapes]
        tops = [list(net.blobs[t].shape[1:]) for t in layer.tops]
        lines.append(f"{layer.type}|{group}|{params}|{tops}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]


def published_for(net: Net) -> Published | None:
    """The published accuracy of ``net`` if it is one of the released SENet definitions."""
    return PUBLISHED.get(structure_fingerprint(net))


# -- the loop ----------------------------------------------------------------------------------


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


def set_tf32(allow: bool) -> None:
    """Allow or forbid TF32 in CUDA matmuls and cuDNN convolutions (forbidden: exact float32)."""
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_perm(perm: Sequence[int] | np.ndarray | None) -> torch.Tensor | None:
    if perm is None:
        return None
    arr = np.asarray(perm)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or \
            not np.array_equal(np.sort(arr), np.arange(arr.size)):
        raise EvalError("class order must be a permutation of 0 .. classes-1")
    return torch.from_numpy(arr.astype(np.int64))


def _unpack(batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if len(batch) == 3:
        x, y, errors = batch
        return x, y, [e for e in errors if e]
    x, y = batch
    return x, y, []


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
    if batch_size < 1:
        raise EvalError(f"batch size must be at least 1, not {batch_size}")
    if workers < 0:
        raise EvalError(f"workers must be 0 or more, not {workers}")
    if limit is not None and limit < 1:
        raise EvalError(f"limit must be at least 1, not {limit}")
    perm = _check_perm(class_order_perm)
    rank, world = _world()
    device = torch.device(device)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    shard = list(range(rank, total, world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, shard), batch_size=batch_size, shuffle=False,
        num_workers=workers, pin_memory=device.type == "cuda",
        worker_init_fn=worker_init if workers else None,
    )
    model = model.to(device).eval()
    if perm is not None:
        perm = perm.to(device)
    correct1 = correct5 = seen = 0
    error = ""
    bar = tqdm(total=len(shard), unit="img", desc="eval", file=sys.stderr, dynamic_ncols=True,
               disable=not progress or rank != 0)
    start = time.perf_counter()
    with torch.inference_mode(), bar, opencv_fork_safe(workers > 0):
        for batch in loader:
            x, y, errors = _unpack(batch)
            if errors:
                error = errors[0]
                break
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            try:
                out = model(x)
            except (RuntimeError, ValueError) as err:
                error = (f"the model failed on a batch of shape {tuple(x.shape)}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else err!r}")
                break
            if isinstance(out, (tuple, list)):
                error = f"the model returns {len(out)} outputs; evaluate needs one (class scores)"
                break
            scores = out.reshape(out.shape[0], -1)
            classes = scores.shape[1]
            if perm is not None:
                if perm.numel() != classes:
                    error = f"class order maps {perm.numel()} classes, the net has {classes}"
                    break
                scores = scores[:, perm]
            bad = (y < 0) | (y >= classes)
            if bool(bad.any()):
                label = int(y[bad][0])
                error = f"label {label} is outside the net's {classes} classes (0..{classes - 1})"
                break
            top = scores.topk(min(5, classes), dim=1).indices
            hits = top == y[:, None]
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(dim=1).sum())
            seen += int(y.numel())
            bar.update(int(y.numel()))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    failed = bool(error)
    if world > 1:
        on = device if dist.get_backend() == "nccl" else torch.device("cpu")
        counts = torch.tensor([correct1, correct5, seen, int(failed)], dtype=torch.int64, device=on)
        dist.all_reduce(counts)
        slowest = torch.tensor([seconds], dtype=torch.float64, device=on)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        correct1, correct5, seen, failures = (int(v) for v in counts.tolist())
        seconds = float(slowest.item())
        if failures and not failed:
            err = EvalError("evaluation failed in another process (see its message)")
            err.remote = True
            raise err
    if failed:
        err = EvalError(error)
        err.in_shard = world > 1
        raise err
    if seen == 0:
        raise EvalError("no images to evaluate")
    return EvalResult(
        top1=100.0 * correct1 / seen, top5=100.0 * correct5 / seen, count=seen,
        correct1=correct1, correct5=correct5, seconds=seconds,
        images_per_s=seen / seconds if seconds > 0 else math.inf, world_size=world,
    )


# -- the command -------------------------------------------------------------------------------


def _class_order(order: str, classes: int) -> np.ndarray | None:
    """``class_order_perm`` for ``--class-order``: ``torchvision`` = net outputs in ILSVRC2012
    devkit order (the released SENets), labels in sorted-synset order (ImageFolder, torchvision).
    """
    if order == "caffe":
        return None
    from caffe_bridge.models.class_order import CLASSES, sorted_to_senet

    if classes != CLASSES:
        raise EvalError(f"--class-order {order} maps the {CLASSES} ImageNet classes; the net "
                        f"has {classes}")
    return sorted_to_senet()


def _init_distributed(device: str) -> tuple[bool, torch.device]:
    """Join the torchrun group when launched by torchrun with several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise EvalError("--device cuda: CUDA is not available in this torch build/machine")
        dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return False, dev
    if not dist.is_available():
        raise EvalError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return True, dev


def _published_lines(pub: Published, pre: Preprocess, opts: dict[str, Any]) -> list[str]:
    used = {"resize": pre.resize, "crop": pre.crop, "channel_order": pre.channel_order,
            "scale": pre.scale, "mean_file": opts["mean_file"],
            "mean": None if pre.mean is None or pre.mean.ndim != 1
            else tuple(float(v) for v in pre.mean)}
    differ = [k for k, v in PROTOCOL.items() if used[k] != v]
    lines = [f"recognised  released {pub.name}; published numbers scored with: {pub.protocol}"]
    if differ:
        lines.append(f"note        this run differs from that protocol in: {', '.join(differ)}")
    return lines


def _net_and_classes(opts: dict[str, Any]) -> tuple[Net, int]:
    """The definition (+ weights), checked for one image input; the number of classes."""
    from caffe_bridge.ir import load_net

    net = load_net(opts["net"], opts["weights"])
    if len(net.inputs) != 1:
        raise EvalError(f"eval needs a net with one image input, this one has "
                        f"{len(net.inputs)}", file=net.source)
    in_shape = next(iter(net.inputs.values()))
    if len(in_shape) != 4 or in_shape[1] != 3:
        raise EvalError(f"eval needs an N x 3 x H x W input, the net declares {in_shape}",
                        file=net.source)
    out_blob = net.value(opts["output"]) if opts["output"] else None
    if out_blob is None and len(net.outputs) != 1:
        raise EvalError(f"the net has {len(net.outputs)} outputs ({', '.join(net.outputs)}); "
                        f"choose one with --output", file=net.source)
    out_shape = net.blobs[out_blob or net.outputs[0]].shape
    return net, int(np.prod(out_shape[1:]))


def _samples(opts: dict[str, Any], classes: int) -> list[Sample]:
    if opts["labels"] is not None:
        samples = read_label_file(opts["labels"], opts["val_dir"])
    else:
        samples, _ = image_folder(opts["val_dir"])
    for s in samples:
        if s.label >= classes:
            raise DataError(f"label {s.label} is outside the net's {classes} classes "
                            f"(0..{classes - 1})", file=s.origin)
    return samples


def _run(opts: dict[str, Any]) -> None:
    from caffe_bridge.build import build_module

    created, dev = _init_distributed(opts["device"])
    try:
        rank, world = _world()
        say = click.echo if rank == 0 else (lambda *a, **k: None)
        set_tf32(opts["allow_tf32"])
        net, classes = _net_and_classes(opts)
        pub = published_for(net)
        mean, mean_file = opts["mean"], opts["mean_file"]
        if mean is None and mean_file is None and pub is not None:
            mean = PROTOCOL["mean"]
            say(f"note: no mean given; using the published protocol's mean "
                f"{','.join(f'{v:g}' for v in mean)} (B,G,R)", err=True)
        pre = make_preprocess(resize=opts["resize"], crop=opts["crop"], mean=mean,
                              mean_file=mean_file, scale=opts["scale"],
                              channel_order=opts["channel_order"])
        in_shape = next(iter(net.inputs.values()))
        if tuple(in_shape[2:]) != (pre.crop, pre.crop):
            say(f"note: the net declares a {in_shape[2]}x{in_shape[3]} input; "
                f"evaluating {pre.crop}x{pre.crop} crops", err=True)
        samples = _samples(opts, classes)
        perm = _class_order(opts["class_order"], classes)
        if perm is not None and pub is None:
            say("note: --class-order torchvision assumes the net outputs the ILSVRC2012 devkit "
                "order, as the released SENets do", err=True)
        if opts["weights"] is None and any(layer.param_shapes for layer in net.layers):
            from caffe_bridge.random_weights import net_with_random_weights

            say("warning: no WEIGHTS given: seeded random weights (the accuracy is meaningless)",
                err=True)
            net = net_with_random_weights(net, seed=0)
        model = build_module(net, [opts["output"]] if opts["output"] else None)
        result = evaluate(model, ImageDataset(samples, pre), batch_size=opts["batch_size"],
                          workers=opts["workers"], device=dev, limit=opts["limit"],
                          class_order_perm=perm, progress=True)
        if rank != 0:
            return
        lines = [f"net         {net.name or os.path.basename(net.source)} ({classes} classes)"]
        if pub is not None:
            lines += _published_lines(pub, pre, opts)
        p1 = f"   published {pub.top1:.2f} %" if pub else ""
        p5 = f"   published {pub.top5:.2f} %" if pub else ""
        lines += [
            f"images      {result.count}",
            f"top-1       {result.top1:.3f} %{p1}",
            f"top-5       {result.top5:.3f} %{p5}",
            f"images/s    {result.images_per_s:.1f} ({dev.type}, {world} "
            f"process{'es' if world > 1 else ''}, {opts['workers']} loader workers each)",
        ]
        click.echo("\n".join(lines))
        if opts["json_out"]:
            _write_json(opts["json_out"], result, net, pre, opts, pub, dev)
    finally:
        if created:
            dist.destroy_process_group()


def _write_json(path: str, result: EvalResult, net: Net, pre: Preprocess, opts: dict[str, Any],
                pub: Published | None, dev: torch.device) -> None:
    payload = {
        "net": net.name, "prototxt": os.fspath(opts["net"]), "weights": opts["weights"],
        **result.to_dict(),
        "device": dev.type,
        "class_order": opts["class_order"],
        "preprocess": {
            "resize": pre.resize, "crop": pre.crop, "channel_order": pre.channel_order,
            "scale": pre.scale, "mean_file": opts["mean_file"],
            "mean": None if pre.mean is None or pre.mean.ndim != 1 else pre.mean.tolist(),
        },
        "published": None if pub is None else {
            "name": pub.name, "top1": pub.top1, "top5": pub.top5,
            "top1_error": pub.top1_error, "top5_error": pub.top5_error,
            "protocol": pub.protocol},
    }
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
    except OSError as err:
        raise EvalError(f"cannot write JSON: {err.strerror or err}", file=path) from None


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"],
                                         "max_content_width": 100})
@click.argument("net", type=click.Path(exists=True, dir_okay=False))
@click.argument("weights", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--val-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Image root: label-file paths are relative to it; without --labels, an "
                   "ImageFolder tree (sorted class directories -> 0, 1, ...).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Caffe label list: '<relative/path> <int label>' per line "
                   "(e.g. ILSVRC2017_val.txt).")
@preprocess_options
@click.option("--class-order", type=click.Choice(["caffe", "torchvision"]), default="caffe",
              show_default=True,
              help="Order of the labels. caffe: the net's own output order (e.g. "
                   "ILSVRC2017_val.txt for SENets). torchvision: sorted-synset order (an "
                   "ImageFolder of synset dirs) for a net trained in ILSVRC2012 devkit order, "
                   "as the released SENets.")
@click.option("--output", default=None, metavar="BLOB",
              help="Output blob holding the class scores (default: the net's only output).")
@click.option("--batch-size", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=min(4, os.cpu_count() or 1),
              show_default=True, help="DataLoader worker processes (per process).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Default: cuda when available, else cpu. Under torchrun: cuda:LOCAL_RANK.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Score only the first N images of the list.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Also write the result as JSON (rank 0).")
@click.option("--allow-tf32", is_flag=True,
              help="Let CUDA use TF32 (faster, not float32-exact; off by default).")
def eval_command(**opts: Any) -> None:
    """Top-1/top-5 of NET (+ WEIGHTS) on a labelled image set, preprocessed as Caffe does.

    Several GPUs or machines: torchrun --nproc-per-node N -m caffe_bridge.evaluate ARGS.
    """
    if opts["device"] is None:
        opts["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        _run(opts)
    except CaffeBridgeError as err:
        rank = int(os.environ.get("RANK", "0") or 0)
        if rank == 0 or (isinstance(err, EvalError) and err.in_shard):
            prefix = f"[rank {rank}] " if rank else ""
            click.echo(f"error: {prefix}{err}", err=True)
        click.get_current_context().exit(2)


if __name__ == "__main__":
    eval_command(prog_name="python -m caffe_bridge.evaluate")
