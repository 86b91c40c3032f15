"""Ctrl-C during ``convert`` or ``export`` leaves the output folder as it was.

No partial output, no temporary file, and an output file that existed before (``--force``) is
byte for byte what it was. Interrupts are delivered for real (SIGINT to a ``caffe2torch``
child: after its first progress line, or while it is writing, held there by a hook that pauses
inside ``torch.save`` / ``torch.onnx.export``) and in-process (``KeyboardInterrupt`` raised by
monkeypatched writers, and a SIGINT arriving while the finished files are moved into place).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from caffe_bridge import cli
from caffe_bridge import export as export_mod
from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.codegen import write_module_files
from caffe_bridge.ir import load_net

posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")

NET = """name: "interrupt"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 4000 } }
"""

OLD = {"net.py": b"# the previous conversion\n", "net.pth": b"previous weights",
       "net.onnx": b"previous onnx", "net.pt2": b"previous pt2"}

# The child: caffe2torch, with a hook that stops it inside a writer (after a real write, the
# file then cut to half as if the write were under way) and says so on stderr.
RUNNER = r"""
import os, sys, time
hook = sys.argv[1]
sys.argv = ["caffe2torch", *sys.argv[2:]]

def pause(label):
    print(f"HOOK {label}", file=sys.stderr, flush=True)
    time.sleep(120)

if hook == "save":
    import torch
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        pause("torch.save")
    torch.save = save
elif hook == "onnx":
    import torch
    real_export = torch.onnx.export
    def export(model, args, f, *rest, **kwargs):
        real_export(model, args, f, *rest, **kwargs)
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        pause("torch.onnx.export")
    torch.onnx.export = export
from caffe_bridge.cli import main
main()
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """net.prototxt and a 25 MB net.caffemodel (seeded weights) in a folder of their own."""
    folder = tmp_path_factory.mktemp("model")
    proto = folder / "net.prototxt"
    proto.write_text(NET, encoding="utf-8")
    net = load_net(proto)
    rng = np.random.default_rng(0)
    weights = {layer.name: [rng.standard_normal(s).astype(np.float32) * 0.01
                            for s in layer.param_shapes]
               for layer in net.layers if layer.param_shapes}
    caffemodel = folder / "net.caffemodel"
    write_caffemodel(caffemodel, weights, net.name)
    return proto, caffemodel


def _old_outputs(folder: Path, names: list[str]) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(OLD[name])
    return {name: OLD[name] for name in names}


def _assert_untouched(folder: Path, before: dict[str, bytes]) -> None:
    """The folder holds exactly the files it held before, with the same bytes."""
    now = {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}
    assert sorted(now) == sorted(before), f"left behind: {sorted(set(now) - set(before))}"
    assert now == before


def _read_until(proc: subprocess.Popen, fd: int, marker: bytes, timeout: float) -> bytes:
    """Read ``fd`` until ``marker`` shows up (or the child ends / time runs out)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            break
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # a pty reports the child's end as EIO
                break
            if not chunk:
                break
            seen += chunk
    return seen


def _interrupt(argv: list[str], hook: str, marker: bytes, tty: bool = False) -> tuple[int, str]:
    """Run the child until ``marker`` appears on its stderr, SIGINT it; (exit code, stderr)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", RUNNER, hook, *argv]
    if tty:
        import fcntl
        import pty
        import struct
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm: 0x0
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=slave, env=env)
        os.close(slave)
        fd = master
    else:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
    try:
        seen = _read_until(proc, fd, marker, timeout=120)
        assert marker in seen and proc.poll() is None, \
            f"the child never reached {marker!r}:\n{seen.decode(errors='replace')}"
        proc.send_signal(signal.SIGINT)
        rest = b""
        while True:
            chunk = _read_until(proc, fd, b"\0never\0", timeout=2)
            rest += chunk
            if proc.poll() is not None and not chunk:
                break
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if tty:
            os.close(fd)
        elif proc.stderr is not None:
            proc.stderr.close()
    return code, (seen + rest).decode(errors="replace")


@posix_only
def test_sigint_while_writing_the_weights(model: tuple[Path, Path], tmp_path: Path) -> None:
    proto, caffemodel = model
    out = tmp_path / "out"
    before = _old_outputs(out, ["net.py", "net.pth"])
    code, err = _interrupt(["convert", str(proto), str(caffemodel), "-o", str(out), "--force"],
                           "save", b"HOOK torch.save")
    assert code == 130, err
    assert "error: interrupted" in err
    _assert_untouched(out, before)


@posix_only
@pytest.mark.parametrize("existing", [False, True])
def test_sigint_after_the_first_progress_line(model: tuple[Path, Path], tmp_path: Path,
                                              existing: bool) -> None:
    proto, caffemodel = model
    out = tmp_path / "out"
    before = _old_outputs(out, ["net.py", "net.pth"]) if existing else {}
    # stderr is a terminal, so the progress bars are drawn: the first is the sha256 one.
    code, err = _interrupt(["convert", str(proto), str(caffemodel), "-o", str(out), "--force"],
                           "none", b"sha256", tty=True)
    assert code == 130, err
    assert "interrupted" in err
    _assert_untouched(out, before)
    assert existing or not out.exists()  # the folder convert created is gone again


@posix_only
def test_sigint_while_exporting_onnx(model: tuple[Path, Path], tmp_path: Path) -> None:
    proto, caffemodel = model
    out = tmp_path / "out"
    before = _old_outputs(out, ["net.onnx"])
    code, err = _interrupt(["export", str(proto), str(caffemodel), "--onnx",
                            str(out / "net.onnx"), "--force"], "onnx", b"HOOK torch.onnx")
    assert code == 130, err
    assert "error: interrupted" in err
    _assert_untouched(out, before)


# -- in-process --------------------------------------------------------------------------------


def _half_then_interrupt(real, path_arg: int = 1):  # noqa: ANN001, ANN202
    """``real`` (a writer whose positional argument ``path_arg`` is the file), which then cuts
    the file to half its size, as if it were still writing, and raises KeyboardInterrupt."""

    def writer(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real(*args, **kwargs)
        path = args[path_arg]
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
        raise KeyboardInterrupt

    return writer


@pytest.mark.parametrize("existing", [False, True])
def test_keyboard_interrupt_in_torch_save(model: tuple[Path, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          existing: bool) -> None:
    proto, caffemodel = model
    out = tmp_path / "out"
    before = _old_outputs(out, ["net.py", "net.pth"]) if existing else {}
    monkeypatch.setattr(torch, "save", _half_then_interrupt(torch.save))
    with pytest.raises(KeyboardInterrupt):
        write_module_files(proto, caffemodel, out, force=True)
    _assert_untouched(out, before)


def test_keyboard_interrupt_in_the_check(model: tuple[Path, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Both files are written and the generated module is being checked: still nothing."""
    import caffe_bridge.codegen as codegen

    proto, caffemodel = model
    out = tmp_path / "out"
    before = _old_outputs(out, ["net.py", "net.pth"])

    def check(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(codegen, "check_generated", check)
    with pytest.raises(KeyboardInterrupt):
        write_module_files(proto, caffemodel, out, force=True)
    _assert_untouched(out, before)


def test_cli_reports_the_interrupt(model: tuple[Path, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    proto, caffemodel = model
    out = tmp_path / "out"
    before = _old_outputs(out, ["net.py", "net.pth"])
    monkeypatch.setattr(torch, "save", _half_then_interrupt(torch.save))
    result = CliRunner().invoke(cli.main, ["convert", str(proto), str(caffemodel), "-o",
                                           str(out), "--force"])
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output
    _assert_untouched(out, before)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_keyboard_interrupt_in_export(model: tuple[Path, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    proto, caffemodel = model
    out = tmp_path / "out"
    names = {"onnx": "net.onnx", "pt2": "net.pt2", "torchscript": "net.py"}
    before = _old_outputs(out, [names[fmt]] if fmt != "torchscript" else [])
    if fmt == "onnx":
        monkeypatch.setattr(torch.onnx, "export", _half_then_interrupt(torch.onnx.export, 2))
    elif fmt == "pt2":
        monkeypatch.setattr(torch.export, "save", _half_then_interrupt(torch.export.save))
    else:  # the file is complete; loading it back is interrupted

        def load(*_args: object, **_kwargs: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(torch.jit, "load", load)
    target = out / ("net.pt" if fmt == "torchscript" else names[fmt])
    with pytest.raises(KeyboardInterrupt):
        export_mod.export_net(load_net(proto, caffemodel), force=True, **{fmt: target})
    _assert_untouched(out, before)


def test_interrupt_in_a_later_export_discards_the_earlier(model: tuple[Path, Path],
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """ONNX written and checked, then torch.export is interrupted: neither file appears."""
    proto, caffemodel = model
    out = tmp_path / "out"
    before = _old_outputs(out, ["net.onnx", "net.pt2"])
    monkeypatch.setattr(torch.export, "save", _half_then_interrupt(torch.export.save))
    with pytest.raises(KeyboardInterrupt):
        export_mod.export_net(load_net(proto, caffemodel), onnx=out / "net.onnx",
                              pt2=out / "net.pt2", force=True)
    _assert_untouched(out, before)


@posix_only
def test_sigint_while_moving_into_place_keeps_a_consistent_pair(
        model: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGINT between the two renames is held until both are done: new .py and new .pth."""
    import caffe_bridge.atomic as atomic

    proto, caffemodel = model
    out = tmp_path / "out"
    _old_outputs(out, ["net.py", "net.pth"])
    real_replace = os.replace
    calls = []

    def replace(src: str, dst: str) -> None:
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(atomic.os, "replace", replace)
    try:
        with pytest.raises(KeyboardInterrupt):
            write_module_files(proto, caffemodel, out, force=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 2
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(files) == ["net.pth", "net.py"]
    assert files["net.py"] != OLD["net.py"] and files["net.pth"] != OLD["net.pth"]
    state = torch.load(out / "net.pth", weights_only=True)
    assert any(t.shape == (4000, 8 * 14 * 14) for t in state.values())
