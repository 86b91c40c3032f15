"""``caffe2torch demo``: the whole job on an embedded SE-ResNet-50, no files needed.

Steps: the released SE-ResNet-50 definition is written from the idiomatic model
(``models.se_resnet50`` through ``to_caffe``'s layout), seeded random weights are drawn for it
(:func:`caffe_bridge.random_weights.random_weights`: BatchNorm statistics calibrated on seeded
inputs so activations stay O(1), stored with a moving-average factor != 1 as real caffemodels
do), and the two Caffe files are read back twice: by the generic converter
(``caffe_bridge.convert``,
one module per layer) and by ``models.from_caffe`` (the idiomatic model). Both are compared on
the logits with an independent reference, OpenCV's own Caffe importer (with its Axpy and
Winograd traps corrected, :func:`caffe_bridge.opencv_reference.opencv_forward`), when OpenCV is
installed; without it only the two conversions are compared, which the report says.

Exit codes: 0 every agreement within the tolerance (1e-5 relative), 1 one is not, 2 error.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from caffe_bridge.cli_common import CONTEXT, EXIT_MISMATCH, handle_errors
from caffe_bridge.errors import CaffeBridgeError

__all__ = [
    "ARCH",
    "TOLERANCE",
    "Agreement",
    "DemoResult",
    "demo_command",
    "format_report",
    "run_demo",
]

ARCH = "SE-ResNet-50"
TOLERANCE = 1e-5
BATCH = 2


@dataclass
class Agreement:
    """One comparison of two implementations' logits."""

    ours: str
    reference: str
    rel_err: float  # max |ours - reference| / max |reference|
    top5_same: int  # samples whose top-5 classes (and their order) are identical
    samples: int

    @property
    def ok(self) -> bool:
        return self.rel_err <= TOLERANCE


@dataclass
class DemoResult:
    """What ``run_demo`` built, wrote, measured and compared."""

    seed: int
    prototxt: Path
    caffemodel: Path
    sizes: dict[str, int]
    caffe_layers: int
    fx_modules: int
    parameters: int
    recognised: str
    bn_factor: float
    reference: str | None  # None: no independent reference was available
    no_reference_reason: str | None
    agreements: list[Agreement]
    timings: list[tuple[str, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.agreements)


def _opencv_missing() -> str | None:
    """Why OpenCV's Caffe importer cannot serve as the reference, or None when it can."""
    from caffe_bridge.opencv_import import import_cv2

    try:
        import_cv2("the reference", dnn=True)
    except CaffeBridgeError as err:
        return str(err)
    return None


def _human(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@contextlib.contextmanager
def _workdir(out: str | os.PathLike[str] | None) -> Iterator[Path]:
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="caffe2torch_demo_") as tmp:
        yield Path(tmp)


class _Steps:
    """Announce each step on ``say`` and time it."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def __call__(self, label: str, message: str) -> Iterator[None]:
        self.say(message)
        start = time.perf_counter()
        yield
        self.timings.append((label, time.perf_counter() - start))


def _write_files(proto: Path, caffemodel: Path, seed: int, force: bool, step: _Steps) -> Any:
    """Write the SE-ResNet-50 definition and seeded weights (atomically); return the Net."""
    from caffe_bridge.atomic import atomic_outputs
    from caffe_bridge.caffemodel import write_caffemodel
    from caffe_bridge.ir import load_net
    from caffe_bridge.models.senet_caffe import ARCHITECTURES, caffe_prototxt_text
    from caffe_bridge.random_weights import random_weights

    with step("build", f"building {ARCH} (caffe_bridge.models.se_resnet50) ..."):
        text = caffe_prototxt_text(ARCHITECTURES[ARCH]())
    with atomic_outputs([proto, caffemodel], force=force) as (tmp_proto, tmp_model):
        tmp_proto.write_text(text, encoding="utf-8")
        net = load_net(tmp_proto)
        with step("weights", f"drawing seeded random weights (seed {seed}), calibrating "
                  "BatchNorm ..."):
            weights = random_weights(net, seed=seed)
        with step("write", f"writing {proto.name} and {caffemodel.name} ..."):
            types = {layer.name: layer.type for layer in net.layers}
            write_caffemodel(tmp_model, weights, net.name, types={k: types[k] for k in weights})
    return net


def _logits(proto: Path, caffemodel: Path, x: Any, opencv: bool,
            step: _Steps) -> tuple[dict[str, Any], Any, Any]:
    """Logits of the generic and idiomatic conversions (and OpenCV's): (logits, both models)."""
    import torch

    from caffe_bridge.build import convert
    from caffe_bridge.models.senet_caffe import from_caffe

    with step("convert", "converting back: generic (caffe_bridge.convert) ..."):
        generic = convert(proto, caffemodel, outputs=["classifier"])
    with step("from_caffe", "converting back: idiomatic (models.from_caffe) ..."):
        idiomatic = from_caffe(proto, caffemodel)
    with torch.no_grad():
        with step("run generic", "running the generic conversion ..."):
            logits = {"generic": generic(torch.from_numpy(x)).numpy()}
        with step("run idiomatic", "running the idiomatic model ..."):
            logits["idiomatic"] = idiomatic(torch.from_numpy(x)).numpy()
    if opencv:
        from caffe_bridge.opencv_reference import opencv_forward

        with step("OpenCV", "running OpenCV's Caffe importer (the reference) ..."):
            got = opencv_forward(proto, caffemodel, {"data": x}, ["classifier"])
            logits["OpenCV"] = got["classifier"].reshape(BATCH, -1)
    return logits, generic, idiomatic


def _agree(logits: dict[str, Any], a: str, b: str) -> Agreement:
    import numpy as np

    from caffe_bridge.numeric import rel_err

    ours, ref = logits[a].astype(np.float64), logits[b].astype(np.float64)
    top_a, top_b = np.argsort(-ours, axis=1)[:, :5], np.argsort(-ref, axis=1)[:, :5]
    same = int(np.all(top_a == top_b, axis=1).sum())
    return Agreement(a, b, rel_err(ours, ref), same, ours.shape[0])


def run_demo(
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    use_opencv: bool = True,
) -> DemoResult:
    """Build, write, convert both ways and compare (see the module docstring).

    ``out`` keeps the two Caffe files there (created if missing; existing files are never
    replaced unless ``force``); by default they live in a temporary folder removed afterwards.
    ``use_opencv=False`` skips the OpenCV reference even when it is installed.
    """
    from caffe_bridge.atomic import check_target
    from caffe_bridge.models.senet_caffe import recognise
    from caffe_bridge.random_weights import BN_FACTOR, random_inputs

    step = _Steps(progress or (lambda _msg: None))
    if out is not None and Path(out).is_dir():  # refuse to clobber before any work
        for suffix in (".prototxt", ".caffemodel"):
            check_target(Path(out) / f"{ARCH}{suffix}", force=force)
    missing = _opencv_missing() if use_opencv else "the OpenCV reference was switched off"
    with _workdir(out) as where:
        proto, caffemodel = where / f"{ARCH}.prototxt", where / f"{ARCH}.caffemodel"
        net = _write_files(proto, caffemodel, seed, force, step)
        sizes = {proto.name: proto.stat().st_size, caffemodel.name: caffemodel.stat().st_size}
        x = random_inputs(net, seed=seed + 2, batch=BATCH)["data"]
        logits, generic, idiomatic = _logits(proto, caffemodel, x, missing is None, step)
    pairs = [("generic", "OpenCV"), ("idiomatic", "OpenCV")] if missing is None else []
    pairs.append(("generic", "idiomatic"))
    return DemoResult(
        seed=seed,
        prototxt=proto,
        caffemodel=caffemodel,
        sizes=sizes,
        caffe_layers=sum(1 for layer in net.layers if layer.type != "Input"),
        fx_modules=sum(1 for _ in generic.children()),
        parameters=sum(p.numel() for p in idiomatic.parameters()),
        recognised=recognise(net),
        bn_factor=BN_FACTOR,
        reference=None if missing else "OpenCV",
        no_reference_reason=missing,
        agreements=[_agree(logits, a, b) for a, b in pairs],
        timings=step.timings,
    )


def format_report(r: DemoResult, kept: bool) -> str:
    """The report printed on stdout."""
    where = str(r.prototxt.parent) if kept else "a temporary folder, removed afterwards"
    lines = [
        f"caffe2torch demo: {ARCH}, seeded random weights (seed {r.seed})",
        "",
        f"model      caffe_bridge.models.se_resnet50, {r.parameters / 1e6:.2f}M learnable "
        "parameters",
        f"Caffe      released layout, {r.caffe_layers} layers; weights seeded, BatchNorm "
        "calibrated (O(1)",
        f"           activations), stored with moving-average factor {r.bn_factor:g}",
        f"files      in {where}:",
        *(f"             {name:<28} {_human(size):>9}" for name, size in r.sizes.items()),
        f"generic    caffe_bridge.convert -> torch.fx module, {r.fx_modules} submodules",
        f"idiomatic  caffe_bridge.models.from_caffe -> SENet, recognised as {r.recognised} "
        "by structure",
    ]
    if r.reference is not None:
        lines.append("reference  OpenCV's Caffe importer (cv2.dnn; Axpy operands corrected, "
                     "Winograd off)")
    else:
        lines += [
            f"reference  NONE: {r.no_reference_reason}.",
            "           No independent reference was available: only our two conversions are "
            "compared",
            "           (install opencv-python-headless 4.x for the OpenCV reference).",
        ]
    lines += [
        "",
        f"agreement on the logits (blob 'classifier') of {BATCH} seeded 224x224 inputs;",
        "rel err = max|a - b| / max|b|, tolerance " f"{TOLERANCE:g}:",
    ]
    width = max(len(f"{a.ours} vs {a.reference}") for a in r.agreements)
    for a in r.agreements:
        pair = f"{a.ours} vs {a.reference}"
        lines.append(f"  {pair:<{width}}  rel err {a.rel_err:.2e}  top-5 identical "
                     f"{a.top5_same}/{a.samples}  {'ok' if a.ok else 'EXCEEDS TOLERANCE'}")
    lines += ["", "timings (s):"]
    for i in range(0, len(r.timings), 4):
        lines.append("  " + "  ".join(f"{k} {v:.2f}" for k, v in r.timings[i : i + 4]))
    total = sum(v for _, v in r.timings)
    if r.ok:
        verdict = "OK: every agreement within" if r.reference else "OK (no independent " \
            "reference): generic and idiomatic agree within"
        lines.append(f"total {total:.1f} s.  {verdict} {TOLERANCE:g}")
    else:
        lines.append(f"total {total:.1f} s.  FAILED: an agreement exceeds {TOLERANCE:g}")
    return "\n".join(lines)


@click.command("demo", context_settings=CONTEXT)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the random weights and inputs.")
@click.option("--out", "out", metavar="DIR", type=click.Path(file_okay=False),
              help="Keep the .prototxt and .caffemodel in DIR (created if missing).")
@click.option("--force", is_flag=True, help="Overwrite existing files in --out.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
@handle_errors
def demo_command(seed: int, out: str | None, force: bool, quiet: bool) -> None:
    """Build SE-ResNet-50, write it as Caffe files, convert them back two ways, check them.

    The files are read back by the generic converter and by the idiomatic SENet model, and
    both are compared with OpenCV's Caffe importer (when installed). Needs no files.
    Exit codes: 0 all within 1e-5 relative, 1 an agreement is not, 2 error.

    \b
    Example:
      caffe2torch demo --seed 1 --out demo/
    """

    def progress(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    result = run_demo(seed, out, force=force, progress=progress)
    click.echo(format_report(result, kept=out is not None))
    if not result.ok:
        sys.exit(EXIT_MISMATCH)


if __name__ == "__main__":
    demo_command(prog_name="python -m caffe_bridge.demo")
