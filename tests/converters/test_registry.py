"""The converter registry: coverage by reference tests, unknown types, user converters, plugins,
and the generated support table."""

from __future__ import annotations

import ast
import dataclasses
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_bridge
from caffe_bridge import converters, shapes
from caffe_bridge.build import build_module, convert
from caffe_bridge.converters.registry import ENTRY_POINT_GROUP, Registry
from caffe_bridge.errors import (
    CaffeBridgeError,
    CaffeBridgeWarning,
    ShapeError,
    UnsupportedLayerError,
)
from caffe_bridge.ir import with_weights
from caffe_bridge.support import support_table
from tests import reference
from tests.helpers.layer_check import net_from_text

HERE = Path(__file__).resolve().parent

NET_HEAD = 'name: "t"\nlayer { name: "in" type: "Input" top: "data" ' \
           "input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }\n"


def _literal_types(node: ast.expr) -> set[str]:
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("set", "frozenset"):
        return set(ast.literal_eval(node.args[0])) if node.args else set()
    return set(ast.literal_eval(node))


def collect_covers() -> dict[Path, set[str]]:
    """``COVERS = {...}`` of every test module beside this one (parsed, not imported)."""
    found: dict[Path, set[str]] = {}
    for path in sorted(HERE.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "COVERS" for t in stmt.targets):
                found[path] = _literal_types(stmt.value)
    return found


def test_every_registered_type_has_a_reference_and_a_layer_test() -> None:
    registered = set(converters.REGISTRY.types())
    no_reference = sorted(registered - reference.SUPPORTED)
    covered = set().union(*collect_covers().values())
    untested = sorted(registered - covered)
    assert not no_reference, f"registered types the numpy reference lacks: {no_reference}"
    assert not untested, (f"registered types no tests/converters module lists in COVERS "
                          f"(with a check_layer test): {untested}")


def _strings_outside_covers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    covers = [s for s in tree.body if isinstance(s, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "COVERS" for t in s.targets)]
    skip = {id(n) for stmt in covers for n in ast.walk(stmt)}
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip}


def _written(layer_type: str, strings: set[str]) -> bool:
    """``layer_type`` appears in a snippet; a ``Python:<module>.<layer>`` key as its module and
    class in a Python layer's python_param."""
    if layer_type.startswith("Python:"):
        module, _, cls = layer_type[len("Python:"):].rpartition(".")
        return any(f'module: "{module}"' in s and f'layer: "{cls}"' in s for s in strings)
    return layer_type in strings or any(f'type: "{layer_type}"' in s for s in strings)


@pytest.mark.parametrize("path", sorted(collect_covers()), ids=lambda p: p.name)
def test_covers_are_backed_by_check_layer_prototxts(path: Path) -> None:
    """Each type a module claims is written in its prototxt snippets (``type: "T"``, or passed to
    a snippet helper as ``"T"``), and the module runs check_layer."""
    assert "check_layer(" in path.read_text(encoding="utf-8"), \
        f"{path.name} declares COVERS but never calls check_layer"
    strings = _strings_outside_covers(path)
    missing = sorted(t for t in collect_covers()[path] if not _written(t, strings))
    assert not missing, f"{path.name} lists {missing} in COVERS without a prototxt using them"


FORK_NET = """name: "dcn_head"
layer { name: "in" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }

layer {
  name: "res5_dcn"
  type: "DeformableConvolution"
  bottom: "data"
  top: "prior"
  deformable_convolution_param { num_output: 8 kernel_size: 3 }
}
"""


def test_unknown_layer_type_names_file_line_layer_and_supported_types(tmp_path: Path) -> None:
    path = tmp_path / "dcn.prototxt"
    path.write_text(FORK_NET, encoding="utf-8")
    with pytest.raises(UnsupportedLayerError) as info:
        convert(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:6: layer 'res5_dcn' (DeformableConvolution): "), msg
    assert "DeformableConvolution" in info.value.message and "supported" in msg
    assert all(t in msg for t in ("Convolution", "ReLU", "Softmax", "Axpy")), msg
    assert (info.value.line, info.value.layer, info.value.layer_type) == (
        6, "res5_dcn", "DeformableConvolution")


def test_type_without_converter_is_reported_by_the_registry() -> None:
    """A type the shape rules know but no converter handles fails in convert, not silently."""
    net = net_from_text(NET_HEAD + 'layer { name: "act" type: "TanH" bottom: "data" top: "o" }')
    odd = dataclasses.replace(net.layers[1], type="NoSuchFork")
    net = dataclasses.replace(net, layers=(net.layers[0], odd))
    with pytest.raises(UnsupportedLayerError) as info:
        build_module(net)
    msg = str(info.value)
    assert msg.startswith("<test>:3: layer 'act' (NoSuchFork): no converter"), msg
    assert "Axpy, BN, BNLL" in msg and "caffe_bridge.register" in msg


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made in the test are dropped afterwards; plugins are rescanned."""
    monkeypatch.setattr(converters.REGISTRY, "_by_type", dict(converters.REGISTRY._by_type))
    converters.load_plugins.cache_clear()
    yield
    converters.load_plugins.cache_clear()


class _AffineFork(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * x + 1


@pytest.mark.usefixtures("scratch_registry")
def test_user_converter_is_used_by_convert() -> None:
    """The README's plugin example: one decorated function adds a layer type; its shapes come
    from running the module on meta tensors."""

    @caffe_bridge.register("MyFork")
    def convert_my_fork(layer: caffe_bridge.Layer, net: caffe_bridge.Net) -> torch.nn.Module:
        """MyFork: 3x + 1 (test fork layer)."""
        return _AffineFork()

    net = net_from_text(NET_HEAD + 'layer { name: "f" type: "MyFork" bottom: "data" top: "o" }'
                        '\nlayer { name: "p" type: "Pooling" bottom: "o" top: "p" '
                        'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }')
    assert net.blobs["o"].shape == (2, 3, 4, 5)
    assert net.blobs["p"].shape == (2, 3, 2, 3)  # Caffe's ceil after the plugin layer
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(convert(net, outputs=["o"])(x), 3 * x + 1)
    assert "| `MyFork` |" in support_table()


class _Stretch(torch.nn.Module):
    """Repeats the last axis ``k`` times and scales by a learned per-channel gain."""

    def __init__(self, k: int, gain: torch.Tensor) -> None:
        super().__init__()
        self.k = k
        self.gain = torch.nn.Parameter(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.k, dim=-1) * self.gain.reshape(1, -1, 1, 1)


@pytest.mark.usefixtures("scratch_registry")
def test_shape_rule_registered_with_the_converter_checks_weights() -> None:
    """A layer with weights gives its rule in the same registration; the rule's parameter
    shapes check the weights, and its errors are located at the layer."""

    def stretch_shapes(p: object, ins: list) -> shapes.LayerShapes:
        n, c, h, w = ins[0]
        if w > 100:
            raise shapes.ShapeRuleError("too wide")
        return shapes.LayerShapes(((n, c, h, 2 * w),), ((c,),))

    @caffe_bridge.register("Stretch", shape=stretch_shapes, fork="example/fork")
    def convert_stretch(layer: caffe_bridge.Layer, net: caffe_bridge.Net) -> torch.nn.Module:
        """Stretch: repeat the last axis twice, times a per-channel gain (test fork layer)."""
        gain = torch.from_numpy(layer.blobs[0]) if layer.blobs else torch.ones(3)
        return _Stretch(2, gain)

    text = NET_HEAD + 'layer { name: "s" type: "Stretch" bottom: "data" top: "o" }'
    net = net_from_text(text)
    assert net.layers[1].param_shapes == ((3,),)
    assert net.blobs["o"].shape == (2, 3, 4, 10)
    gain = np.array([1.0, 2.0, -3.0], np.float32)
    model = convert(with_weights(net, {"s": [gain]}))
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(x), x.repeat_interleave(2, -1) * torch.tensor(gain)[:, None,
                                                                                         None])
    with pytest.raises(ShapeError, match="weight blob 0 has shape"):
        with_weights(net, {"s": [np.ones(4, np.float32)]})
    wide = NET_HEAD.replace("dim: 5", "dim: 101") + text[len(NET_HEAD):]
    with pytest.raises(ShapeError, match=r"^<test>:3: layer 's' \(Stretch\): too wide"):
        net_from_text(wide)
    row = next(r for r in support_table().splitlines() if r.startswith("| `Stretch` |"))
    assert "example/fork" in row


@pytest.mark.usefixtures("scratch_registry")
def test_converter_errors_are_located_and_keep_their_cause() -> None:
    """A converter raises without location; the registry names file, line, layer and type and
    chains the original error (``from err``), for ShapeRuleErrors too."""

    @caffe_bridge.register("Picky")
    def convert_picky(layer: caffe_bridge.Layer, net: caffe_bridge.Net) -> torch.nn.Module:
        """Picky: refuses odd channel counts (test)."""
        if net.blobs[layer.bottoms[0]].shape[1] % 2:
            raise shapes.ShapeRuleError("odd channel count")
        return torch.nn.Identity()

    with pytest.raises(ShapeError) as info:
        net_from_text(NET_HEAD + 'layer { name: "p" type: "Picky" bottom: "data" top: "o" }')
    assert str(info.value).startswith("<test>:3: layer 'p' (Picky): odd channel count")
    assert isinstance(info.value.__cause__, shapes.ShapeRuleError)


@pytest.mark.usefixtures("scratch_registry")
def test_re_registration_warns() -> None:
    with pytest.warns(CaffeBridgeWarning, match="layer type 'TanH': converter .* replaced"):

        @caffe_bridge.register("TanH")
        def convert_other_tanh(layer: caffe_bridge.Layer, net: caffe_bridge.Net
                               ) -> torch.nn.Module:
            """TanH replaced (test)."""
            return torch.nn.Identity()


PLUGIN_SOURCE = '''
import torch
from caffe_bridge.converters import register


class Plus42(torch.nn.Module):
    def forward(self, x):
        return x + 42


@register("TanH")
def convert_tanh_plugin(layer, net):
    """TanH replaced by a plugin (test)."""
    return Plus42()
'''


def _dist(root: Path, name: str, entry: str) -> None:
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry}\n")


@pytest.mark.usefixtures("scratch_registry")
def test_entry_point_plugins_are_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution on sys.path declaring the entry-point group is imported by convert."""
    (tmp_path / "cb_test_plugin.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    _dist(tmp_path, "cb_test_plugin", "plus42 = cb_test_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cb_test_plugin", raising=False)
    x = torch.zeros(2, 3, 4, 5)
    with pytest.warns(CaffeBridgeWarning, match="replaced by cb_test_plugin"):
        net = net_from_text(NET_HEAD + 'layer { name: "act" type: "TanH" bottom: "data" '
                            'top: "o" }')
    out = convert(net)(x)
    assert "plus42" in converters.load_plugins()
    np.testing.assert_array_equal(out.numpy(), 42.0)  # tanh(0) would be 0
    monkeypatch.delitem(sys.modules, "cb_test_plugin", raising=False)


@pytest.mark.usefixtures("scratch_registry")
def test_broken_plugin_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dist(tmp_path, "cb_broken_plugin", "broken = cb_no_such_module_here")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CaffeBridgeError, match="converter plugin 'broken'.*failed to load"):
        converters.load_plugins()


def test_support_table_lists_every_registered_type() -> None:
    table = support_table()
    lines = table.splitlines()
    assert lines[0] == "| Caffe type | Semantics from | Converter | Summary |"
    for info in converters.REGISTRY:
        row = next((ln for ln in lines if ln.startswith(f"| `{info.type}` |")), None)
        assert row is not None, info.type
        assert f"`{info.origin}`" in row and info.summary.split()[0] in row
    assert "| `Softmax` | BVLC | `caffe_bridge.converters.activation` |" in table
    assert "| `Axpy` | hujie-frank/SENet |" in table
    assert any("Input" in ln and "graph builder" in ln for ln in lines)
    refused = lines[lines.index("Not converted, by design (the error says why):"):]
    assert any(ln.startswith("- `Filter`: Filter is not convertible") for ln in refused)


def test_support_table_escapes_pipes() -> None:
    reg = Registry()

    @reg.register("Abs")
    def convert_abs(layer: caffe_bridge.Layer, net: caffe_bridge.Net) -> torch.nn.Module:
        """Absolute value |x|.

        Second line, not in the table."""
        return torch.nn.Identity()

    rows = support_table(reg).splitlines()
    assert rows[2] == f"| `Abs` | BVLC | `{__name__}` | Absolute value \\|x\\|. |"
    assert len([r for r in rows if r.startswith("|")]) == 3
