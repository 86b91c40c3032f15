"""``caffe2torch``: inspect, convert, export and verify Caffe models from the command line.

Exit codes: 0 success; 1 ``verify`` found a blob beyond tolerance; 2 any error (printed as one
line ``error: <message>`` on stderr). The only module of the package that prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from caffe_bridge.cli_common import (
    CONTEXT,
    EXIT_MISMATCH,
    Progress,
    add_input_shape_option,
    find_weights,
    handle_errors,
    input_file,
    input_shape_option,
    quiet_option,
)
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.options import (
    check_preprocess_conflicts,
    mean_callback,
    preprocess_options,
)

if TYPE_CHECKING:
    from caffe_bridge.summary import NetSummary

# ------------------------------------------------------------------ plumbing


def _quiet_gc_import() -> None:
    """Import torch (through the codegen) with the cyclic GC off, then freeze what it made.

    Importing torch allocates much and frees little, and every later full collection would scan
    its objects again: together about 0.15 s of a convert (a command: the process ends after).
    Only in a fresh process (torch not imported yet), not when the CLI runs inside a program.
    """
    import gc

    if "torch" in sys.modules:
        return
    gc.disable()
    try:
        import caffe_bridge.codegen  # noqa: F401 - the import is the point
    finally:
        gc.enable()
    gc.freeze()


def _show(name: str) -> str:
    """A name for the terminal: non-printable characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


class _Commands(click.Group):
    """The command group; commands living beside the modules they drive load on first use."""

    lazy = {"demo": "caffe_bridge.demo:demo_command",
            "eval": "caffe_bridge.evaluate_cli:eval_command"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            import importlib

            module, attr = self.lazy[name].split(":")
            cmd = getattr(importlib.import_module(module), attr)
            return add_input_shape_option(cmd) if name == "eval" else cmd
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings=CONTEXT)
@click.version_option(None, "-V", "--version", package_name="caffe-bridge",
                      prog_name="caffe2torch")
def main() -> None:
    """Read Caffe models (.prototxt + .caffemodel) without Caffe; convert them to exact PyTorch.

    \b
    Examples:
      caffe2torch demo
      caffe2torch inspect SE-ResNet-50.prototxt SE-ResNet-50.caffemodel
      caffe2torch convert SE-ResNet-50.prototxt -o out/
      caffe2torch export SE-ResNet-50.prototxt --onnx se50.onnx
      caffe2torch verify SE-ResNet-50.prototxt --reference opencv
      caffe2torch verify squeezenet.prototxt --random-weights    # only a prototxt
      caffe2torch eval SE-ResNet-50.prototxt --val-dir val/ --labels ILSVRC2017_val.txt

    Exit codes: 0 ok, 1 verify found a mismatch, 2 error.
    """
    import warnings

    from caffe_bridge.errors import CaffeBridgeWarning

    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if issubclass(category, CaffeBridgeWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            default_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show


# ------------------------------------------------------------------ inspect


@main.command("inspect", context_settings=CONTEXT)
@click.argument("net", metavar="NET.prototxt")
@click.argument("weights", metavar="[WEIGHTS.caffemodel]", required=False)
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON (layers, inputs, outputs, dropped layers, "
                   "inputs made from data layers, weights report).")
@click.option("--no-weights", is_flag=True,
              help="Do not check NET.caffemodel beside the prototxt.")
@input_shape_option
@handle_errors
def inspect_command(net: str, weights: str | None, as_json: bool, no_weights: bool) -> None:
    """Show every layer: type, output shape(s), parameter count and FLOPs, with totals.

    Parameters count every blob Caffe stores (BatchNorm statistics included). FLOPs are
    2 x multiply-accumulates of Convolution, Deconvolution and InnerProduct at the batch size
    of the definition; other layers count 0. With WEIGHTS (default: NET.caffemodel beside the
    prototxt when there is one, as in every command), also list caffemodel layers the prototxt
    lacks (unused), parameter layers without weights (missing) and blob mismatches.

    \b
    Example:
      caffe2torch inspect SE-ResNet-50.prototxt SE-ResNet-50.caffemodel
    """
    from caffe_bridge.summary import inspect_files

    input_file(net, "prototxt")
    if weights is not None or no_weights or Path(net).with_suffix(".caffemodel").is_file():
        weights = find_weights(net, weights, no_weights)  # optional here: none is no error
    summary = inspect_files(net, weights)
    if as_json:
        from caffe_bridge.summary import summary_json

        click.echo(json.dumps(summary_json(summary), indent=2))
        return
    _echo_summary(summary)


def _echo_summary(summary: NetSummary) -> None:
    """The text form of ``inspect``: data inputs, dropped layers, the layer table, totals."""
    for c in summary.created_inputs:
        click.echo(f"input {_show(c.name)} made from data layer {_show(c.layer)} "
                   f"({_show(c.layer_type)}), shape from {_show(c.source)}")
    if summary.dropped:
        click.echo("dropped (not in a deploy net): " + ", ".join(
            f"{_show(d.name)} ({_show(d.type)})" for d in summary.dropped))
    rows = []
    for i, r in enumerate(summary.rows):
        tops = ", ".join(f"{_show(t)} {_shape(s) if r.shapes_known else '?'}"
                         for t, s in zip(r.tops, r.top_shapes, strict=True))
        rows.append([str(i), _show(r.name), _show(r.type), tops,
                     f"{r.params:,}" if r.params else "-", _si(r.flops) if r.flops else "-"])
    click.echo(f"net: {_show(summary.name) or '(unnamed)'}  ({_show(summary.source)})")
    click.echo(_table(["#", "layer", "type", "top(s)", "params", "FLOPs"], rows, {0, 4, 5}))
    n_layers = sum(1 for r in summary.rows if r.type != "Input")
    click.echo(f"\ntotal: {n_layers} layers, {summary.total_params:,} parameters, "
               f"{_si(summary.total_flops)} FLOPs ({summary.total_flops:,})")
    click.echo("inputs: " + ", ".join(f"{_show(n)} {_shape(s) if s else '?'}"
                                      for n, s in summary.inputs.items()))
    click.echo("outputs: " + ", ".join(_show(o) for o in summary.outputs))
    by_type: dict[str, list[str]] = {}
    for name, type_, _ in summary.unsupported:
        by_type.setdefault(type_, []).append(_show(name))
    for type_, names in by_type.items():
        shown = ", ".join(names[:3]) + (f", ... ({len(names)} layers)" if len(names) > 3 else "")
        click.echo(f"not convertible yet: {_show(type_)}: {shown}; shapes after it unknown (?)")
    _echo_weights(summary)


def _echo_weights(summary: NetSummary) -> None:
    """The weights report of ``inspect`` (nothing without a caffemodel)."""
    report = summary.weights
    if report is None:
        return
    click.echo(f"\nweights: {_show(report.path)}")
    if report.ok:
        n = sum(1 for r in summary.rows if r.params)
        click.echo(f"  all {n} parameter layers have weights of the right shapes; none unused")
    if report.unused:
        click.echo(f"  unused (caffemodel layers the prototxt lacks): "
                   f"{', '.join(_show(n) for n in report.unused)}")
    if report.missing:
        click.echo(f"  missing (parameter layers without weights): "
                   f"{', '.join(_show(n) for n in report.missing)}")
    for layer, message in report.mismatched:
        click.echo(f"  mismatch: {_show(layer)}: {_show(message)}")


# ------------------------------------------------------------------ layers


@main.command("layers", context_settings=CONTEXT)
@handle_errors
def layers_command() -> None:
    """List the supported Caffe layer types and the converter handling each.

    \b
    Example:
      caffe2torch layers
    """
    try:
        from caffe_bridge.support import support_table
    except ImportError:
        support_table = None
    if support_table is not None:
        click.echo(support_table().rstrip())
        return
    from caffe_bridge import converters

    converters.load_plugins()
    rows = [[info.type, info.origin, info.summary] for info in converters.REGISTRY]
    click.echo(_table(["type", "converter", "summary"], rows, set()))


# ------------------------------------------------------------------ convert


@main.command("convert", context_settings=CONTEXT)
@click.argument("net", metavar="NET.prototxt")
@click.argument("weights", metavar="[WEIGHTS.caffemodel]", required=False)
@click.option("-o", "--outdir", default=".", show_default=True, metavar="OUTDIR",
              help="Folder for <module>.py and <module>.pth (created if missing).")
@click.option("--no-weights", is_flag=True,
              help="Convert the definition alone (the .pth then holds the converters' "
                   "defaults).")
@click.option("--output", "outputs", multiple=True, metavar="BLOB",
              help="A blob forward returns (repeat for several, in order; e.g. the logits "
                   "instead of prob). Default: the net's outputs.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--exact", is_flag=True,
              help="Write Caffe's own order of operations (BatchNorm kept, NCHW) instead of "
                   "the default fast form (BatchNorm folded into the convolutions, ReLU in "
                   "place, pooling channels-last, a large CPU batch in parts: Caffe's numbers "
                   "within float32 rounding).")
@click.option("--as", "as_", type=click.Choice(["senet"]), default=None,
              help="Write the idiomatic SENet instead (caffe_bridge.models): <stem>.pth "
                   "(state dict) + <stem>.preset.json (mean, std, channel order, crop, classes).")
@click.option("--class-order", type=click.Choice(["caffe", "torchvision"]), default=None,
              help="With --as senet: output class order; 'torchvision' = sorted synsets "
                   "(the release uses the ILSVRC2012 devkit order). Default caffe.")
@click.option("--input-format", type=click.Choice(["caffe", "bgr255", "rgb255", "torchvision"]),
              default=None, help="With --as senet: the input layout the model takes. "
                                 "Default caffe (BGR 0-255, mean subtracted).")
@click.option("--fold-input", is_flag=True,
              help="With --as senet and --input-format: fold the input conversion into "
                   "conv1/bn1, so the weights work in timm/Cadene with their own "
                   "preprocessing (exact except at conv1's zero-padded border).")
@click.option("--format", "formats", multiple=True, type=click.Choice(["pth", "safetensors"]),
              help="With --as senet: weight file format(s), repeatable. Default pth.")
@quiet_option
@input_shape_option
@handle_errors
def convert_command(net: str, weights: str | None, outdir: str, no_weights: bool,
                    outputs: tuple[str, ...], force: bool, exact: bool, as_: str | None,
                    class_order: str | None, input_format: str | None, fold_input: bool,
                    formats: tuple[str, ...], quiet: bool) -> None:
    """Write a standalone PyTorch module (OUTDIR/<module>.py) and its weights (<module>.pth).

    <module> is the prototxt's name made importable (SE-ResNet-50 -> se_resnet_50); the
    class is named after the net (or the file). Without WEIGHTS, NET.caffemodel beside the
    prototxt is used when present. The .py needs only torch: `build("<module>.pth")` returns
    the model in eval mode, one named submodule per Caffe layer. The code is the fast form
    that `caffe_bridge.convert` returns (BatchNorm/Scale folded into their convolution);
    --exact keeps Caffe's order of operations. The .pth is a plain state dict
    (torch.load(..., weights_only=True)). Before the files are moved into place, the module
    is imported and must reproduce the conversion bit for bit.

    \b
    Examples:
      caffe2torch convert SE-ResNet-50.prototxt SE-ResNet-50.caffemodel -o out/
      cd out && python -c 'import se_resnet_50; m = se_resnet_50.build("se_resnet_50.pth")'
      caffe2torch convert SE-ResNet-50.prototxt --output classifier -o logits/
      caffe2torch convert SE-ResNet-50.prototxt --as senet --input-format torchvision \\
          --fold-input --class-order torchvision --format safetensors
    """
    input_file(net, "prototxt")
    caffemodel = find_weights(net, weights, no_weights)
    if as_ == "senet":
        from caffe_bridge.models.senet_export import convert_senet

        if outputs or exact:
            raise click.UsageError("--output and --exact do not apply to --as senet (it "
                                   "returns logits from Caffe's own BatchNorm layers)")
        if fold_input and input_format in (None, "caffe"):
            raise click.UsageError("--fold-input needs --input-format bgr255, rgb255 or "
                                   "torchvision")
        paths = convert_senet(net, caffemodel, outdir, class_order or "caffe",
                              input_format or "caffe", force, fold=fold_input,
                              formats=formats or ("pth",))
        click.echo("wrote " + " and ".join(str(p) for p in paths))
        return
    if class_order is not None or input_format is not None or fold_input or formats:
        raise click.UsageError("--class-order, --input-format, --fold-input and --format "
                               "need --as senet")
    _quiet_gc_import()
    from caffe_bridge.codegen import write_module_files

    bars = Progress(quiet)
    try:
        py, pth = write_module_files(net, caffemodel, outdir, force=force, progress=bars,
                                     outputs=list(outputs) or None, exact=exact)
    finally:
        bars.close()
    click.echo(f"wrote {py} and {pth}")


# ------------------------------------------------------------------ export


@main.command("export", context_settings=CONTEXT)
@click.argument("net", metavar="NET.prototxt")
@click.argument("weights", metavar="[WEIGHTS.caffemodel]", required=False)
@click.option("--onnx", "onnx_path", metavar="OUT.onnx", help="Write ONNX here.")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(9, 21),
              help="ONNX opset version.")
@click.option("--dynamic-batch/--static-batch", default=True, show_default=True,
              help="A variable batch axis (checked at a second batch size), or the "
                   "definition's batch.")
@click.option("--torchscript", "ts_path", metavar="OUT.pt", help="Write TorchScript here.")
@click.option("--pt2", "pt2_path", metavar="OUT.pt2", help="Write a torch.export program here.")
@click.option("--no-weights", is_flag=True, help="Export the definition alone.")
@click.option("--tolerance", default=1e-5, show_default=True, type=float,
              help="Largest relative error allowed against PyTorch.")
@click.option("--mean", callback=mean_callback, metavar="B,G,R",
              help="Preprocessing to record in the ONNX metadata: per-channel mean (B,G,R).")
@click.option("--scale", type=float, help="Preprocessing to record: scale after the mean.")
@click.option("--channel-order", type=click.Choice(["bgr", "rgb"]), default=None,
              help="Preprocessing to record: channel order the net expects.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@quiet_option
@input_shape_option
@handle_errors
def export_command(net: str, weights: str | None, onnx_path: str | None, opset: int,
                   dynamic_batch: bool, ts_path: str | None, pt2_path: str | None,
                   no_weights: bool, tolerance: float, mean: tuple[float, ...] | None,
                   scale: float | None, channel_order: str | None, force: bool,
                   quiet: bool) -> None:
    """Export the converted model to ONNX, TorchScript and/or torch.export (.pt2).

    Each file is loaded back (onnxruntime, torch.jit.load, torch.export.load) and run on a
    seeded input; a relative error above --tolerance against PyTorch is an error and leaves
    no file behind. The batch axis is dynamic unless --static-batch. The ONNX file carries
    the inputs and the preprocessing (mean, scale, channel order, input size) as metadata
    where known: given here, or the published protocol of a released SENet. WEIGHTS
    defaults to NET.caffemodel beside the prototxt.

    \b
    Examples:
      caffe2torch export SE-ResNet-50.prototxt --onnx se50.onnx
      caffe2torch export net.prototxt net.caffemodel --onnx net.onnx --torchscript net.pt \\
          --pt2 net.pt2 --mean 104,117,123 --static-batch
    """
    from caffe_bridge.export import export_net, preprocessing_metadata
    from caffe_bridge.ir import load_net

    input_file(net, "prototxt")
    if not (onnx_path or ts_path or pt2_path):
        raise click.UsageError("nothing to export: pass --onnx, --torchscript and/or --pt2")
    caffemodel = find_weights(net, weights, no_weights)
    bars = Progress(quiet)  # a bar per format ("export ONNX", ...) and one over them
    loaded = load_net(net, caffemodel)
    metadata = preprocessing_metadata(loaded, mean=mean, scale=scale,
                                      channel_order=channel_order)
    try:
        results = export_net(loaded, onnx=onnx_path, torchscript=ts_path, pt2=pt2_path,
                             opset=opset, dynamic_batch=dynamic_batch, force=force,
                             tolerance=tolerance, progress=bars, metadata=metadata)
    finally:
        bars.close()
    for r in results:
        click.echo(f"wrote {r.path} ({r.format}; max relative error vs PyTorch "
                   f"{r.max_rel_err:.2g})")


# ------------------------------------------------------------------ verify


@main.command("verify", context_settings=CONTEXT)
@click.argument("net", metavar="NET.prototxt")
@click.argument("weights", metavar="[WEIGHTS.caffemodel]", required=False)
@click.option("--reference", default="opencv", show_default=True,
              metavar="opencv|caffe|FILE.npz",
              help="OpenCV's Caffe importer, pycaffe, or saved blobs (name -> array).")
@click.option("--input", "input_path", metavar="X.npy|X.npz",
              help="Input array (.npz: input name -> array). Default: the reference .npz's "
                   "inputs, else seeded N(0, 1) of the declared shape.")
@click.option("--images", "images", metavar="DIR",
              type=click.Path(exists=True, file_okay=False),
              help="Real images as input, preprocessed exactly as `eval` does (same code and "
                   "flags: --mean, --resize, --crop, ...).")
@preprocess_options
@click.option("--device", default="cpu", show_default=True,
              type=click.Choice(["cpu", "cuda"]), help="Where to run the converted model.")
@click.option("--allow-tf32", is_flag=True,
              help="With --device cuda: let CUDA use TF32 (faster, not float32-exact).")
@click.option("--rtol", default=1e-4, show_default=True, type=float,
              help="Largest relative error (max|ours-ref| / max|ref|) per blob.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of random inputs.")
@click.option("--json", "json_path", metavar="OUT.json", help="Also write the report as JSON.")
@click.option("--plot", "plot_path", metavar="OUT.png",
              help="Plot per-blob relative error (needs matplotlib).")
@click.option("--force", is_flag=True, help="Overwrite existing --json/--plot files.")
@quiet_option
@click.option("--random-weights", is_flag=True,
              help="No caffemodel: write seeded random weights (--seed) to a temporary "
                   "caffemodel that both sides read.")
@click.option("--exact", is_flag=True,
              help="With --images: only the exact model (every blob is always compared on it); "
                   "by default the net outputs of the fast model that `eval` runs are compared "
                   "too, as rows '<blob> (fast)'.")
@input_shape_option
@handle_errors
def verify_command(net: str, weights: str | None, reference: str, input_path: str | None,
                   images: str | None, device: str, allow_tf32: bool, rtol: float, seed: int,
                   json_path: str | None, plot_path: str | None, force: bool, quiet: bool,
                   random_weights: bool, exact: bool, **preprocess: Any) -> None:
    """Compare every blob with a reference and name the first one that diverges.

    Blobs are compared in network order at their value after the last in-place layer. Exit
    code 1 when any blob's relative error exceeds --rtol. WEIGHTS defaults to NET.caffemodel
    beside the prototxt; with an .npz reference it is optional; with only a prototxt, pass
    --random-weights.

    \b
    Examples:
      caffe2torch verify SE-ResNet-50.prototxt SE-ResNet-50.caffemodel
      caffe2torch verify squeezenet.prototxt --random-weights
      caffe2torch verify net.prototxt net.caffemodel --reference blobs.npz --json report.json
      caffe2torch verify SE-ResNet-50.prototxt --images photos/ --mean 104,117,123 \\
          --device cuda
    """
    import tempfile

    from caffe_bridge import verify as V

    check_preprocess_conflicts(preprocess)
    _verify_preflight(net, reference, input_path, images, device, allow_tf32, plot_path,
                      json_path, force)
    bars = Progress(quiet)
    with tempfile.TemporaryDirectory(prefix="caffe2torch_verify_") as tmp:
        if random_weights:
            find_weights(net, weights, True, flag="--random-weights")  # WEIGHTS too: usage error
            caffemodel = V.write_seeded_caffemodel(net, Path(tmp) / "seeded.caffemodel", seed)
        elif weights is None and reference not in V.REFERENCES:
            beside = Path(net).with_suffix(".caffemodel")
            caffemodel = str(beside) if beside.is_file() else None
        else:
            caffemodel = find_weights(net, weights, flag="--random-weights")
        try:
            if images is not None:
                report = V.verify_images(net, caffemodel, images, reference=reference,
                                         device=device, rtol=rtol, progress=bars, exact=exact,
                                         **preprocess)
            else:
                report = V.verify(net, caffemodel, reference=reference, inputs=input_path,
                                  device=device, rtol=rtol, seed=seed, progress=bars)
        finally:
            bars.close()
    _print_verify_report(report)
    V.write_report_files(report, json_path, plot_path, force=force)
    if report.first_divergent is not None:
        sys.exit(EXIT_MISMATCH)


def _verify_preflight(net: str, reference: str, input_path: str | None, images: str | None,
                      device: str, allow_tf32: bool, plot_path: str | None,
                      json_path: str | None, force: bool) -> None:
    """Every check of verify's arguments that can fail before any work."""
    from caffe_bridge.atomic import check_target
    from caffe_bridge.verify import REFERENCES

    input_file(net, "prototxt")
    if images is not None and input_path is not None:
        raise click.UsageError("give either --input or --images, not both")
    if reference not in REFERENCES:
        input_file(reference, "reference .npz")
    if input_path is not None:
        input_file(input_path, "input array")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CaffeBridgeError("--device cuda: no CUDA device is available")
        from caffe_bridge.distributed import set_tf32

        set_tf32(allow_tf32)  # off by default: the GPU must compute float32 like the CPU
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CaffeBridgeError("--plot needs matplotlib (pip install matplotlib)") from None
    for out in (json_path, plot_path):
        if out is not None:
            check_target(out, force=force)


def _print_verify_report(report: Any) -> None:
    rows = [[_show(r.blob), _shape(r.shape), f"{r.max_abs_err:.3g}", f"{r.rel_err:.3g}",
             f"{r.cosine:.6f}", "ok" if r.ok else "DIVERGES"] for r in report.rows]
    click.echo(f"reference: {_show(report.reference)}  (rtol {report.rtol:g})")
    click.echo(_table(["blob", "shape", "max abs err", "rel err", "cosine", ""], rows,
                      {2, 3, 4}))
    if report.skipped:
        click.echo(f"skipped (not in the net): {', '.join(_show(s) for s in report.skipped)}")
    for line in report.detections:
        click.echo(_show(line))
    first = report.first_divergent
    if first is None:
        click.echo(f"all {len(report.rows)} blobs within rtol {report.rtol:g}")
        return
    bad = sum(1 for r in report.rows if not r.ok)
    click.echo(f"first divergent blob: {_show(first.blob)} (layer {_show(first.layer)}); "
               f"{bad} of {len(report.rows)} blobs exceed rtol {report.rtol:g}")


if __name__ == "__main__":
    main()
