"""Click options shared by several commands (kept free of torch so ``--help`` stays fast)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def mean_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from caffe_bridge.data import parse_mean
    from caffe_bridge.errors import CaffeBridgeError

    try:
        return parse_mean(value)
    except CaffeBridgeError as err:
        raise click.BadParameter(err.message) from None


def preprocess_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The preprocessing flags, shared by ``eval`` and ``verify --images`` (one pipeline)."""
    options = [
        click.option("--mean", callback=mean_callback, metavar="B,G,R",
                     help="Per-channel mean in B,G,R order (default: none; 104,117,123 for a "
                          "recognised released SENet)."),
        click.option("--mean-file", type=click.Path(exists=True, dir_okay=False),
                     help="Mean image (.binaryproto), centre-cropped to the crop size."),
        click.option("--scale", type=float, help="Multiply after mean subtraction (e.g. 0.017)."),
        click.option("--channel-order", type=click.Choice(["bgr", "rgb"]), default="bgr",
                     show_default=True, help="Channel order the net expects (mean stays B,G,R)."),
        click.option("--resize", type=click.IntRange(min=0), default=256, show_default=True,
                     help="Shorter side after resizing (OpenCV bilinear); 0 keeps the image size."),
        click.option("--crop", type=click.IntRange(min=1), default=224, show_default=True,
                     help="Centre crop size."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def check_preprocess_conflicts(preprocess: dict[str, Any]) -> None:
    """Conflicting preprocessing flags are usage errors (before any work)."""
    if preprocess.get("mean") is not None and preprocess.get("mean_file") is not None:
        raise click.UsageError("give either --mean or --mean-file, not both")
