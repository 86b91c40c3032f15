"""``caffe2torch eval``: score a Caffe net on a labelled image set, preprocessed as Caffe does.

The jobs live elsewhere: the scoring loop in :mod:`caffe_bridge.evaluate`, preprocessing in
:mod:`caffe_bridge.data`, torchrun groups in :mod:`caffe_bridge.distributed`, the published
SENet accuracies in :mod:`caffe_bridge.published`. This module reads the options, prints the
report and writes the JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import click
import numpy as np
import torch

from caffe_bridge.atomic import write_text
from caffe_bridge.cli_common import CONTEXT, find_weights, handle_errors, input_file
from caffe_bridge.data import (
    DataError,
    Preprocess,
    Sample,
    image_folder,
    make_preprocess,
    read_label_file,
)
from caffe_bridge.distributed import init_distributed, set_tf32, world
from caffe_bridge.evaluate import EvalError, EvalResult
from caffe_bridge.ir import Net
from caffe_bridge.options import check_preprocess_conflicts, preprocess_options
from caffe_bridge.published import PROTOCOL, Published, published_for

__all__ = ["EvalOptions", "eval_command"]


@dataclass(frozen=True)
class EvalOptions:
    """Everything ``eval`` was asked, by option name."""

    net: str
    weights: str | None
    val_dir: str
    labels: str | None
    class_order: str
    output: str | None
    batch_size: int
    workers: int
    device: str
    limit: int | None
    json_out: str | None
    allow_tf32: bool
    random_weights: bool
    resize: int
    crop: int
    mean: tuple[float, ...] | None
    mean_file: str | None
    scale: float | None
    channel_order: str
    exact: bool = False  # Caffe's order of operations instead of the fast default


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


def _published_lines(pub: Published, pre: Preprocess, mean_file: str | None) -> list[str]:
    used = {"resize": pre.resize, "crop": pre.crop, "channel_order": pre.channel_order,
            "scale": pre.scale, "mean_file": mean_file,
            "mean": None if pre.mean is None or pre.mean.ndim != 1
            else tuple(float(v) for v in pre.mean)}
    differ = [k for k, v in PROTOCOL.items() if used[k] != v]
    lines = [f"recognised  released {pub.name}; published numbers scored with: {pub.protocol}"]
    if differ:
        lines.append(f"note        this run differs from that protocol in: {', '.join(differ)}")
    return lines


def _net_and_classes(o: EvalOptions) -> tuple[Net, int]:
    """The definition (+ weights), checked for one image input; the number of classes."""
    from caffe_bridge.ir import load_net

    net = load_net(o.net, o.weights)
    if len(net.inputs) != 1:
        raise EvalError(f"eval needs a net with one image input, this one has "
                        f"{len(net.inputs)}", file=net.source)
    in_shape = next(iter(net.inputs.values()))
    if len(in_shape) != 4 or in_shape[1] != 3:
        raise EvalError(f"eval needs an N x 3 x H x W input, the net declares {in_shape}",
                        file=net.source)
    out_blob = net.value(o.output) if o.output else None
    if out_blob is None and len(net.outputs) != 1:
        raise EvalError(f"the net has {len(net.outputs)} outputs ({', '.join(net.outputs)}); "
                        f"choose one with --output", file=net.source)
    out_shape = net.blobs[out_blob or net.outputs[0]].shape
    return net, int(np.prod(out_shape[1:]))


def _samples(o: EvalOptions, classes: int) -> list[Sample]:
    samples = (read_label_file(o.labels, o.val_dir) if o.labels is not None
               else image_folder(o.val_dir)[0])
    for s in samples:
        if s.label >= classes:
            raise DataError(f"label {s.label} is outside the net's {classes} classes "
                            f"(0..{classes - 1})", file=s.origin)
    return samples


def _preprocess(o: EvalOptions, pub: Published | None, say: Any) -> Preprocess:
    mean = o.mean
    if mean is None and o.mean_file is None and pub is not None:
        mean = PROTOCOL["mean"]
        say(f"note: no mean given; using the published protocol's mean "
            f"{','.join(f'{v:g}' for v in mean)} (B,G,R)", err=True)
    return make_preprocess(resize=o.resize, crop=o.crop, mean=mean, mean_file=o.mean_file,
                           scale=o.scale, channel_order=o.channel_order)


def _report(o: EvalOptions, net: Net, classes: int, pub: Published | None, pre: Preprocess,
            result: EvalResult, dev: torch.device) -> str:
    lines = [f"net         {net.name or os.path.basename(net.source)} ({classes} classes)"]
    if o.weights is None:
        lines.append("weights     SEEDED RANDOM (--random-weights): the accuracy is meaningless")
    if pub is not None:
        lines += _published_lines(pub, pre, o.mean_file)
    p1 = f"   published {pub.top1:.2f} %" if pub else ""
    p5 = f"   published {pub.top5:.2f} %" if pub else ""
    return "\n".join(lines + [
        f"images      {result.count}",
        f"top-1       {result.top1:.3f} %{p1}",
        f"top-5       {result.top5:.3f} %{p5}",
        f"images/s    {result.images_per_s:.1f} ({dev.type}, {result.world_size} "
        f"process{'es' if result.world_size > 1 else ''}, {o.workers} loader workers each)",
    ])


def _json(o: EvalOptions, result: EvalResult, net: Net, pre: Preprocess, pub: Published | None,
          dev: torch.device) -> str:
    payload = {
        "net": net.name, "prototxt": os.fspath(o.net), "weights": o.weights,
        **result.to_dict(),
        "device": dev.type,
        "class_order": o.class_order,
        "preprocess": {
            "resize": pre.resize, "crop": pre.crop, "channel_order": pre.channel_order,
            "scale": pre.scale, "mean_file": o.mean_file,
            "mean": None if pre.mean is None or pre.mean.ndim != 1 else pre.mean.tolist(),
        },
        "published": None if pub is None else {
            "name": pub.name, "top1": pub.top1, "top5": pub.top5,
            "top1_error": pub.top1_error, "top5_error": pub.top5_error,
            "protocol": pub.protocol},
    }
    return json.dumps(payload, indent=2) + "\n"


def run_eval(o: EvalOptions) -> EvalResult:
    """Load, preprocess, score (all processes), report and write the JSON (rank 0)."""
    from caffe_bridge.build import build_module
    from caffe_bridge.data import ImageDataset
    from caffe_bridge.evaluate import evaluate

    created, dev = init_distributed(o.device)
    try:
        rank, _ = world()
        say = click.echo if rank == 0 else (lambda *a, **k: None)
        set_tf32(o.allow_tf32)
        net, classes = _net_and_classes(o)
        pub = published_for(net)
        pre = _preprocess(o, pub, say)
        in_shape = next(iter(net.inputs.values()))
        if tuple(in_shape[2:]) != (pre.crop, pre.crop):
            say(f"note: the net declares a {in_shape[2]}x{in_shape[3]} input; "
                f"evaluating {pre.crop}x{pre.crop} crops", err=True)
        perm = _class_order(o.class_order, classes)
        if perm is not None and pub is None:
            say("note: --class-order torchvision assumes the net outputs the ILSVRC2012 devkit "
                "order, as the released SENets do", err=True)
        if o.weights is None:
            from caffe_bridge.random_weights import net_with_random_weights

            say("warning: --random-weights: seeded random weights (the accuracy is "
                "meaningless)", err=True)
            net = net_with_random_weights(net, seed=0)
        model = build_module(net, [o.output] if o.output else None)
        if not o.exact:
            from caffe_bridge.fast import make_fast

            model = make_fast(model)
        result = evaluate(model, ImageDataset(_samples(o, classes), pre),
                          batch_size=o.batch_size, workers=o.workers, device=dev,
                          limit=o.limit, class_order_perm=perm, progress=True)
        if rank == 0:
            click.echo(_report(o, net, classes, pub, pre, result, dev))
            if o.json_out:
                write_text(o.json_out, _json(o, result, net, pre, pub, dev), force=True)
        return result
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


@click.command("eval", context_settings=CONTEXT)
@click.argument("net", metavar="NET.prototxt")
@click.argument("weights", metavar="[WEIGHTS.caffemodel]", required=False)
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
@click.option("--random-weights", is_flag=True,
              help="Score seeded random weights (a smoke test of the pipeline; the accuracy "
                   "is meaningless) instead of WEIGHTS / NET.caffemodel.")
@click.option("--exact", is_flag=True,
              help="Run the exact model (Caffe's order of operations) instead of the default "
                   "fast form (BatchNorm folded into convolutions, channels-last pooling; within "
                   "float32 rounding of the exact model).")
@handle_errors
def eval_command(**opts: Any) -> None:
    """Top-1/top-5 of NET on a labelled image set, preprocessed exactly as Caffe does.

    WEIGHTS defaults to NET.caffemodel beside the prototxt, as in every command. Several GPUs
    or machines: torchrun --nproc-per-node N -m caffe_bridge.evaluate ARGS.

    \b
    Examples:
      caffe2torch eval SE-ResNet-50.prototxt --val-dir val/ --labels ILSVRC2017_val.txt
      caffe2torch eval net.prototxt net.caffemodel --val-dir imagenet/val \\
          --class-order torchvision --mean 104,117,123 --json result.json
      torchrun --nproc-per-node 8 -m caffe_bridge.evaluate SE-ResNet-50.prototxt \\
          --val-dir val/ --labels ILSVRC2017_val.txt --device cuda
    """
    check_preprocess_conflicts(opts)
    input_file(opts["net"], "prototxt")
    opts["weights"] = find_weights(opts["net"], opts["weights"], opts["random_weights"],
                                   flag="--random-weights")
    if opts["device"] is None:
        opts["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    run_eval(EvalOptions(**opts))


if __name__ == "__main__":
    eval_command(prog_name="python -m caffe_bridge.evaluate_cli")
