"""Definitions written for Caffe forks load: unknown fields, messages and enum values are skipped
with one located warning each; only malformed text is an error."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
from google.protobuf import text_format

from caffe_bridge import load_net, schema
from caffe_bridge.errors import (
    CaffeBridgeWarning,
    CaffemodelError,
    PrototxtError,
    UnsupportedLayerError,
)
from caffe_bridge.prototxt import parse_prototxt_text
from caffe_bridge.upgrade import _rule_met, upgrade

HEAD = 'name: "fork"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'


def _load(tmp_path: Path, text: str, **kwargs: object) -> tuple[object, list[str]]:
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = load_net(path, **kwargs)  # type: ignore[arg-type]
    messages = [str(w.message) for w in caught if issubclass(w.category, CaffeBridgeWarning)]
    return net, messages


def test_fork_param_block_and_extra_fields_are_skipped_with_file_line_and_path(
    tmp_path: Path,
) -> None:
    text = HEAD + (
        'layer {\n'                                                          # 4
        '  name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'    # 5
        '  convolution_param { num_output: 4 kernel_size: 3 fork_knob: 7 }\n'  # 6
        '  my_bn_param { scale_filler { type: "constant" value: 1 } slope: [1, 2] }\n'  # 7
        '}\n'
        'fork_net_option: "x"\n'                                             # 9
    )
    net, messages = _load(tmp_path, text)
    assert net.blobs["conv"].shape == (1, 4, 6, 6)
    path = tmp_path / "net.prototxt"
    assert len(messages) == 3
    assert f"{path}:6: layer 'conv': unknown field layer.convolution_param.fork_knob" \
        in messages[0]
    assert f"{path}:7: layer 'conv': unknown field layer.my_bn_param" in messages[1]
    assert f"{path}:9: unknown field fork_net_option" in messages[2]


def test_one_warning_per_distinct_field_however_often_it_occurs(tmp_path: Path) -> None:
    layers = "".join(
        f'layer {{ name: "r{i}" type: "ReLU" bottom: "data" top: "r{i}" '
        f'relu_param {{ negative_slope: 0 }} my_upsample_param {{ scale: 2 }} }}\n'
        for i in range(5))
    _, messages = _load(tmp_path, HEAD + layers)
    assert len(messages) == 1
    assert ":4: layer 'r0': unknown field layer.my_upsample_param skipped" in messages[0]
    assert "and 4 more time(s)" in messages[0]


def test_unknown_enum_value_is_skipped_and_the_field_keeps_its_default(tmp_path: Path) -> None:
    text = HEAD + ('layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n'
                   '  pooling_param { pool: FANCY kernel_size: 2 stride: 2 } }\n')
    net, messages = _load(tmp_path, text)
    assert net.layer("p").param.pooling_param.pool == schema.PoolingParameter.MAX
    assert len(messages) == 1
    assert ":5: layer 'p': unknown value FANCY of enum field layer.pooling_param.pool" \
        in messages[0]


def test_text_format_variants_fill_the_same_message() -> None:
    canonical = ('layer { name: "c" type: "Convolution" convolution_param '
                 '{ num_output: 2 kernel_size: 3 kernel_size: 5 bias_term: false } }')
    variant = ("layer: < name: 'c' type: \"Convo\" \"lution\"; convolution_param: "
               "{ num_output: 0x2, kernel_size: [3, 5] bias_term: f } >  # comment")
    ours = parse_prototxt_text(variant, "<v>").net
    theirs = schema.NetParameter()
    text_format.Parse(canonical, theirs)
    assert ours == theirs


def test_numbers_as_protobuf_reads_them() -> None:
    net = parse_prototxt_text(
        'layer { name: "p" type: "Power" power_param { power: 2.5f scale: -1e-2 shift: inf } }',
        "<n>").net
    pp = net.layer[0].power_param
    assert (pp.power, round(pp.scale, 6), pp.shift) == (2.5, -0.01, float("inf"))


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        pytest.param('layer {\n  name: "a"\n  type "ReLU"\n}\n', 3, 'expected ":"',
                     id="missing-colon"),
        pytest.param('layer {\n  name: "a"\n}\n}\n', 4, "field name", id="extra-brace"),
        pytest.param('layer {\n  convolution_param { num_output: 1.5 }\n}\n', 2,
                     "expected an integer", id="float-for-int"),
        pytest.param('layer {\n  convolution_param { num_output: -1 }\n}\n', 2,
                     "out of range", id="negative-uint"),
        pytest.param('layer {\n  fork_param { a: { b: 1 }\n}\n', 3, 'Expected "}"',
                     id="unclosed-unknown-block"),
        pytest.param('layer {\n  name: "a" @\n}\n', 2, "unexpected character",
                     id="bad-character"),
    ],
)
def test_only_real_syntax_errors_are_errors(text: str, line: int, fragment: str) -> None:
    with pytest.raises(PrototxtError) as info:
        parse_prototxt_text(text, "<t>")
    assert str(info.value).startswith(f"<t>:{line}:"), str(info.value)
    assert fragment in str(info.value)


V1_FORK = """name: "v1fork"
layers {
  name: "data"
  type: IMAGE_SEG_DATA
  top: "data"
  top: "label"
  transform_param { crop_size: 9 mean_value: 1 mean_value: 2 mean_value: 3 }
  image_data_param { source: "list.txt" batch_size: 2 }
}
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
         convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "bn" type: BATCH_NORM bottom: "conv" top: "conv"
         batch_norm_param { use_global_stats: true eps: 0.001 } }
layers { name: "%s" type: %s bottom: "conv" top: "out" }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "out" bottom: "label" }
"""


def test_v1_fork_enums_data_layer_becomes_input_and_fork_params_are_kept(
    tmp_path: Path,
) -> None:
    net, messages = _load(tmp_path, V1_FORK % ("relu", "RELU"))
    assert dict(net.inputs) == {"data": (2, 3, 9, 9)}
    bn = net.layer("bn")
    assert bn.type == "BatchNorm"  # BATCH_NORM: a known type spelled the V1 way
    assert bn.param.batch_norm_param.use_global_stats
    assert bn.param.batch_norm_param.eps == pytest.approx(0.001)
    assert [d.name for d in net.dropped] == ["loss"]
    assert not any("unknown field" in m for m in messages)


def test_v1_fork_enum_of_an_unknown_layer_fails_as_unsupported_by_name(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text(V1_FORK % ("fancy", "FANCY_LAYER"))
    match = r"net.prototxt:14: layer 'fancy' \(FANCY_LAYER\): layer type"
    with pytest.raises(UnsupportedLayerError, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_net(path)


@pytest.mark.parametrize(
    ("rule", "met"),
    [
        ("phase: TEST", True), ("phase: TRAIN", False), ("min_level: 0", True),
        ("min_level: 1", False), ("max_level: 0", True), ("max_level: -1", False),
        ('stage: "deploy"', False), ('not_stage: "deploy"', True),
    ],
)
def test_net_state_rules_for_phase_test_level_0_no_stage(rule: str, met: bool) -> None:
    r = schema.NetStateRule()
    text_format.Parse(rule, r)
    assert _rule_met(r) is met


def test_stages_come_from_the_files_own_state() -> None:
    text = ('state { stage: "deploy" }\ninput: "x" input_dim: 1 input_dim: 1 input_dim: 2 '
            'input_dim: 2\n'
            'layer { name: "d" type: "ReLU" bottom: "x" top: "d" include { stage: "deploy" } }\n'
            'layer { name: "t" type: "ReLU" bottom: "x" top: "t" '
            'exclude { stage: "deploy" } }\n')
    names = [r.param.name for r in upgrade(parse_prototxt_text(text, "<s>"))]
    assert names == ["input", "d"]


def test_repeated_layer_names_load_with_one_warning(tmp_path: Path) -> None:
    text = HEAD + "".join(
        f'layer {{ name: "crop" type: "ReLU" bottom: "data" top: "r{i}" }}\n' for i in range(3))
    net, messages = _load(tmp_path, text)
    assert [layer.name for layer in net.layers] == ["input", "crop", "crop", "crop"]
    assert messages == [f"{tmp_path / 'net.prototxt'}: layer names used more than once: 'crop' "
                        f"at lines 4, 5, 6. Caffe accepts this; weights of a name go to the "
                        f"first layer so named only (net.cpp CopyTrainedLayersFrom)"]


def test_weights_of_a_repeated_name_go_to_the_first_layer_only(tmp_path: Path) -> None:
    import numpy as np

    from caffe_bridge.ir import build_net

    text = HEAD + "".join(
        f'layer {{ name: "s" type: "Scale" bottom: "data" top: "s{i}" '
        f'scale_param {{ bias_term: false }} }}\n' for i in range(2))
    parsed = parse_prototxt_text(text, "<w>")
    weights = {"s": [np.full(3, 2.0, np.float32)]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CaffemodelError, match=r"^<w>:5: layer 's' \(Scale\): a second "
                                                  r"layer of this name"):
            build_net(upgrade(parsed), source="<w>", weights=weights)


def test_layer_without_name_or_type_is_a_prototxt_error() -> None:
    from tests.helpers.layer_check import net_from_text

    with pytest.raises(PrototxtError, match=r"^<test>:1: layer type 'ReLU': layer has no name"):
        net_from_text('layer { type: "ReLU" }')
    with pytest.raises(PrototxtError, match=r"^<test>:1: layer 'a': layer has no type"):
        net_from_text('layer { name: "a" }')


def test_python_layer_without_converter_names_module_class_and_plugin_key(
    tmp_path: Path,
) -> None:
    text = HEAD + ('layer { name: "prop" type: "Python" bottom: "data" top: "rois"\n'
                   '  python_param { module: "my.layers" layer: "Magic" } }\n')
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    with pytest.raises(UnsupportedLayerError) as info:
        load_net(path)
    msg = str(info.value)
    assert f"{path}:4: layer 'prop' (Python)" in msg
    assert "'Magic' of module 'my.layers'" in msg and "'Python:my.layers.Magic'" in msg


def _big_definition(blocks: int) -> str:
    """A SENet-sized definition (~900 layers, ~150 kB), written like the released ones."""
    out = ['name: "big"\nlayer {\n  name: "data"\n  type: "Input"\n  top: "data"\n'
           '  input_param {\n    shape {\n      dim: 1\n      dim: 3\n      dim: 224\n'
           '      dim: 224\n    }\n  }\n}\n']
    for i in range(blocks):
        out.append(
            f'layer {{\n  name: "conv{i}"\n  type: "Convolution"\n  bottom: "data"\n'
            f'  top: "conv{i}"\n  convolution_param {{\n    num_output: 64\n'
            f'    bias_term: false\n    pad: 1\n    kernel_size: 3\n    stride: 1\n  }}\n}}\n'
            f'layer {{\n  name: "bn{i}"\n  type: "BatchNorm"\n  bottom: "conv{i}"\n'
            f'  top: "conv{i}"\n  batch_norm_param {{\n    use_global_stats: true\n'
            f'    eps: 1e-05\n  }}\n}}\n'
            f'layer {{\n  name: "relu{i}"\n  type: "ReLU"\n  bottom: "conv{i}"\n'
            f'  top: "conv{i}"\n}}\n')
    return "".join(out)


def test_parsing_stays_fast() -> None:
    """Within 2x of protobuf's own text_format (measured: about 0.5x on SENet-154)."""
    text = _big_definition(300)

    def best(fn: object) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - start)
        return min(times)

    ours = best(lambda: parse_prototxt_text(text, "<s>"))
    theirs = best(lambda: text_format.Parse(text, schema.NetParameter()))
    assert ours < 2 * theirs + 0.02, (ours, theirs)


def test_first_layer_of_a_repeated_name_gets_the_weights() -> None:
    import numpy as np

    from caffe_bridge.ir import build_net

    text = HEAD + ('layer { name: "s" type: "Scale" bottom: "data" top: "s" '
                   'scale_param { bias_term: false } }\n'
                   'layer { name: "s" type: "ReLU" bottom: "s" top: "r" }\n')
    parsed = parse_prototxt_text(text, "<w>")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_net(upgrade(parsed), source="<w>", weights={"s": [np.ones(3, np.float32)]})
    assert [len(layer.blobs) for layer in net.layers] == [0, 1, 0]
    assert net.layer("s").type == "ReLU"  # lookup by name: the last, as Caffe's layer_by_name


def test_python_layer_with_a_registered_converter_converts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import caffe_bridge
    from caffe_bridge import converters

    monkeypatch.setattr(converters.REGISTRY, "_by_type", dict(converters.REGISTRY._by_type))

    class _Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    @caffe_bridge.register("Python:my.layers.Magic")
    def convert_magic(layer: object, net: object) -> torch.nn.Module:
        """my.layers.Magic: doubles (test Python layer)."""
        return _Double()

    text = HEAD + ('layer { name: "magic" type: "Python" bottom: "data" top: "out"\n'
                   '  python_param { module: "my.layers" layer: "Magic" } }\n')
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    model = caffe_bridge.convert(path)
    x = torch.ones(1, 3, 8, 8)
    torch.testing.assert_close(model(x), 2 * x)
