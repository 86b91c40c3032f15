"""The generated standalone module: torch-only, safe with hostile names, bit-exact in a fresh
interpreter."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from caffe_bridge import codegen, converters
from caffe_bridge.build import caffe_layer_names, convert
from caffe_bridge.caffemodel import write_caffemodel
from caffe_bridge.codegen import (
    CodegenError,
    display_text,
    generate,
    write_module_files,
)
from caffe_bridge.codegen.render import InitCall, recording
from caffe_bridge.ir import load_net
from caffe_bridge.random_weights import random_inputs, random_weights

SMALL = """
name: "small"
input: "data"
input_shape { dim: 2 dim: 3 dim: 9 dim: 9 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "slice" type: "Slice" bottom: "pool1" top: "a" top: "b" slice_param { axis: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s"
  eltwise_param { coeff: 0.5 coeff: -1.5 } }
layer { name: "scale2" type: "Scale" bottom: "s" top: "s" scale_param { axis: 1 num_axes: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "s" top: "ip"
  inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""

HOSTILE = r"""
name: "evil\"\"\"\nimport os; os.system('touch PWNED')\n#"
input: "da\"ta\n__import__('os').system('touch PWNED')"
input_shape { dim: 1 dim: 2 dim: 5 dim: 5 }
layer { name: "__import__('os').system('touch PWNED')" type: "Convolution"
  bottom: "da\"ta\n__import__('os').system('touch PWNED')" top: "c\\\"\n'''\"\"\"x"
  convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "r\303\251LU \342\234\223 \342\200\256 # \\" type: "ReLU"
  bottom: "c\\\"\n'''\"\"\"x" top: "c\\\"\n'''\"\"\"x" }
layer { name: "self" type: "Sigmoid" bottom: "c\\\"\n'''\"\"\"x" top: "forward" }
layer { name: "class" type: "Sigmoid" bottom: "forward" top: "torch" }
layer { name: "\n\t" type: "TanH" bottom: "torch" top: "1bad name" }
layer { name: "build" type: "AbsVal" bottom: "1bad name" top: "1bad name" }
layer { name: "}\"; import os #" type: "Split" bottom: "1bad name" top: "nn" top: "F" }
layer { name: "SOURCES" type: "Eltwise" bottom: "nn" bottom: "F" top: "del" }
"""

# Runs in a fresh interpreter: import the generated file by path, load its weights, run the
# saved input, save the outputs. It uses this process's thread count: CPU kernels split their
# reductions by thread, so bit-exactness holds for equal thread counts.
RUNNER = textwrap.dedent("""
    import importlib.util, sys
    import numpy as np, torch
    py, pth, inp, out, threads = sys.argv[1:]
    torch.set_num_threads(int(threads))  # float results depend on the thread count
    spec = importlib.util.spec_from_file_location("generated", py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert not [m for m in sys.modules if m.startswith("caffe_bridge")], "imports caffe_bridge"
    model = mod.build(pth)
    assert not model.training
    data = np.load(inp)
    with torch.no_grad():
        y = model(*(torch.from_numpy(data[k]) for k in data.files))
    ys = y if isinstance(y, tuple) else (y,)
    np.savez(out, *[t.numpy() for t in ys])
""")


def _write_net(tmp_path: Path, text: str, stem: str) -> tuple[Path, Path]:
    proto = tmp_path / f"{stem}.prototxt"
    proto.write_text(text, encoding="utf-8")
    net = load_net(proto)
    model = tmp_path / f"{stem}.caffemodel"
    write_caffemodel(model, random_weights(net) or {"unused": [np.zeros(1, np.float32)]})
    return proto, model


def _fresh_run(py: Path, pth: Path, inputs: dict[str, np.ndarray], cwd: Path) -> list[np.ndarray]:
    """Outputs of the generated module run in a new interpreter (without caffe_bridge)."""
    inp, out = cwd / "inputs.npz", cwd / "outputs.npz"
    np.savez(inp, **{f"arg{i}": v for i, v in enumerate(inputs.values())})
    runner = cwd / "runner.py"
    runner.write_text(RUNNER)
    subprocess.run([sys.executable, str(runner), str(py), str(pth), str(inp), str(out),
                    str(torch.get_num_threads())], check=True, cwd=cwd, timeout=600)
    with np.load(out) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _converted_outputs(proto: Path, model: Path, inputs: dict[str, np.ndarray],
                       exact: bool = False) -> list:
    gm = convert(proto, model, exact=exact)  # the generated code is the same form
    with torch.no_grad():
        y = gm(*(torch.from_numpy(v) for v in inputs.values()))
    return [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]


def _check_bit_exact(tmp_path: Path, proto: Path, model: Path, exact: bool = False) -> str:
    py, pth = write_module_files(proto, model, tmp_path / "out", exact=exact, force=True)
    inputs = random_inputs(load_net(proto), seed=7)
    got = _fresh_run(py, pth, inputs, tmp_path)
    want = _converted_outputs(proto, model, inputs, exact)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(torch.from_numpy(g), torch.from_numpy(w))
    return py.read_text(encoding="utf-8")


def _imported_modules(source: str) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mods.add((node.module or "").split(".")[0])
    return mods


@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
def test_small_net_bit_exact_in_fresh_interpreter(tmp_path: Path, exact: bool) -> None:
    """The default code is ``convert``'s fast form (BatchNorm folded, ReLU in place, pooling
    on channels-last copies); ``exact`` writes Caffe's order of operations. Either way the file
    reproduces the same form of ``convert`` bit for bit."""
    proto, model = _write_net(tmp_path, SMALL, "small")
    source = _check_bit_exact(tmp_path, proto, model, exact)
    assert _imported_modules(source) <= {"__future__", "torch"}
    assert "def build(weights: str | None = None) -> torch.nn.Module:" in source
    assert ("nn.BatchNorm2d(" in source) == exact
    assert ("= ChannelsLastPool(" in source) == (not exact)


@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
def test_large_batch_runs_in_the_same_parts_as_convert(tmp_path: Path, exact: bool) -> None:
    """The fast file splits a batch of 11 into parts of 4 as ``convert``'s model does
    (``caffe_bridge.micro_batch``), so the two agree bit for bit there too; the exact file
    runs the batch whole."""
    proto, model = _write_net(tmp_path, SMALL, "small")
    py, _ = write_module_files(proto, model, tmp_path / "out", exact=exact)
    source = py.read_text(encoding="utf-8")
    assert ("MICRO_BATCH = 4" in source) == (not exact)
    inputs = random_inputs(load_net(proto), seed=3, batch=11)
    got = _fresh_run(py, py.with_suffix(".pth"), inputs, tmp_path)
    want = _converted_outputs(proto, model, inputs, exact)
    assert torch.equal(torch.from_numpy(got[0]), torch.from_numpy(want[0]))


def test_header_names_sources_with_sha256(tmp_path: Path) -> None:
    proto, model = _write_net(tmp_path, SMALL, "small")
    py, _ = write_module_files(proto, model, tmp_path / "out")
    tree = ast.parse(py.read_text(encoding="utf-8"))
    sources = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                   and getattr(n.targets[0], "id", "") == "SOURCES")
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (proto, model)}
    assert sources == (("prototxt", "small.prototxt", digest["small.prototxt"]),
                       ("caffemodel", "small.caffemodel", digest["small.caffemodel"]))
    doc = ast.get_docstring(tree) or ""
    assert "small.prototxt" in doc and digest["small.prototxt"][:12] in doc


def test_one_named_submodule_per_layer(tmp_path: Path) -> None:
    """Each submodule line carries its Caffe name as a comment (or, for names a comment cannot
    show exactly, CAFFE_NAMES does)."""
    proto, model = _write_net(tmp_path, SMALL, "small")
    gen = generate(load_net(proto, model))
    names = caffe_layer_names(gen.module)
    assert "CAFFE_NAMES = " in gen.source
    for attr, caffe in names.items():
        line = next(x for x in gen.source.splitlines() if x.startswith(f"        self.{attr} = "))
        assert (caffe == attr or line.endswith((f"  # {caffe}", f" + {caffe}"))
                or f"{attr!r}: {caffe!r}," in gen.source)
    assert "        self.conv1 = nn.Conv2d(  # conv1 + sc1" in gen.source


def test_hostile_names_run_and_create_no_file(tmp_path: Path) -> None:
    proto, model = _write_net(tmp_path, HOSTILE, "hostile")
    before = set(tmp_path.rglob("*"))
    source = _check_bit_exact(tmp_path, proto, model)
    created = {p.name for p in set(tmp_path.rglob("*")) - before}
    assert "PWNED" not in created and not (Path.cwd() / "PWNED").exists()
    assert created == {"out", "hostile.py", "hostile.pth", "inputs.npz", "outputs.npz",
                       "runner.py"}
    tree = ast.parse(source)
    assert ast.get_docstring(tree).isascii()
    # every Caffe name survives exactly: as a string constant, or as a comment on its line
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and isinstance(n.value, str)}
    net = load_net(proto)
    names = {layer.name for layer in net.layers if layer.type != "Input"} - {"relu"}
    shown = {n for n in names if f"  # {n}\n" in source or f"        self.{n} = " in source}
    assert names <= strings | shown, names - strings - shown
    assert "da\"ta\n__import__('os').system('touch PWNED')" in strings


def test_build_without_weights_file(tmp_path: Path) -> None:
    proto, _ = _write_net(tmp_path, SMALL, "small")
    gen = generate(load_net(proto))
    namespace: dict[str, object] = {}
    exec(compile(gen.source, "generated.py", "exec"), namespace)  # noqa: S102
    model = namespace["build"]()
    assert isinstance(model, nn.Module) and not model.training
    assert set(model.state_dict()) == set(gen.module.state_dict())


def test_se_resnet50_bit_exact(shared_dir: Path, tmp_path: Path) -> None:
    """Bit-exact, and code a PyTorch user keeps: importable file name, torch's own modules,
    a forward without del lines, names as comments, the class named after the net."""
    text = (shared_dir / "senet" / "SE-ResNet-50.prototxt").read_text()
    proto, model = _write_net(tmp_path, text, "SE-ResNet-50")
    source = _check_bit_exact(tmp_path, proto, model)
    assert (tmp_path / "out" / "se_resnet_50.py").is_file()
    assert (tmp_path / "out" / "se_resnet_50.pth").is_file()
    assert _imported_modules(source) <= {"__future__", "torch"}
    assert "class Axpy(nn.Module):" in source
    assert "Do not edit" not in source and "\n        del " not in source
    assert "class SEResNet50(nn.Module):" in source
    assert "= nn.ReLU(" in source and "= nn.Sigmoid(" in source
    assert "class LeakyReLU" not in source and "class Sigmoid" not in source
    assert ("self.conv1_7x7_s2 = nn.Conv2d(  # conv1/7x7_s2 + conv1/7x7_s2/bn/scale\n"
            "            3, 64," in source)
    assert source.count("\n") < 1000  # no 260-line name dict, no 88 del lines


def test_unnamed_net_class_from_file_and_chosen_outputs(shared_dir: Path,
                                                        tmp_path: Path) -> None:
    """SqueezeNet has no name: the class is named after the file; --output picks the blobs."""
    from caffe_bridge.codegen import load_generated

    text = (shared_dir / "zoo" / "squeezenet_v1.1_deploy.prototxt").read_text()
    proto, model = _write_net(tmp_path, text, "squeezenet_v1.1_deploy")
    py, pth = write_module_files(proto, model, tmp_path / "out",
                                 outputs=["conv10", "pool10"])
    assert py.name == "squeezenet_v1_1_deploy.py"
    source = py.read_text()
    assert "class SqueezenetV11Deploy(nn.Module):" in source and "Caffenet" not in source
    mod = load_generated(py)
    assert mod.SqueezenetV11Deploy.OUTPUTS == ("conv10", "pool10")
    x = torch.from_numpy(random_inputs(load_net(proto), seed=1)["data"])
    got = mod.build(str(pth))(x)
    want = convert(proto, model, outputs=["conv10", "pool10"])(x)
    assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_cli_convert_output_option(shared_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from caffe_bridge.cli import main

    text = (shared_dir / "zoo" / "squeezenet_v1.1_deploy.prototxt").read_text()
    proto, model = _write_net(tmp_path, text, "sq")
    res = CliRunner().invoke(main, ["convert", str(proto), "-o", str(tmp_path / "o"),
                                    "--output", "pool10", "-q"])
    assert res.exit_code == 0, res.output
    assert "OUTPUTS = ('pool10',)" in (tmp_path / "o" / "sq.py").read_text()


def test_cli_convert_exact_option(tmp_path: Path) -> None:
    """`convert --exact` writes Caffe's order (BatchNorm kept); the default folds it. With
    `--as senet` (the idiomatic model) it is a usage error."""
    from click.testing import CliRunner

    from caffe_bridge.cli import main

    proto, _ = _write_net(tmp_path, SMALL, "small")
    for flags, folded in (([], True), (["--exact"], False)):
        res = CliRunner().invoke(main, ["convert", str(proto), "-o", str(tmp_path / "o"),
                                        "--force", "-q", *flags])
        assert res.exit_code == 0, res.output
        source = (tmp_path / "o" / "small.py").read_text()
        assert ("nn.BatchNorm2d(" not in source) == folded
        assert ("This is the fast form" in source) == folded
    res = CliRunner().invoke(main, ["convert", str(proto), "--as", "senet", "--exact"])
    assert res.exit_code == 2 and "--exact" in res.output


def test_recording_captures_constructor_calls() -> None:
    with recording() as records:
        conv = nn.Conv2d(3, 4, 3, stride=2, bias=False)
        seq = nn.Sequential(nn.ReLU(), conv)
    calls = {type(m).__name__: call for m, call in records.values()}
    assert calls["Conv2d"] == InitCall(nn.Conv2d, (3, 4, 3), {"stride": 2, "bias": False})
    assert calls["ReLU"] == InitCall(nn.ReLU, (), {})
    assert calls["Sequential"].args == (seq[0], conv)
    assert nn.Module.__init__.__qualname__ == "Module.__init__"  # restored


class NumpyScale(nn.Module):
    """A module class that needs numpy: it cannot go into a torch-only file."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(np.float32(factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_module_needing_numpy_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proto = tmp_path / "n.prototxt"
    proto.write_text('input: "x" input_shape { dim: 1 dim: 2 }\n'
                     'layer { name: "a" type: "AbsVal" bottom: "x" top: "y" }\n')
    registry = converters.REGISTRY
    monkeypatch.setitem(registry._by_type, "AbsVal", dataclasses.replace(
        registry._by_type["AbsVal"], fn=lambda layer, net: NumpyScale(2.0)))
    with pytest.raises(CodegenError, match="numpy"):
        generate(load_net(proto))


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("SE-ResNet-50", "SE-ResNet-50", id="plain"),
        pytest.param('a"""b', "a???b", id="triple-quote"),
        pytest.param("x\ny\\z", "x?y?z", id="newline-backslash"),
        pytest.param("é\u202e", "??", id="unicode-bidi"),
    ],
)
def test_display_text_whitelist(text: str, shown: str) -> None:
    assert display_text(text) == shown


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    proto, model = _write_net(tmp_path, SMALL, "small")
    out = tmp_path / "out"
    out.mkdir()
    (out / "small.pth").write_text("keep")
    from caffe_bridge.errors import CaffeBridgeError

    with pytest.raises(CaffeBridgeError, match="--force"):
        write_module_files(proto, model, out)
    assert (out / "small.pth").read_text() == "keep" and not (out / "small.py").exists()
    write_module_files(proto, model, out, force=True)
    assert json.dumps(sorted(p.name for p in out.iterdir())) == '["small.pth", "small.py"]'


def test_check_shares_the_weights_and_checks_the_saved_file(tmp_path: Path) -> None:
    """The self-check builds the generated model around the converted tensors (no second copy
    of the weights) and rejects a saved file whose names or values do not match."""
    proto, model = _write_net(tmp_path, SMALL, "small")
    py, pth = write_module_files(proto, model, tmp_path / "out")
    net = load_net(proto, model)
    reference = codegen.generate(net).module  # the fast form's modules, NCHW as written
    module = codegen.load_generated(py)
    built = codegen._generated_model(module, reference)
    ptrs = {t.data_ptr() for t in reference.state_dict().values()}
    assert {t.data_ptr() for t in built.state_dict().values()} == ptrs
    codegen.check_generated(py, pth, reference, net)  # the file as written passes
    state = torch.load(pth, weights_only=True)
    weight = next(k for k in state if k.endswith("weight"))
    bad = dict(state)
    bad[weight] = state[weight].clone()
    bad[weight].view(-1)[-1] += 1.0  # the last value: only the tail is sampled in big tensors
    torch.save(bad, pth)
    with pytest.raises(CodegenError, match="differs from the converted model"):
        codegen.check_generated(py, pth, reference, net)
    renamed = {("x" + k if k == weight else k): v for k, v in state.items()}
    torch.save(renamed, pth)
    with pytest.raises(CodegenError, match="does not match the generated model"):
        codegen.check_generated(py, pth, reference, net)


REPEATED_NAMES = """
name: "repeated"
input: "data"
input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
layer { name: "p" type: "Power" bottom: "data" top: "a" power_param { scale: 2 } }
layer { name: "p" type: "Power" bottom: "data" top: "b" power_param { shift: 1 } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
"""


def test_layers_sharing_a_name_keep_their_own_tops(tmp_path: Path) -> None:
    """Two layers named alike (HED's five 'crop' layers): each statement binds its own top, so
    the concat reads both (the name used to resolve to the last layer: 'b' twice)."""
    proto, model = _write_net(tmp_path, REPEATED_NAMES, "repeated")
    source = _check_bit_exact(tmp_path, proto, model)
    assert "self.cat(a, b)" in source


ROIS_INPUT = """
name: "fast_rcnn_head"
input: "data"
input_shape { dim: 1 dim: 2 dim: 8 dim: 8 }
input: "rois"
input_shape { dim: 3 dim: 5 }
layer { name: "roi_pool" type: "ROIPooling" bottom: "data" bottom: "rois" top: "pool"
  roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 1 } }
"""


def test_rois_input_is_checked_without_random_boxes(tmp_path: Path) -> None:
    """rois as a net input (Fast R-CNN): N(0, 1) values are no boxes (negative batch indices).
    The layer check and the whole-file run cannot feed them, so the file is written with a
    warning saying what was not run, and it computes as convert does on real boxes."""
    from caffe_bridge.errors import CaffeBridgeWarning

    proto, model = _write_net(tmp_path, ROIS_INPUT, "head")
    with pytest.warns(CaffeBridgeWarning, match="not run as a whole"):
        py, pth = write_module_files(proto, model, tmp_path / "out")
    x = torch.from_numpy(random_inputs(load_net(proto), seed=3)["data"])
    rois = torch.tensor([[0, 0, 0, 7, 7], [0, 2, 1, 5, 6], [0, 3, 3, 3, 3]], dtype=torch.float32)
    got = codegen.load_generated(py).build(str(pth))(x, rois)
    want = convert(proto, model)(x, rois)
    assert got.shape == (3, 2, 2, 2) and torch.equal(got, want)
