"""Tests of the Caffe schema: caffe.proto, the committed caffe.desc and caffe_bridge.schema."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from google.protobuf.descriptor import FieldDescriptor

from caffe_bridge import schema

REPO = Path(__file__).resolve().parent.parent

def _field(message: str, name: str) -> FieldDescriptor:
    return schema.message_class(message).DESCRIPTOR.fields_by_name[name]


# --------------------------------------------------------------------------- descriptor file


def _load_gen_schema():
    spec = importlib.util.spec_from_file_location("gen_schema", REPO / "scripts" / "gen_schema.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_desc_matches_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    fresh = _load_gen_schema().compile_descriptor_set(tmp_path / "caffe.desc")
    committed = (REPO / "proto" / "caffe.desc").read_bytes()
    fresh_set = descriptor_pb2.FileDescriptorSet.FromString(fresh)
    committed_set = descriptor_pb2.FileDescriptorSet.FromString(committed)
    assert committed_set == fresh_set, "proto/caffe.desc is stale: run scripts/gen_schema.py"


def test_schema_loads_the_committed_desc() -> None:
    committed = descriptor_pb2.FileDescriptorSet.FromString(
        (REPO / "proto" / "caffe.desc").read_bytes()
    )
    assert descriptor_pb2.FileDescriptorSet.FromString(schema.descriptor_set_bytes()) == committed


def test_private_pool_and_package() -> None:
    assert schema.NetParameter.DESCRIPTOR.full_name == "caffe_bridge.caffe.NetParameter"
    assert schema.pool() is not descriptor_pool.Default()
    assert schema.NetParameter.DESCRIPTOR.file.pool is schema.pool()
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("caffe_bridge.caffe.NetParameter")


def test_top_level_access() -> None:
    for name in schema.message_names():
        cls = getattr(schema, name)
        assert cls is schema.message_class(name)
        assert cls.DESCRIPTOR.name == name
    assert {"NetParameter", "LayerParameter", "V1LayerParameter", "V0LayerParameter",
            "BlobProto", "BlobShape", "PoolingParameter"} <= set(schema.message_names())
    assert "SolverParameter" not in schema.message_names()
    assert schema.Phase.Value("TRAIN") == 0
    assert schema.Phase.Value("TEST") == 1
    assert "NetParameter" in dir(schema)
    with pytest.raises(AttributeError):
        _ = schema.NoSuchMessage
    with pytest.raises(KeyError):
        schema.message_class("NoSuchMessage")
    # Nested messages share classes with their parent's fields.
    net = schema.NetParameter()
    assert type(net.layer.add()) is schema.LayerParameter
    assert type(net.layers.add().layer) is schema.V0LayerParameter


# --------------------------------------------------------------------------- field numbers

# (message, field, number, repeated)
KNOWN_FIELDS = [
    ("BlobShape", "dim", 1, True),
    ("BlobProto", "num", 1, False),
    ("BlobProto", "channels", 2, False),
    ("BlobProto", "height", 3, False),
    ("BlobProto", "width", 4, False),
    ("BlobProto", "data", 5, True),
    ("BlobProto", "diff", 6, True),
    ("BlobProto", "shape", 7, False),
    ("BlobProto", "double_data", 8, True),
    ("BlobProto", "double_diff", 9, True),
    ("BlobProtoVector", "blobs", 1, True),
    ("NetParameter", "name", 1, False),
    ("NetParameter", "layers", 2, True),
    ("NetParameter", "input", 3, True),
    ("NetParameter", "input_dim", 4, True),
    ("NetParameter", "force_backward", 5, False),
    ("NetParameter", "state", 6, False),
    ("NetParameter", "debug_info", 7, False),
    ("NetParameter", "input_shape", 8, True),
    ("NetParameter", "layer", 100, True),
    ("NetState", "phase", 1, False),
    ("NetStateRule", "not_stage", 5, True),
    ("ParamSpec", "lr_mult", 3, False),
    ("ParamSpec", "decay_mult", 4, False),
    ("LayerParameter", "name", 1, False),
    ("LayerParameter", "type", 2, False),
    ("LayerParameter", "bottom", 3, True),
    ("LayerParameter", "top", 4, True),
    ("LayerParameter", "loss_weight", 5, True),
    ("LayerParameter", "param", 6, True),
    ("LayerParameter", "blobs", 7, True),
    ("LayerParameter", "include", 8, True),
    ("LayerParameter", "exclude", 9, True),
    ("LayerParameter", "phase", 10, False),
    ("LayerParameter", "propagate_down", 11, True),
    ("LayerParameter", "transform_param", 100, False),
    ("LayerParameter", "loss_param", 101, False),
    ("LayerParameter", "accuracy_param", 102, False),
    ("LayerParameter", "argmax_param", 103, False),
    ("LayerParameter", "concat_param", 104, False),
    ("LayerParameter", "contrastive_loss_param", 105, False),
    ("LayerParameter", "convolution_param", 106, False),
    ("LayerParameter", "data_param", 107, False),
    ("LayerParameter", "dropout_param", 108, False),
    ("LayerParameter", "dummy_data_param", 109, False),
    ("LayerParameter", "eltwise_param", 110, False),
    ("LayerParameter", "exp_param", 111, False),
    ("LayerParameter", "hdf5_data_param", 112, False),
    ("LayerParameter", "hdf5_output_param", 113, False),
    ("LayerParameter", "hinge_loss_param", 114, False),
    ("LayerParameter", "image_data_param", 115, False),
    ("LayerParameter", "infogain_loss_param", 116, False),
    ("LayerParameter", "inner_product_param", 117, False),
    ("LayerParameter", "lrn_param", 118, False),
    ("LayerParameter", "memory_data_param", 119, False),
    ("LayerParameter", "mvn_param", 120, False),
    ("LayerParameter", "pooling_param", 121, False),
    ("LayerParameter", "power_param", 122, False),
    ("LayerParameter", "relu_param", 123, False),
    ("LayerParameter", "sigmoid_param", 124, False),
    ("LayerParameter", "softmax_param", 125, False),
    ("LayerParameter", "slice_param", 126, False),
    ("LayerParameter", "tanh_param", 127, False),
    ("LayerParameter", "threshold_param", 128, False),
    ("LayerParameter", "window_data_param", 129, False),
    ("LayerParameter", "python_param", 130, False),
    ("LayerParameter", "prelu_param", 131, False),
    ("LayerParameter", "spp_param", 132, False),
    ("LayerParameter", "reshape_param", 133, False),
    ("LayerParameter", "log_param", 134, False),
    ("LayerParameter", "flatten_param", 135, False),
    ("LayerParameter", "reduction_param", 136, False),
    ("LayerParameter", "embed_param", 137, False),
    ("LayerParameter", "tile_param", 138, False),
    ("LayerParameter", "batch_norm_param", 139, False),
    ("LayerParameter", "elu_param", 140, False),
    ("LayerParameter", "bias_param", 141, False),
    ("LayerParameter", "scale_param", 142, False),
    ("LayerParameter", "input_param", 143, False),
    ("LayerParameter", "crop_param", 144, False),
    ("LayerParameter", "parameter_param", 145, False),
    ("LayerParameter", "recurrent_param", 146, False),
    ("LayerParameter", "swish_param", 147, False),
    ("LayerParameter", "clip_param", 148, False),
    # SSD fork
    ("LayerParameter", "permute_param", 202, False),
    ("LayerParameter", "prior_box_param", 203, False),
    ("LayerParameter", "detection_output_param", 204, False),
    ("LayerParameter", "norm_param", 206, False),
    ("ConvolutionParameter", "num_output", 1, False),
    ("ConvolutionParameter", "bias_term", 2, False),
    ("ConvolutionParameter", "pad", 3, True),
    ("ConvolutionParameter", "kernel_size", 4, True),
    ("ConvolutionParameter", "group", 5, False),
    ("ConvolutionParameter", "stride", 6, True),
    ("ConvolutionParameter", "pad_h", 9, False),
    ("ConvolutionParameter", "kernel_h", 11, False),
    ("ConvolutionParameter", "stride_h", 13, False),
    ("ConvolutionParameter", "stride_w", 14, False),
    ("ConvolutionParameter", "axis", 16, False),
    ("ConvolutionParameter", "dilation", 18, True),
    ("PoolingParameter", "pool", 1, False),
    ("PoolingParameter", "kernel_size", 2, False),
    ("PoolingParameter", "stride", 3, False),
    ("PoolingParameter", "pad", 4, False),
    ("PoolingParameter", "kernel_h", 5, False),
    ("PoolingParameter", "stride_h", 7, False),
    ("PoolingParameter", "pad_h", 9, False),
    ("PoolingParameter", "global_pooling", 12, False),
    ("PoolingParameter", "round_mode", 13, False),
    ("InnerProductParameter", "axis", 5, False),
    ("InnerProductParameter", "transpose", 6, False),
    ("BatchNormParameter", "use_global_stats", 1, False),
    ("BatchNormParameter", "eps", 3, False),
    ("ScaleParameter", "bias_term", 4, False),
    ("EltwiseParameter", "coeff", 2, True),
    ("SliceParameter", "axis", 3, False),
    ("ConcatParameter", "axis", 2, False),
    ("ConcatParameter", "concat_dim", 1, False),
    ("InputParameter", "shape", 1, True),
    ("V1LayerParameter", "layer", 1, False),
    ("V1LayerParameter", "bottom", 2, True),
    ("V1LayerParameter", "top", 3, True),
    ("V1LayerParameter", "name", 4, False),
    ("V1LayerParameter", "type", 5, False),
    ("V1LayerParameter", "blobs", 6, True),
    ("V1LayerParameter", "blobs_lr", 7, True),
    ("V1LayerParameter", "weight_decay", 8, True),
    ("V1LayerParameter", "concat_param", 9, False),
    ("V1LayerParameter", "convolution_param", 10, False),
    ("V1LayerParameter", "inner_product_param", 17, False),
    ("V1LayerParameter", "pooling_param", 19, False),
    ("V1LayerParameter", "include", 32, True),
    ("V1LayerParameter", "exclude", 33, True),
    ("V1LayerParameter", "loss_weight", 35, True),
    ("V1LayerParameter", "transform_param", 36, False),
    ("V1LayerParameter", "loss_param", 42, False),
    ("V1LayerParameter", "param", 1001, True),
    ("V1LayerParameter", "blob_share_mode", 1002, True),
    ("V0LayerParameter", "name", 1, False),
    ("V0LayerParameter", "type", 2, False),
    ("V0LayerParameter", "num_output", 3, False),
    ("V0LayerParameter", "kernelsize", 8, False),
    ("V0LayerParameter", "k", 22, False),
    ("V0LayerParameter", "blobs", 50, True),
    ("V0LayerParameter", "concat_dim", 65, False),
    ("V0LayerParameter", "hdf5_output_param", 1001, False),
    ("PriorBoxParameter", "min_size", 1, True),
    ("PriorBoxParameter", "offset", 13, False),
    ("DetectionOutputParameter", "code_type", 6, False),
    ("DetectionOutputParameter", "keep_top_k", 7, False),
    ("DetectionOutputParameter", "variance_encoded_in_target", 8, False),
    ("NormalizeParameter", "eps", 4, False),
    ("PermuteParameter", "order", 1, True),
]


@pytest.mark.parametrize(("message", "field", "number", "repeated"), KNOWN_FIELDS)
def test_field_numbers(message: str, field: str, number: int, repeated: bool) -> None:
    fd = _field(message, field)
    assert fd.number == number
    assert schema.is_repeated(fd) == repeated


@pytest.mark.parametrize("field", ["dim"])
def test_blob_shape_packed(field: str) -> None:
    assert _field("BlobShape", field).GetOptions().packed


@pytest.mark.parametrize("field", ["data", "diff", "double_data", "double_diff"])
def test_blob_proto_packed(field: str) -> None:
    assert _field("BlobProto", field).GetOptions().packed


def test_v1_layer_param_fields_mirror_v2_names() -> None:
    # upgrade.py copies *_param fields by name: every V1 one must exist in V2 with the same type.
    v2 = schema.LayerParameter.DESCRIPTOR.fields_by_name
    for fd in schema.V1LayerParameter.DESCRIPTOR.fields:
        if fd.name.endswith("_param"):
            assert fd.name in v2, fd.name
            assert v2[fd.name].message_type is fd.message_type


def test_field_numbers_unique() -> None:
    for name in schema.message_names():
        numbers = [f.number for f in schema.message_class(name).DESCRIPTOR.fields]
        assert len(numbers) == len(set(numbers)), name


# --------------------------------------------------------------------------- enums

V1_LAYER_TYPES = {
    "NONE": 0, "ACCURACY": 1, "BNLL": 2, "CONCAT": 3, "CONVOLUTION": 4, "DATA": 5, "DROPOUT": 6,
    "EUCLIDEAN_LOSS": 7, "FLATTEN": 8, "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "IM2COL": 11,
    "IMAGE_DATA": 12, "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15,
    "MULTINOMIAL_LOGISTIC_LOSS": 16, "POOLING": 17, "RELU": 18, "SIGMOID": 19, "SOFTMAX": 20,
    "SOFTMAX_LOSS": 21, "SPLIT": 22, "TANH": 23, "WINDOW_DATA": 24, "ELTWISE": 25, "POWER": 26,
    "SIGMOID_CROSS_ENTROPY_LOSS": 27, "HINGE_LOSS": 28, "MEMORY_DATA": 29, "ARGMAX": 30,
    "THRESHOLD": 31, "DUMMY_DATA": 32, "SLICE": 33, "MVN": 34, "ABSVAL": 35, "SILENCE": 36,
    "CONTRASTIVE_LOSS": 37, "EXP": 38, "DECONVOLUTION": 39,
}


def test_v1_layer_type_enum_is_complete() -> None:
    enum = schema.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"]
    assert {v.name: v.number for v in enum.values} == V1_LAYER_TYPES


@pytest.mark.parametrize(
    ("message", "enum", "values"),
    [
        ("PoolingParameter", "PoolMethod", {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}),
        ("PoolingParameter", "RoundMode", {"CEIL": 0, "FLOOR": 1}),
        ("EltwiseParameter", "EltwiseOp", {"PROD": 0, "SUM": 1, "MAX": 2}),
        ("LRNParameter", "NormRegion", {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1}),
        ("ReductionParameter", "ReductionOp", {"SUM": 1, "ASUM": 2, "SUMSQ": 3, "MEAN": 4}),
        ("ConvolutionParameter", "Engine", {"DEFAULT": 0, "CAFFE": 1, "CUDNN": 2}),
        ("FillerParameter", "VarianceNorm", {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2}),
        ("LossParameter", "NormalizationMode",
         {"FULL": 0, "VALID": 1, "BATCH_SIZE": 2, "NONE": 3}),
        ("PriorBoxParameter", "CodeType", {"CORNER": 1, "CENTER_SIZE": 2, "CORNER_SIZE": 3}),
        ("V0LayerParameter", "PoolMethod", {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}),
    ],
)
def test_nested_enums(message: str, enum: str, values: dict[str, int]) -> None:
    desc = schema.message_class(message).DESCRIPTOR.enum_types_by_name[enum]
    assert {v.name: v.number for v in desc.values} == values


# --------------------------------------------------------------------------- defaults / presence


@pytest.mark.parametrize(
    ("message", "field", "default"),
    [
        ("PoolingParameter", "pool", 0),
        ("PoolingParameter", "stride", 1),
        ("PoolingParameter", "pad", 0),
        ("PoolingParameter", "round_mode", 0),
        ("PoolingParameter", "global_pooling", False),
        ("ConvolutionParameter", "bias_term", True),
        ("ConvolutionParameter", "group", 1),
        ("ConvolutionParameter", "axis", 1),
        ("InnerProductParameter", "bias_term", True),
        ("InnerProductParameter", "axis", 1),
        ("InnerProductParameter", "transpose", False),
        ("BatchNormParameter", "eps", pytest.approx(1e-5)),
        ("BatchNormParameter", "moving_average_fraction", pytest.approx(0.999)),
        ("ScaleParameter", "axis", 1),
        ("ScaleParameter", "num_axes", 1),
        ("ScaleParameter", "bias_term", False),
        ("SoftmaxParameter", "axis", 1),
        ("ConcatParameter", "axis", 1),
        ("SliceParameter", "axis", 1),
        ("FlattenParameter", "axis", 1),
        ("FlattenParameter", "end_axis", -1),
        ("ReshapeParameter", "axis", 0),
        ("ReshapeParameter", "num_axes", -1),
        ("EltwiseParameter", "operation", 1),
        ("LRNParameter", "local_size", 5),
        ("LRNParameter", "alpha", 1.0),
        ("LRNParameter", "beta", pytest.approx(0.75)),
        ("LRNParameter", "k", 1.0),
        ("DropoutParameter", "dropout_ratio", 0.5),
        ("ReLUParameter", "negative_slope", 0.0),
        ("PReLUParameter", "channel_shared", False),
        ("CropParameter", "axis", 2),
        ("ELUParameter", "alpha", 1.0),
        ("SwishParameter", "beta", 1.0),
        ("ExpParameter", "base", -1.0),
        ("NetState", "phase", 1),
        ("FillerParameter", "type", "constant"),
        ("V0LayerParameter", "biasterm", True),
        ("V0LayerParameter", "stride", 1),
        ("PriorBoxParameter", "flip", True),
        ("PriorBoxParameter", "clip", False),
        ("PriorBoxParameter", "offset", 0.5),
        ("DetectionOutputParameter", "keep_top_k", -1),
        ("DetectionOutputParameter", "code_type", 1),
        ("NormalizeParameter", "across_spatial", True),
    ],
)
def test_defaults(message: str, field: str, default: object) -> None:
    msg = schema.message_class(message)()
    assert getattr(msg, field) == default
    assert not msg.HasField(field)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("PoolingParameter", "kernel_size"),
        ("PoolingParameter", "kernel_h"),
        ("PoolingParameter", "kernel_w"),
        ("PoolingParameter", "stride_h"),
        ("PoolingParameter", "stride_w"),
        ("PoolingParameter", "ceil_mode"),
        ("ConvolutionParameter", "kernel_h"),
        ("ConvolutionParameter", "kernel_w"),
        ("ConvolutionParameter", "stride_h"),
        ("ConvolutionParameter", "stride_w"),
        ("ConvolutionParameter", "num_output"),
        ("BatchNormParameter", "use_global_stats"),
        ("ArgMaxParameter", "axis"),
        ("ClipParameter", "min"),
        ("ClipParameter", "max"),
    ],
)
def test_no_declared_default(message: str, field: str) -> None:
    fd = _field(message, field)
    assert not fd.has_default_value
    msg = schema.message_class(message)()
    assert not msg.HasField(field)


def test_stride_h_presence_not_value() -> None:
    conv = text_format.Parse("kernel_size: 3 stride_h: 1", schema.ConvolutionParameter())
    assert conv.HasField("stride_h")
    assert not conv.HasField("stride_w")
    pool = text_format.Parse("kernel_size: 3", schema.PoolingParameter())
    assert not pool.HasField("stride_h")
    assert pool.stride == 1


# --------------------------------------------------------------------------- text format


def test_pooling_fork_ceil_mode_parses() -> None:
    net = text_format.Parse(
        'layer { name: "pool1" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 '
        "stride: 2 ceil_mode: false } }",
        schema.NetParameter(),
    )
    pp = net.layer[0].pooling_param
    assert pp.HasField("ceil_mode") and pp.ceil_mode is False
    assert not pp.HasField("round_mode")
    assert _field("PoolingParameter", "ceil_mode").number not in range(1, 100)


def test_pooling_round_mode_floor_parses() -> None:
    pp = text_format.Parse("round_mode: FLOOR", schema.PoolingParameter())
    assert pp.round_mode == schema.PoolingParameter.FLOOR == 1
    assert not pp.HasField("ceil_mode")


def test_v2_net_parses_and_round_trips() -> None:
    text = """
    name: "tiny"
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
            param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1
                                weight_filler { type: "xavier" } } }
    layer { name: "bn" type: "BatchNorm" bottom: "conv1" top: "conv1"
            batch_norm_param { use_global_stats: true } }
    layer { name: "relu" type: "ReLU" bottom: "conv1" top: "conv1"
            include { phase: TEST } }
    """
    net = text_format.Parse(text, schema.NetParameter())
    assert [layer.type for layer in net.layer] == ["Input", "Convolution", "BatchNorm", "ReLU"]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    assert list(net.layer[1].convolution_param.kernel_size) == [3]
    assert net.layer[3].include[0].phase == schema.Phase.Value("TEST")
    again = schema.NetParameter.FromString(net.SerializeToString())
    assert again == net


def test_legacy_input_headers_parse() -> None:
    net = text_format.Parse(
        'input: "data" input_dim: 10 input_dim: 3 input_dim: 227 input_dim: 227 '
        'input: "im_info" input_shape { dim: 1 dim: 3 }',
        schema.NetParameter(),
    )
    assert list(net.input) == ["data", "im_info"]
    assert list(net.input_dim) == [10, 3, 227, 227]
    assert list(net.input_shape[0].dim) == [1, 3]


def test_v1_and_v0_layers_parse() -> None:
    text = """
    layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
             blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
             convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
    layers { name: "fc6" type: INNER_PRODUCT bottom: "conv1" top: "fc6"
             inner_product_param { num_output: 10 } }
    layers { layer { name: "pool1" type: "pool" pool: MAX kernelsize: 3 stride: 2 }
             bottom: "fc6" top: "pool1" }
    """
    net = text_format.Parse(text, schema.NetParameter())
    assert net.layers[0].type == schema.V1LayerParameter.CONVOLUTION == 4
    assert net.layers[1].type == schema.V1LayerParameter.INNER_PRODUCT == 14
    assert list(net.layers[0].blobs_lr) == [1.0, 2.0]
    v0 = net.layers[2].layer
    assert (v0.name, v0.type, v0.kernelsize, v0.stride) == ("pool1", "pool", 3, 2)


def test_ssd_detection_layers_parse() -> None:
    text = """
    layer { name: "conv4_3_norm" type: "Normalize" bottom: "conv4_3" top: "conv4_3_norm"
      norm_param { across_spatial: false channel_shared: false
                   scale_filler { type: "constant" value: 20 } } }
    layer { name: "perm" type: "Permute" bottom: "a" top: "b"
      permute_param { order: 0 order: 2 order: 3 order: 1 } }
    layer { name: "prior" type: "PriorBox" bottom: "conv4_3_norm" bottom: "data" top: "prior"
      prior_box_param { min_size: 30.0 max_size: 60.0 aspect_ratio: 2 flip: true clip: false
        variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5 } }
    layer { name: "detection_out" type: "DetectionOutput" bottom: "loc" bottom: "conf"
      bottom: "prior" top: "detection_out" include { phase: TEST }
      detection_output_param { num_classes: 21 share_location: true background_label_id: 0
        nms_param { nms_threshold: 0.45 top_k: 400 }
        save_output_param { label_map_file: "labelmap_voc.prototxt"
          resize_param { prob: 1 resize_mode: WARP height: 300 width: 300
                         interp_mode: LINEAR } }
        code_type: CENTER_SIZE keep_top_k: 200 confidence_threshold: 0.01 } }
    """
    net = text_format.Parse(text, schema.NetParameter())
    assert net.layer[0].norm_param.across_spatial is False
    assert list(net.layer[1].permute_param.order) == [0, 2, 3, 1]
    assert list(net.layer[2].prior_box_param.variance) == pytest.approx([0.1, 0.1, 0.2, 0.2])
    dop = net.layer[3].detection_output_param
    assert dop.code_type == schema.PriorBoxParameter.CENTER_SIZE
    assert dop.nms_param.top_k == 400


# --------------------------------------------------------------------------- wire format


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def test_blob_proto_packed_and_unpacked_encodings() -> None:
    values = [1.5, -2.25, 0.0, 3.0e8]
    doubles = [0.1, -7.0]
    shape = _key(1, 2) + _varint(2) + bytes([4]) + bytes([1])  # BlobShape{dim: [4, 1]} packed
    shape_field = _key(7, 2) + _varint(len(shape)) + shape

    floats = b"".join(struct.pack("<f", v) for v in values)
    dbls = b"".join(struct.pack("<d", v) for v in doubles)
    # Fields in number order (data=5, shape=7, double_data=8), as protobuf serializes them.
    packed = (
        _key(5, 2) + _varint(len(floats)) + floats
        + shape_field
        + _key(8, 2) + _varint(len(dbls)) + dbls
    )
    unpacked = (
        shape_field
        + b"".join(_key(5, 5) + struct.pack("<f", v) for v in values)
        + b"".join(_key(8, 1) + struct.pack("<d", v) for v in doubles)
    )
    # Legacy 4-d dims in old files, and unpacked BlobShape dims.
    legacy = (
        _key(1, 0) + _varint(1) + _key(2, 0) + _varint(1)
        + _key(3, 0) + _varint(2) + _key(4, 0) + _varint(2)
        + b"".join(_key(5, 5) + struct.pack("<f", v) for v in values)
    )

    a = schema.BlobProto.FromString(packed)
    b = schema.BlobProto.FromString(unpacked)
    assert list(a.data) == list(b.data) == values
    assert list(a.double_data) == list(b.double_data) == doubles
    assert list(a.shape.dim) == list(b.shape.dim) == [4, 1]
    assert a == b
    # Our writer emits the packed form, as Caffe does.
    assert a.SerializeToString() == packed

    c = schema.BlobProto.FromString(legacy)
    assert (c.num, c.channels, c.height, c.width) == (1, 1, 2, 2)
    assert not c.HasField("shape")
    assert list(c.data) == values

    unpacked_shape = schema.BlobShape.FromString(_key(1, 0) + _varint(4) + _key(1, 0) + _varint(1))
    assert list(unpacked_shape.dim) == [4, 1]


def test_net_layer_blobs_wire_numbers() -> None:
    # A V2 layer with one blob: NetParameter.layer (100) > LayerParameter.blobs (7).
    blob = schema.BlobProto()
    blob.shape.dim.extend([2])
    blob.data.extend([1.0, 2.0])
    layer_bytes = _key(1, 2) + _varint(2) + b"ip" + _key(7, 2) + _varint(blob.ByteSize()) + (
        blob.SerializeToString()
    )
    net = schema.NetParameter.FromString(_key(100, 2) + _varint(len(layer_bytes)) + layer_bytes)
    assert net.layer[0].name == "ip"
    assert list(net.layer[0].blobs[0].data) == [1.0, 2.0]

    # A V1 layer: NetParameter.layers (2) > V1LayerParameter.name (4), blobs (6).
    v1_bytes = _key(4, 2) + _varint(3) + b"fc8" + _key(5, 0) + _varint(14) + _key(6, 2) + (
        _varint(blob.ByteSize()) + blob.SerializeToString()
    )
    net = schema.NetParameter.FromString(_key(2, 2) + _varint(len(v1_bytes)) + v1_bytes)
    assert net.layers[0].name == "fc8"
    assert net.layers[0].type == schema.V1LayerParameter.INNER_PRODUCT
    assert list(net.layers[0].blobs[0].data) == [1.0, 2.0]
