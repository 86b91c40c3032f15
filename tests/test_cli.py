"""caffe2torch: help texts, outputs, exit codes and one-line errors (CliRunner and subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from caffe_bridge.atomic import atomic_outputs
from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.cli import main
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.ir import load_net
from caffe_bridge.random_weights import random_weights

NET = """
name: "tiny"
input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 3 } }
"""
BROKEN = 'layer { name: "conv" type: "Convolution" bottom: "data" \n'
COMMANDS = ["inspect", "convert", "export", "verify"]


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with tiny.prototxt + tiny.caffemodel and broken.prototxt, as the cwd."""
    (tmp_path / "tiny.prototxt").write_text(NET)
    write_caffemodel(tmp_path / "tiny.caffemodel", random_weights(load_net(tmp_path /
                                                                            "tiny.prototxt")))
    (tmp_path / "broken.prototxt").write_text(BROKEN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(res: Result, *needles: str) -> None:
    assert res.exit_code == 2, (res.output, res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in lines[0]


def _extra(command: str) -> list[str]:
    return ["--onnx", "out.onnx"] if command == "export" else []


@pytest.mark.parametrize("command", [*COMMANDS, "layers", "eval", "demo"])
def test_help_explains_with_example(command: str) -> None:
    res = run(command, "--help")
    assert res.exit_code == 0
    assert "Example" in res.output and f"caffe2torch {command}" in res.output


def test_group_help_and_version() -> None:
    assert "Exit codes" in run("--help").output
    for flag in ("--version", "-V"):
        res = run(flag)
        assert res.exit_code == 0 and "caffe2torch" in res.output


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_prototxt(work: Path, command: str) -> None:
    assert_one_line_error(run(command, "nothere.prototxt", *_extra(command)),
                          "nothere.prototxt", "no such")


@pytest.mark.parametrize("command", COMMANDS)
def test_broken_prototxt(work: Path, command: str) -> None:
    res = run(command, "broken.prototxt", "tiny.caffemodel", *_extra(command))
    assert_one_line_error(res, "broken.prototxt")
    assert not list(work.glob("broken.py*")) and not (work / "out.onnx").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_directory_as_prototxt(work: Path, command: str) -> None:
    assert_one_line_error(run(command, str(work), *_extra(command)), "directory")


@pytest.mark.parametrize("command", ["inspect", "convert", "export", "verify"])
def test_missing_weights_file(work: Path, command: str) -> None:
    res = run(command, "tiny.prototxt", "nothere.caffemodel", *_extra(command))
    assert_one_line_error(res, "nothere.caffemodel")


def test_corrupt_caffemodel(work: Path) -> None:
    (work / "bad.caffemodel").write_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")
    assert_one_line_error(run("convert", "tiny.prototxt", "bad.caffemodel"), "bad.caffemodel")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_unreadable_prototxt(work: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    (work / "tiny.prototxt").chmod(0)
    assert_one_line_error(run("inspect", "tiny.prototxt"), "tiny.prototxt")


def test_inspect_finds_the_caffemodel_beside(work: Path) -> None:
    """Like every command: no WEIGHTS means NET.caffemodel when it is there."""
    res = run("inspect", "tiny.prototxt")
    assert res.exit_code == 0 and "weights: tiny.caffemodel" in res.output
    alone = run("inspect", "tiny.prototxt", "--no-weights")
    assert alone.exit_code == 0 and "weights:" not in alone.output


def test_inspect_table_and_totals(work: Path) -> None:
    res = run("inspect", "tiny.prototxt", "--no-weights")
    assert res.exit_code == 0, res.output
    assert "conv 1x4x6x6" in res.output and "fc 1x3" in res.output
    assert "total: 3 layers, 547 parameters" in res.output  # 4*27+4 + 3*144+3
    assert "outputs: fc" in res.output


def test_inspect_reports_unused_and_missing_weights(work: Path) -> None:
    weights = random_weights(load_net("tiny.prototxt"))
    weights["old"] = weights.pop("fc")
    write_caffemodel("partial.caffemodel", weights)
    res = run("inspect", "tiny.prototxt", "partial.caffemodel")
    assert res.exit_code == 0, res.output
    assert "unused (caffemodel layers the prototxt lacks): old" in res.output
    assert "missing (parameter layers without weights): fc" in res.output
    complete = run("inspect", "tiny.prototxt", "tiny.caffemodel")
    assert "all 2 parameter layers have weights" in complete.output


def test_layers_lists_registered_types() -> None:
    res = run("layers")
    assert res.exit_code == 0
    for layer_type in ("Convolution", "Pooling", "Axpy", "BatchNorm"):
        assert layer_type in res.output


def test_convert_uses_caffemodel_beside_prototxt(work: Path) -> None:
    res = run("convert", "tiny.prototxt", "-o", "out")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (work / "out").iterdir()) == ["tiny.pth", "tiny.py"]
    source = (work / "out" / "tiny.py").read_text()
    assert "tiny.caffemodel" in source


def test_convert_without_weights(work: Path) -> None:
    (work / "tiny.caffemodel").unlink()
    assert_one_line_error(run("convert", "tiny.prototxt"), "no weights: pass WEIGHTS or "
                                                           "--no-weights")
    res = run("convert", "tiny.prototxt", "--no-weights")
    assert res.exit_code == 0, res.output
    assert (work / "tiny.py").exists() and (work / "tiny.pth").exists()


def assert_usage_error(res: Result, *needles: str) -> None:
    """Conflicting options are click usage errors: the usage line, then ``Error: ...``, 2."""
    assert res.exit_code == 2, (res.output, res.exception)
    assert res.stderr.startswith("Usage: ") and "Traceback" not in res.output
    for needle in needles:
        assert needle in res.stderr.strip().splitlines()[-1]


def test_convert_weights_and_no_weights_conflict(work: Path) -> None:
    assert_usage_error(run("convert", "tiny.prototxt", "tiny.caffemodel", "--no-weights"),
                       "not both")


def test_convert_never_overwrites_without_force(work: Path) -> None:
    (work / "tiny.py").write_text("# mine\n")
    assert_one_line_error(run("convert", "tiny.prototxt"), "tiny.py", "--force")
    assert (work / "tiny.py").read_text() == "# mine\n" and not (work / "tiny.pth").exists()
    assert run("convert", "tiny.prototxt", "--force").exit_code == 0
    assert "def build(" in (work / "tiny.py").read_text()


def test_convert_unsupported_layer_leaves_nothing(work: Path) -> None:
    (work / "odd.prototxt").write_text(NET + 'layer { name: "x" type: "Frobnicate" '
                                             'bottom: "fc" top: "x" }\n')
    assert_one_line_error(run("convert", "odd.prototxt", "--no-weights"), "Frobnicate")
    assert sorted(p.name for p in work.iterdir()) == ["broken.prototxt", "odd.prototxt",
                                                     "tiny.caffemodel", "tiny.prototxt"]


def test_convert_interrupted_leaves_nothing(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import caffe_bridge.codegen as codegen

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(codegen, "check_generated", interrupt)
    res = run("convert", "tiny.prototxt")
    assert res.exit_code == 130 and res.stderr.strip() == "error: interrupted"
    assert not list(work.glob("*.py")) and not list(work.glob("*.pth"))
    assert not list(work.glob(".*tmp*"))


def test_export_writes_checked_files(work: Path) -> None:
    res = run("export", "tiny.prototxt", "--onnx", "t.onnx", "--torchscript", "t.pt",
              "--pt2", "t.pt2", "--opset", "17")
    assert res.exit_code == 0, res.output
    assert res.output.count("wrote ") == 3
    assert all((work / n).stat().st_size > 0 for n in ("t.onnx", "t.pt", "t.pt2"))


def test_export_needs_an_output(work: Path) -> None:
    assert_usage_error(run("export", "tiny.prototxt"), "nothing to export")


def test_export_defaults_dynamic_batch_with_metadata_and_progress(work: Path) -> None:
    """ONNX with a batch axis that varies, the preprocessing as metadata, progress per format."""
    import onnx
    import onnxruntime as ort

    res = run("export", "tiny.prototxt", "--onnx", "t.onnx", "--pt2", "t.pt2",
              "--mean", "104,117,123", "--channel-order", "bgr")
    assert res.exit_code == 0, res.output
    model = onnx.load(str(work / "t.onnx"))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["mean"] == "104,117,123" and meta["channel_order"] == "bgr"
    assert meta["inputs"].startswith("data:") and meta["source"] == "tiny.prototxt"
    session = ort.InferenceSession(str(work / "t.onnx"), providers=["CPUExecutionProvider"])
    shape = [4, *(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])]
    assert session.run(None, {"data": np.zeros(shape, np.float32)})[0].shape[0] == 4
    static = run("export", "tiny.prototxt", "--onnx", "s.onnx", "--static-batch", "-q")
    assert static.exit_code == 0, static.output
    dim = onnx.load(str(work / "s.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value >= 1 and not dim.dim_param and static.stderr == ""


def test_export_reports_progress_per_format(work: Path) -> None:
    from caffe_bridge.export import export_net
    from caffe_bridge.ir import load_net

    heard: list[tuple[str, int, int]] = []
    export_net(load_net("tiny.prototxt", "tiny.caffemodel"), onnx="p.onnx", pt2="p.pt2",
               progress=lambda *a: heard.append(a))
    assert heard == [("export ONNX", 0, 1), ("export ONNX", 1, 1), ("export", 1, 2),
                     ("export torch.export", 0, 1), ("export torch.export", 1, 1),
                     ("export", 2, 2)]


def test_export_failed_check_exit_2_no_file(work: Path) -> None:
    res = run("export", "tiny.prototxt", "--onnx", "t.onnx", "--tolerance", "-1")
    assert_one_line_error(res, "relative error")
    assert not (work / "t.onnx").exists() and not list(work.glob(".*tmp*"))


def test_verify_exit_codes(work: Path) -> None:
    from caffe_bridge.verify import run_blobs

    net = load_net("tiny.prototxt", "tiny.caffemodel")
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    blobs = run_blobs(net, {"data": x}, ["conv", "fc"])
    np.savez("ok.npz", data=x, **blobs)
    np.savez("bad.npz", data=x, conv=blobs["conv"], fc=blobs["fc"] + 1)
    assert run("verify", "tiny.prototxt", "--reference", "ok.npz").exit_code == 0
    res = run("verify", "tiny.prototxt", "--reference", "bad.npz")
    assert res.exit_code == 1 and "first divergent blob: fc" in res.output


@pytest.mark.parametrize("force", [False, True], ids=["no-force", "force"])
def test_atomic_outputs_cleanup(tmp_path: Path, force: bool) -> None:
    target = tmp_path / "a.bin"
    target.write_text("old")
    if not force:
        with pytest.raises(CaffeBridgeError, match="--force"), atomic_outputs([target]):
            pass
        return
    with pytest.raises(RuntimeError), atomic_outputs([target], force=True) as (tmp,):
        tmp.write_text("new")
        raise RuntimeError
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
    with atomic_outputs([target], force=True) as (tmp,):
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]


def test_subprocess_exit_codes(work: Path) -> None:
    cmd = [sys.executable, "-m", "caffe_bridge.cli"]
    ok = subprocess.run([*cmd, "inspect", "tiny.prototxt"], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0 and "total: 3 layers" in ok.stdout and ok.stderr == ""
    bad = subprocess.run([*cmd, "convert", "nothere.prototxt"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == ["error: nothere.prototxt: no such prototxt"]
    broken = subprocess.run([*cmd, "inspect", "broken.prototxt"], capture_output=True,
                            text=True, timeout=300)
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1
    assert broken.stderr.startswith("error: broken.prototxt")
