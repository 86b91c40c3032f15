"""Train/test definitions convert: data layers become inputs, training layers are dropped."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from caffe_bridge import convert, load_net
from caffe_bridge.cli import main
from caffe_bridge.errors import CaffeBridgeWarning, PrototxtError

FIXTURES = Path(__file__).parent / "fixtures"

TRAIN_VAL = """name: "TinyTrainVal"
layer {
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  include { phase: TRAIN }
  transform_param { mirror: true crop_size: 11 mean_value: 104 mean_value: 117 mean_value: 123 }
  data_param { source: "train_lmdb" batch_size: 64 backend: LMDB }
}
layer {
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  include { phase: TEST }
  transform_param { mirror: false crop_size: 11 mean_value: 104 mean_value: 117 mean_value: 123 }
  data_param { source: "val_lmdb" batch_size: 10 backend: LMDB }
}
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 5 } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def _write(tmp_path: Path, text: str, name: str = "train_val.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _load(path: Path, **kwargs: object) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = load_net(path, **kwargs)  # type: ignore[arg-type]
    return net, [str(w.message) for w in caught if issubclass(w.category, CaffeBridgeWarning)]


def test_train_val_becomes_the_deploy_net_with_one_note(tmp_path: Path) -> None:
    path = _write(tmp_path, TRAIN_VAL)
    net, notes = _load(path)
    assert dict(net.inputs) == {"data": (10, 3, 11, 11)}  # TEST phase data layer, crop 11
    assert [layer.name for layer in net.layers] == ["data", "conv1", "relu1", "fc"]
    assert net.outputs == ("fc",)
    assert [(d.name, d.type, d.line) for d in net.dropped] == [
        ("accuracy", "Accuracy", 26), ("loss", "SoftmaxWithLoss", 28)]
    [made] = net.created_inputs
    assert (made.name, made.layer, made.layer_type, made.shape) == ("data", "data", "Data",
                                                                    (10, 3, 11, 11))
    assert "crop_size" in made.source and "data_param.batch_size" in made.source
    assert len(notes) == 1
    note = notes[0]
    assert note.startswith(f"{path}: dropped 2 layer(s)")
    assert "'accuracy' (Accuracy, line 26)" in note and "'loss' (SoftmaxWithLoss, line 28)" in note
    assert "its scores 'fc' are an output, without the softmax" in note


def test_user_shape_fills_what_the_definition_does_not_state(tmp_path: Path) -> None:
    text = TRAIN_VAL.replace("mean_value: 104 mean_value: 117 mean_value: 123",
                             'mean_file: "mean.binaryproto"')
    path = _write(tmp_path, text)
    with pytest.raises(PrototxtError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_net(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:11: layer 'data' (Data): data layer's top 'data' has no "
                          f"shape")
    assert "input_shapes={'data': (N, C, H, W)}" in msg and "--input-shape data=N,C,H,W" in msg
    net, _ = _load(path, input_shapes={"data": (2, 3, 13, 13)})
    assert dict(net.inputs) == {"data": (2, 3, 13, 13)}
    assert net.blobs["conv1"].shape == (2, 4, 11, 11)
    assert net.created_inputs[0].source == "given shape"


def test_user_shape_for_a_name_that_is_not_an_input_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, TRAIN_VAL)
    with pytest.raises(PrototxtError, match="no input of that name; its inputs: data"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_net(path, input_shapes={"image": (1, 3, 11, 11)})


def test_convert_takes_input_shapes_and_runs(tmp_path: Path) -> None:
    path = _write(tmp_path, TRAIN_VAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert(path, input_shapes={"data": (1, 3, 15, 15)})
    assert model(torch.zeros(3, 3, 15, 15)).shape == (3, 5)


DATA_KINDS = """name: "kinds"
layer { name: "dummy" type: "DummyData" top: "a" top: "b"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } shape { dim: 2 dim: 1 } } }
layer { name: "mem" type: "MemoryData" top: "m" top: "mlabel"
  memory_data_param { batch_size: 2 channels: 1 height: 4 width: 4 } }
layer { name: "legacy" type: "DummyData" top: "c"
  dummy_data_param { num: 2 channels: 5 height: 4 width: 4 } }
layer { name: "img" type: "ImageData" top: "i" top: "ilabel"
  image_data_param { source: "l.txt" batch_size: 2 new_height: 4 new_width: 4 is_color: false } }
layer { name: "ssd" type: "AnnotatedData" top: "s" top: "slabel"
  transform_param { mean_value: 104 mean_value: 117 mean_value: 123
    resize_param { prob: 1 resize_mode: WARP height: 4 width: 4 interp_mode: LINEAR } }
  data_param { source: "lmdb" batch_size: 2 }
  annotated_data_param { batch_sampler { max_sample: 1 } label_map_file: "labels.prototxt" } }
layer { name: "py" type: "Python" top: "p" python_param { module: "roi_data" layer: "Data" } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "m" bottom: "c" bottom: "i" bottom: "s"
  bottom: "p" top: "cat" }
layer { name: "silence" type: "Silence" bottom: "b" }
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "cat" bottom: "slabel" top: "l1" }
layer { name: "acc" type: "Accuracy" bottom: "cat" bottom: "mlabel" top: "l2" }
"""


def test_every_data_kind_takes_its_stated_shape(tmp_path: Path) -> None:
    path = _write(tmp_path, DATA_KINDS)
    net, notes = _load(path, input_shapes={"p": (2, 1, 4, 4)})
    assert dict(net.inputs) == {"a": (2, 3, 4, 4), "m": (2, 1, 4, 4), "c": (2, 5, 4, 4),
                                "i": (2, 1, 4, 4), "s": (2, 3, 4, 4), "p": (2, 1, 4, 4)}
    assert net.blobs["cat"].shape == (2, 14, 4, 4)
    # b is read only by the dropped Silence: not an input, and Silence keeps it from the outputs
    assert net.outputs == ("cat",)
    assert {d.name for d in net.dropped} == {"silence", "mbox_loss", "acc"}
    sources = {c.name: c.source for c in net.created_inputs}
    assert sources["a"] == "dummy_data_param.shape"
    assert sources["m"] == "memory_data_param"
    assert sources["s"].endswith("transform_param.resize_param")
    assert any("unknown field layer.annotated_data_param" in n for n in notes)


def test_label_only_layers_go_with_the_losses(tmp_path: Path) -> None:
    text = TRAIN_VAL.replace(
        'layer { name: "accuracy"',
        'layer { name: "label_small" type: "Pooling" bottom: "label" top: "label_small"\n'
        '  pooling_param { pool: MAX kernel_size: 1 } }\n'
        'layer { name: "seg_acc" type: "SegAccuracy" bottom: "fc" bottom: "label_small" '
        'top: "sa" }\nlayer { name: "accuracy"')
    net, _ = _load(_write(tmp_path, text))
    assert [(d.name, d.reason) for d in net.dropped] == [
        ("label_small", "reads only labels"), ("seg_acc", "training layer"),
        ("accuracy", "training layer"), ("loss", "training layer")]
    assert list(net.inputs) == ["data"]


def test_shipped_train_phase_fixture_keeps_its_deploy_input() -> None:
    net, notes = _load(FIXTURES / "train_phase_layers.prototxt")
    assert dict(net.inputs) == {"data": (1, 1, 28, 28)}
    assert net.outputs == ("prob",)
    assert net.dropped == () and net.created_inputs == () and notes == []


def test_input_shape_option_and_inspect_json(tmp_path: Path) -> None:
    text = TRAIN_VAL.replace("mean_value: 104 mean_value: 117 mean_value: 123", "")
    path = _write(tmp_path, text)
    runner = CliRunner()
    failed = runner.invoke(main, ["convert", str(path), "--no-weights", "-o", str(tmp_path)])
    assert failed.exit_code == 2
    assert "--input-shape data=N,C,H,W" in failed.output
    partial = runner.invoke(main, ["inspect", str(path)])
    assert partial.exit_code == 0 and "inputs: data ?" in partial.stdout
    result = runner.invoke(main, ["inspect", "--json", str(path), "--input-shape",
                                  "data=1,3,11,11"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["inputs"] == {"data": [1, 3, 11, 11]}
    assert data["outputs"] == ["fc"]
    assert [d["name"] for d in data["dropped_layers"]] == ["accuracy", "loss"]
    assert data["created_inputs"] == [{"name": "data", "layer": "data", "layer_type": "Data",
                                       "shape": [1, 3, 11, 11], "shape_from": "given shape"}]
    text_out = runner.invoke(main, ["inspect", str(path), "--input-shape", "data=1,3,11,11"])
    assert "dropped (not in a deploy net): accuracy (Accuracy), loss (SoftmaxWithLoss)" \
        in text_out.stdout
    assert "input data made from data layer data (Data), shape from given shape" \
        in text_out.stdout
    bad = runner.invoke(main, ["inspect", str(path), "--input-shape", "data=1,x"])
    assert bad.exit_code == 2 and "expected NAME=N,C,H,W" in bad.output


@pytest.mark.parametrize("command", ["convert", "export", "verify", "eval"])
def test_every_net_loading_command_has_the_input_shape_option(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert "--input-shape NAME=N,C,H,W" in result.output


def test_deploy_definition_is_the_deploy_net_as_text(tmp_path: Path) -> None:
    from caffe_bridge.deploy import deploy_definition

    net = deploy_definition(_write(tmp_path, TRAIN_VAL))
    assert [(layer.name, layer.type) for layer in net.layer] == [
        ("data", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("fc", "InnerProduct")]
    assert list(net.layer[0].input_param.shape[0].dim) == [10, 3, 11, 11]


def test_a_silenced_only_result_stays_the_output(tmp_path: Path) -> None:
    text = ('input: "x" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 3\n'
            'layer { name: "r" type: "ReLU" bottom: "x" top: "r" }\n'
            'layer { name: "Silence" type: "Silence" bottom: "r" }\n')
    net, _ = _load(_write(tmp_path, text))
    assert net.outputs == ("r",)


def test_opencv_reads_the_deploy_form_of_a_train_val_file(tmp_path: Path) -> None:
    from caffe_bridge.deploy import default_input_shapes
    from caffe_bridge.opencv_reference import opencv_definition, opencv_forward
    from caffe_bridge.random_weights import random_inputs, random_weights

    pytest.importorskip("cv2")
    path = _write(tmp_path, TRAIN_VAL)
    text = opencv_definition(path)
    assert text is not None and 'type: "Input"' in text and "SoftmaxWithLoss" not in text
    with warnings.catch_warnings(), default_input_shapes({"data": (1, 3, 11, 11)}):
        warnings.simplefilter("ignore")
        net = load_net(path)
        inputs = random_inputs(net, seed=0)
        got = opencv_forward(path, random_weights(net, seed=0), inputs)
    assert got["fc"].shape == (1, 5)


def test_inspect_gives_a_partial_table_for_unsupported_types_and_unknown_shapes(
    tmp_path: Path,
) -> None:
    text = TRAIN_VAL.replace("mean_value: 104 mean_value: 117 mean_value: 123", "").replace(
        'layer { name: "fc" type: "InnerProduct"',
        'layer { name: "perm" type: "FancyFork" bottom: "conv1" top: "p" }\n'
        'layer { name: "fc" type: "InnerProduct"')
    path = _write(tmp_path, text)
    runner = CliRunner()
    data = json.loads(runner.invoke(main, ["inspect", "--json", str(path)]).stdout)
    assert data["created_inputs"][0]["shape"] == []
    assert data["created_inputs"][0]["shape_from"] == "unknown (give --input-shape)"
    assert [r["top_shapes"] for r in data["layers"]] == [None] * 5
    given = runner.invoke(main, ["inspect", "--json", str(path), "--input-shape",
                                 "data=1,3,11,11"])
    data = json.loads(given.stdout)
    shapes = {r["name"]: r["top_shapes"] for r in data["layers"]}
    assert shapes["conv1"] == [[1, 4, 9, 9]] and shapes["perm"] is None
    assert data["unsupported"] == [{"name": "perm", "type": "FancyFork",
                                    "message": "no converter for 'FancyFork'"}]
    assert set(data["outputs"]) == {"fc", "p"}
    shown = runner.invoke(main, ["inspect", str(path), "--input-shape", "data=1,3,11,11"])
    assert shown.exit_code == 0
    assert "not convertible yet: FancyFork: perm; shapes after it unknown (?)" in shown.stdout
