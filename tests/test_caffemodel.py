"""The wire reader and writer of caffemodels, checked against protobuf's own parser."""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caffe_bridge import caffemodel, schema
from caffe_bridge.caffemodel import (
    CaffemodelLayer,
    open_caffemodel,
    read_caffemodel,
    read_caffemodel_layers,
    write_caffemodel,
)
from caffe_bridge.errors import CaffemodelError

# -- hand encoders (independent of the module under test) -------------------------------------


def enc_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def f_len(field: int, payload: bytes) -> bytes:
    return enc_varint(field << 3 | 2) + enc_varint(len(payload)) + payload


def f_varint(field: int, value: int) -> bytes:
    return enc_varint(field << 3) + enc_varint(value)


def f_f32(field: int, value: float) -> bytes:
    return enc_varint(field << 3 | 5) + struct.pack("<f", value)


def f_f64(field: int, value: float) -> bytes:
    return enc_varint(field << 3 | 1) + struct.pack("<d", value)


def packed_f32(values: np.ndarray) -> bytes:
    return f_len(5, np.asarray(values, "<f4").tobytes())


def shape_msg(dims: tuple[int, ...], packed: bool = True) -> bytes:
    if packed:
        return f_len(7, f_len(1, b"".join(enc_varint(d) for d in dims)))
    return f_len(7, b"".join(f_varint(1, d) for d in dims))


def v2_layer(name: str, blobs: list[bytes], type_: str = "") -> bytes:
    body = f_len(1, name.encode()) + (f_len(2, type_.encode()) if type_ else b"")
    body += b"".join(f_len(7, b) for b in blobs)
    return f_len(100, body)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- the protobuf reference ---------------------------------------------------------------------


def reference_blob(blob) -> np.ndarray:  # noqa: ANN001 - a schema.BlobProto
    """Blob as Caffe-minded code would read it through a full protobuf parse."""
    values = blob.data if len(blob.data) else blob.double_data
    data = np.array(values, dtype=np.float32)
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    elif any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = (data.size,)
    return data.reshape(shape)


def reference_layers(raw: bytes) -> list[tuple[str, str, list[np.ndarray]]]:
    net = schema.NetParameter.FromString(raw)
    v1_types = schema.V1LayerParameter.LayerType
    out = []
    for layer in net.layers:  # V1/V0 records (this test data never mixes them with V2)
        name, type_ = layer.name, caffemodel.V1_LAYER_TYPES[layer.type]
        blobs = list(layer.blobs)
        if layer.HasField("layer"):
            name = layer.layer.name or name
            type_ = caffemodel.V0_LAYER_TYPES.get(layer.layer.type, layer.layer.type)
            blobs += list(layer.layer.blobs)
        assert v1_types.Name(layer.type)  # a real enum value
        out.append((name, type_, [reference_blob(b) for b in blobs]))
    for layer in net.layer:
        out.append((layer.name, layer.type, [reference_blob(b) for b in layer.blobs]))
    return out


def assert_same(path: Path, raw: bytes) -> None:
    ours = read_caffemodel_layers(path)
    ref = reference_layers(raw)
    assert [(lay.name, lay.type) for lay in ours] == [(n, t) for n, t, _ in ref]
    for lay, (_, _, blobs) in zip(ours, ref, strict=True):
        assert len(lay.blobs) == len(blobs), lay.name
        for a, b in zip(lay.blobs, blobs, strict=True):
            assert a.dtype == np.float32
            assert a.shape == b.shape, lay.name
            np.testing.assert_array_equal(a, b)


def random_net(seed: int, legacy_every: int = 5) -> bytes:
    """A V2 NetParameter with a realistic layer mix and unrelated fields set everywhere."""
    rng = np.random.default_rng(seed)
    net = schema.NetParameter(name=f"net{seed}")
    net.input.append("data")
    net.input_dim.extend([1, 3, 8, 8])
    channels = 3
    for i in range(int(rng.integers(8, 20))):
        kind = ["Convolution", "BatchNorm", "Scale", "ReLU", "Split", "Pooling",
                "InnerProduct", "Eltwise"][int(rng.integers(0, 8))]
        layer = net.layer.add(name=f"{kind.lower()}_{i}/x", type=kind)
        layer.bottom.append(f"b{i}")
        layer.top.append(f"b{i + 1}")
        shapes: list[tuple[int, ...]] = []
        if kind == "Convolution":
            out = int(rng.integers(1, 9))
            k = int(rng.integers(1, 4))
            layer.convolution_param.num_output = out
            layer.convolution_param.kernel_size.append(k)
            layer.param.add(lr_mult=1.0)
            shapes = [(out, channels, k, k), (out,)]
            channels = out
        elif kind == "BatchNorm":
            shapes = [(channels,), (channels,), (1,)]
            layer.batch_norm_param.eps = 1e-5
        elif kind == "Scale":
            shapes = [(channels,), (channels,)]
            layer.scale_param.bias_term = True
        elif kind == "InnerProduct":
            out = int(rng.integers(1, 20))
            layer.inner_product_param.num_output = out
            shapes = [(out, channels), (out,)]
            channels = out
        elif kind == "Pooling":
            layer.pooling_param.kernel_size = 2
        layer.include.add(phase=1)
        for j, shape in enumerate(shapes):
            blob = layer.blobs.add()
            values = rng.standard_normal(int(np.prod(shape))).astype(np.float32)
            if (i + j) % legacy_every == 0 and len(shape) <= 4:
                legacy = (1,) * (4 - len(shape)) + shape
                blob.num, blob.channels, blob.height, blob.width = legacy
            else:
                blob.shape.dim.extend(shape)
            if (i + j) % 7 == 3:
                blob.double_data.extend(values.astype(np.float64))
            else:
                blob.data.extend(values)
            if (i + j) % 4 == 1:
                blob.diff.extend(values[:3])  # ignored
    return net.SerializeToString()


@pytest.fixture(scope="module")
def unpacked_classes():
    """Copies of the schema where every repeated scalar is unpacked (a separate pool)."""
    fdp = descriptor_pb2.FileDescriptorProto()
    schema.file_descriptor().CopyToProto(fdp)
    fdp.name = "unpacked_caffe.proto"
    fdp.package = "unpacked_caffe"
    for msg in fdp.message_type:
        for field in msg.field:
            if field.label == field.LABEL_REPEATED and field.type != field.TYPE_MESSAGE:
                field.options.packed = False
            if field.type_name.startswith(".caffe_bridge.caffe."):
                field.type_name = field.type_name.replace(".caffe_bridge.caffe.",
                                                          ".unpacked_caffe.")
        for nested in msg.nested_type:
            for field in nested.field:
                if field.type_name.startswith(".caffe_bridge.caffe."):
                    field.type_name = field.type_name.replace(".caffe_bridge.caffe.",
                                                              ".unpacked_caffe.")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)

    def cls(name: str):  # noqa: ANN202
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"unpacked_caffe.{name}"))

    return cls


# -- agreement with protobuf --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_random_v2_net_matches_protobuf(tmp_path: Path, seed: int) -> None:
    raw = random_net(seed)
    path = write(tmp_path / "m.caffemodel", raw)
    assert_same(path, raw)
    model = open_caffemodel(path)
    assert model.name == f"net{seed}"
    assert model.path == str(path)


def test_blobs_are_zero_copy_read_only_views(tmp_path: Path) -> None:
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    path = tmp_path / "v.caffemodel"
    write_caffemodel(path, {"a": [w]})
    (blob,) = read_caffemodel(path)["a"]
    assert not blob.flags.owndata and not blob.flags.writeable
    base = blob
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    assert base.__class__.__name__ == "mmap"
    with pytest.raises(ValueError):
        blob[0, 0, 0] = 1.0


def _rss_file_kb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("RssFile:")))


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_release_pages_drops_the_file_pages_and_keeps_the_values(tmp_path: Path) -> None:
    """After a layer's blobs are copied, their file pages leave this process's memory (a
    convert would otherwise hold every weight twice at its peak); the views stay readable."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 1024, 256), dtype=np.float32)  # 64 MiB
    path = tmp_path / "big.caffemodel"
    write_caffemodel(path, {"a": [w], "b": [w[:1, :1, :7]]})
    blobs = read_caffemodel(path)
    (blob,) = blobs["a"]
    before = _rss_file_kb()
    assert float(blob.sum(dtype=np.float64)) == pytest.approx(float(w.sum(dtype=np.float64)))
    touched = _rss_file_kb()
    assert touched - before > 48 * 1024  # reading the view mapped the file's pages in
    caffemodel.release_pages([blob, *blobs["b"], np.zeros(3, np.float32)])
    assert touched - _rss_file_kb() > 48 * 1024
    assert np.array_equal(blob, w) and np.array_equal(blobs["b"][0], w[:1, :1, :7])


def test_legacy_four_field_shapes(tmp_path: Path) -> None:
    values = np.arange(6, dtype=np.float32)
    blobs = [
        f_varint(1, 1) + f_varint(2, 1) + f_varint(3, 2) + f_varint(4, 3) + packed_f32(values),
        f_varint(4, 6) + f_varint(1, 1) + f_varint(2, 1) + f_varint(3, 1) + packed_f32(values),
        f_varint(3, 6) + packed_f32(values),  # unset ones default to 0 -> count mismatch
    ]
    raw = v2_layer("ip", blobs[:2], "InnerProduct")
    path = write(tmp_path / "l.caffemodel", raw)
    assert_same(path, raw)
    a, b = read_caffemodel(path)["ip"]
    assert a.shape == (1, 1, 2, 3) and b.shape == (1, 1, 1, 6)
    bad = write(tmp_path / "bad.caffemodel", v2_layer("ip", blobs[2:]))
    with pytest.raises(CaffemodelError, match=r"shape \(0, 0, 6, 0\)"):
        read_caffemodel(bad)


def test_shape_wins_over_legacy_and_no_shape_is_flat(tmp_path: Path) -> None:
    values = np.arange(6, dtype=np.float32)
    raw = v2_layer("x", [
        f_varint(1, 1) + f_varint(2, 1) + f_varint(3, 1) + f_varint(4, 6) + shape_msg((2, 3))
        + packed_f32(values),
        packed_f32(values),
        shape_msg(()) + packed_f32(values[:1]),
        b"",
    ])
    path = write(tmp_path / "s.caffemodel", raw)
    a, b, c, d = read_caffemodel(path)["x"]
    assert a.shape == (2, 3) and b.shape == (6,) and c.shape == () and d.shape == (0,)
    assert c == 0.0


def test_unpacked_encodings_built_with_protobuf(tmp_path: Path, unpacked_classes) -> None:
    packed = random_net(11)
    net = unpacked_classes("NetParameter").FromString(packed)
    raw = net.SerializeToString()
    assert raw != packed and len(raw) > len(packed)  # really re-encoded unpacked
    path = write(tmp_path / "u.caffemodel", raw)
    assert_same(path, raw)
    ref = write(tmp_path / "p.caffemodel", packed)
    for a, b in zip(read_caffemodel_layers(path), read_caffemodel_layers(ref), strict=True):
        for x, y in zip(a.blobs, b.blobs, strict=True):
            np.testing.assert_array_equal(x, y)


def test_unpacked_by_hand_mixed_runs(tmp_path: Path) -> None:
    values = np.arange(1, 11, dtype=np.float32) / 8
    # unpacked run, a packed chunk, an over-long tag, then a skipped field between two runs
    data = b"".join(f_f32(5, v) for v in values[:4]) + packed_f32(values[4:7])
    data += b"\xad\x00" + struct.pack("<f", values[7])  # tag 5/fixed32 as a 2-byte varint
    data += f_f32(5, values[8]) + f_f32(6, 9.0) + f_f32(5, values[9])
    blob = shape_msg((2, 5), packed=False) + data
    doubles = b"".join(f_f64(8, float(v)) for v in values[:3]) + shape_msg((3,))
    raw = v2_layer("m", [blob, doubles])
    path = write(tmp_path / "h.caffemodel", raw)
    assert_same(path, raw)
    a, b = read_caffemodel(path)["m"]
    np.testing.assert_array_equal(a, values.reshape(2, 5))
    np.testing.assert_array_equal(b, values[:3])


def test_double_data_converted_and_data_preferred(tmp_path: Path) -> None:
    d = np.array([0.1, 1e-40, 3e38, -2.5], dtype=np.float64)
    f = np.array([7.0, 8.0, 9.0, 10.0], dtype=np.float32)
    both = schema.BlobProto()
    both.shape.dim.append(4)
    both.data.extend(f)
    both.double_data.extend(d)
    only = schema.BlobProto()
    only.shape.dim.append(4)
    only.double_data.extend(d)
    raw = v2_layer("d", [both.SerializeToString(), only.SerializeToString()])
    path = write(tmp_path / "d.caffemodel", raw)
    a, b = read_caffemodel(path)["d"]
    np.testing.assert_array_equal(a, f)
    np.testing.assert_array_equal(b, d.astype(np.float32))
    assert b.dtype == np.float32 and not b.flags.writeable


def test_v1_file_every_enum_value(tmp_path: Path) -> None:
    net = schema.NetParameter(name="old")
    enum = schema.V1LayerParameter.LayerType
    for number in enum.values():
        layer = net.layers.add(name=f"l{number}", type=number)
        layer.bottom.append("x")
        if number in (4, 14):
            blob = layer.blobs.add(num=1, channels=1, height=2, width=2)
            blob.data.extend([1, 2, 3, 4])
    raw = net.SerializeToString()
    path = write(tmp_path / "v1.caffemodel", raw)
    assert_same(path, raw)
    types = {lay.name: lay.type for lay in read_caffemodel_layers(path)}
    assert types["l4"] == "Convolution" and types["l14"] == "InnerProduct"
    assert types["l17"] == "Pooling" and types["l18"] == "ReLU" and types["l15"] == "LRN"
    assert types["l6"] == "Dropout" and types["l20"] == "Softmax" and types["l25"] == "Eltwise"
    assert types["l3"] == "Concat" and types["l39"] == "Deconvolution" and types["l0"] == ""
    assert set(read_caffemodel(path)) == {"l4", "l14"}
    assert read_caffemodel(path)["l14"][0].shape == (1, 1, 2, 2)


def test_v1_table_agrees_with_schema_and_upgrade() -> None:
    upgrade = pytest.importorskip("caffe_bridge.upgrade")
    enum = schema.V1LayerParameter.LayerType
    assert set(caffemodel.V1_LAYER_TYPES) == set(enum.values())
    for name, number in enum.items():
        if name != "NONE":
            assert caffemodel.V1_LAYER_TYPES[number] == upgrade.V1_TYPE_NAMES[name]
    assert caffemodel.V0_LAYER_TYPES == upgrade.V0_TYPE_NAMES


def test_unknown_v1_enum_value_is_named(tmp_path: Path) -> None:
    raw = f_len(2, f_len(4, b"x") + f_varint(5, 99))
    layers = read_caffemodel_layers(write(tmp_path / "e.caffemodel", raw))
    assert layers[0].type == "V1LayerType(99)"


def test_v0_file(tmp_path: Path) -> None:
    net = schema.NetParameter(name="ancient")
    net.input.append("data")
    conv = net.layers.add()
    conv.bottom.append("data")
    conv.top.append("conv1")
    conv.layer.name = "conv1"
    conv.layer.type = "conv"
    conv.layer.num_output = 2
    w = conv.layer.blobs.add(num=2, channels=1, height=1, width=3)
    w.data.extend(range(6))
    b = conv.layer.blobs.add(num=1, channels=1, height=1, width=2)
    b.data.extend([0.5, -0.5])
    relu = net.layers.add()
    relu.layer.name = "relu1"
    relu.layer.type = "relu"
    pad = net.layers.add()
    pad.layer.name = "pad1"
    pad.layer.type = "padding"
    ip = net.layers.add()
    ip.layer.name = "fc"
    ip.layer.type = "innerproduct"
    ip.layer.blobs.add().data.extend([1.0])
    raw = net.SerializeToString()
    path = write(tmp_path / "v0.caffemodel", raw)
    assert_same(path, raw)
    layers = read_caffemodel_layers(path)
    assert [(x.name, x.type) for x in layers] == [
        ("conv1", "Convolution"), ("relu1", "ReLU"), ("pad1", "padding"), ("fc", "InnerProduct")
    ]
    weights = read_caffemodel(path)
    assert list(weights) == ["conv1", "fc"]
    assert weights["conv1"][0].shape == (2, 1, 1, 3)
    assert open_caffemodel(path).name == "ancient"


def test_blobless_layers_are_listed(tmp_path: Path) -> None:
    net = schema.NetParameter(name="n")
    net.layer.add(name="data", type="Input")
    conv = net.layer.add(name="conv2_1", type="Convolution")
    conv.blobs.add().data.extend([1.0, 2.0])
    net.layer.add(name="conv2_1_conv2_1/relu_0_split_0", type="Split")
    net.layer.add(name="relu", type="ReLU")
    path = write(tmp_path / "b.caffemodel", net.SerializeToString())
    layers = read_caffemodel_layers(path)
    assert [x.name for x in layers] == ["data", "conv2_1", "conv2_1_conv2_1/relu_0_split_0",
                                        "relu"]
    assert [len(x.blobs) for x in layers] == [0, 1, 0, 0]
    assert isinstance(layers[0], CaffemodelLayer) and layers[2].type == "Split"
    assert list(read_caffemodel(path)) == ["conv2_1"]


def test_duplicate_names_with_blobs_rejected(tmp_path: Path) -> None:
    blob = packed_f32(np.ones(2))
    raw = v2_layer("same", [blob]) + v2_layer("same", [blob])
    path = write(tmp_path / "dup.caffemodel", raw)
    assert len(read_caffemodel_layers(path)) == 2
    with pytest.raises(CaffemodelError, match="same"):
        read_caffemodel(path)


# -- bad input ----------------------------------------------------------------------------------


def test_error_names_file_offset_and_layer(tmp_path: Path) -> None:
    raw = v2_layer("conv1", [shape_msg((2, 3)) + packed_f32(np.ones(5))], "Convolution")
    path = write(tmp_path / "c.caffemodel", raw)
    with pytest.raises(CaffemodelError) as info:
        read_caffemodel(path)
    err = info.value
    assert err.file == str(path) and err.layer == "conv1" and err.layer_type == "Convolution"
    assert "at byte" in str(err) and "5 values" in str(err) and str(path) in str(err)


@pytest.mark.parametrize("lie", [2**60, 2**63, 2**64 - 1, 2**32 + 4, 2**31, 10**9])
@pytest.mark.parametrize("level", ["layer", "name", "blob", "data", "shape", "dims"])
def test_lying_lengths(tmp_path: Path, lie: int, level: str) -> None:
    values = np.ones(4, np.float32).tobytes()

    def ln(lvl: str, field: int, payload: bytes) -> bytes:
        n = lie if lvl == level else len(payload)
        return enc_varint(field << 3 | 2) + enc_varint(n) + payload

    blob = ln("data", 5, values) + ln("shape", 7, ln("dims", 1, enc_varint(4)))
    layer = ln("name", 1, b"conv") + ln("blob", 7, blob)
    raw = ln("layer", 100, layer) + v2_layer("tail", [packed_f32(np.ones(1))])
    path = write(tmp_path / "lie.caffemodel", raw)
    tracemalloc.start()
    try:
        with pytest.raises(CaffemodelError, match="at byte"):
            read_caffemodel(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x0b\x00", "group"),  # field 1, start group
        (b"\x0c", "group"),
        (b"\x0e", "wire type"),
        (b"\x00\x00", "field number"),
        (b"\xa2\x06" + b"\xff" * 11, "varint"),
        (f_varint(100, 3), "wire type"),  # layer as a varint
        (f_len(100, f_varint(7, 1)), "wire type"),  # blob as a varint
        (f_len(100, f_len(7, f_len(5, b"\x00\x00\x80"))), "multiple of 4"),
        (f_len(100, f_len(7, f_len(7, f_varint(1, 2**64 - 3)))), "negative"),
        (f_len(100, f_len(7, f_len(7, f_len(1, enc_varint(1) * 40)))), "axes"),
        (f_len(100, f_len(7, f_varint(2, 2**64 - 1) + packed_f32(np.ones(1)))), "negative"),
        (f_len(100, f_len(7, f_f64(5, 1.0))), "wire type"),
        (f_len(100, f_len(7, b"\x2d\x00\x00")), "truncated"),
        (f_len(100, f_len(7, f_len(7, f_f32(1, 1.0)))), "wire type"),
        (f_len(1, b"just a name"), "no layer records"),
    ],
)
def test_malformed_structures(tmp_path: Path, raw: bytes, message: str) -> None:
    path = write(tmp_path / "bad.caffemodel", raw)
    with pytest.raises(CaffemodelError, match=message):
        read_caffemodel_layers(path)


def test_not_a_caffemodel(tmp_path: Path) -> None:
    with pytest.raises(CaffemodelError, match="empty"):
        read_caffemodel(write(tmp_path / "empty.caffemodel", b""))
    text = b'name: "SE-ResNet-50"\nlayer {\n  name: "data"\n  type: "Input"\n}\n'
    with pytest.raises(CaffemodelError, match="looks like text"):
        read_caffemodel(write(tmp_path / "deploy.prototxt", text))
    with pytest.raises(CaffemodelError, match="cannot read"):
        read_caffemodel(tmp_path / "missing.caffemodel")
    with pytest.raises(CaffemodelError, match="cannot read"):
        read_caffemodel(tmp_path)
    mean = schema.BlobProto(num=1, channels=3, height=1, width=1)
    mean.data.extend([104, 117, 123])
    with pytest.raises(CaffemodelError):
        read_caffemodel(write(tmp_path / "mean.binaryproto", mean.SerializeToString()))


def test_released_prototxt_is_rejected(shared_dir: Path) -> None:
    with pytest.raises(CaffemodelError, match="looks like text"):
        read_caffemodel(shared_dir / "senet" / "SE-ResNet-50.prototxt")


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(5)
    small = {f"l{i}": [rng.standard_normal((2, 2)).astype(np.float32), np.ones(2)]
             for i in range(3)}
    net = schema.NetParameter.FromString(random_net(3))
    for layer in net.layer:  # keep the payloads small so headers dominate
        for blob in layer.blobs:
            del blob.data[4:]
            del blob.double_data[4:]
            blob.ClearField("shape")
    v1 = schema.NetParameter(name="v1")
    lay = v1.layers.add(name="c", type=4)
    lay.blobs.add(num=1, channels=1, height=1, width=2).data.extend([1, 2])
    v0 = v1.layers.add()
    v0.layer.name, v0.layer.type = "fc", "innerproduct"
    v0.layer.blobs.add().data.extend([1, 2, 3])
    unpacked = v2_layer("u", [shape_msg((3,), packed=False) + f_f32(5, 1) + f_f32(5, 2)
                              + f_f32(5, 3), f_f64(8, 1.0)])
    return [_serialize(small), net.SerializeToString(), v1.SerializeToString(), unpacked]


def _serialize(weights: dict) -> bytes:
    net = schema.NetParameter(name="w")
    for name, blobs in weights.items():
        layer = net.layer.add(name=name, type="X")
        for b in blobs:
            proto = layer.blobs.add()
            proto.shape.dim.extend(np.shape(b))
            proto.data.extend(np.asarray(b, np.float32).ravel())
    return net.SerializeToString()


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "byte", "lie", "insert", "delete"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "truncate":
            del data[at:]
        elif op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[at] = draw(st.integers(0, 255))
        elif op == "lie":
            value = draw(st.sampled_from([2**60, 2**63 - 1, 2**64 - 1, 2**31, 2**32, 127, 128]))
            data[at : at + 1] = enc_varint(value)
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


_MINIMAL_FIELDS = {
    "NetParameter": {"name", "layers", "layer"},
    "LayerParameter": {"name", "type", "blobs"},
    "V1LayerParameter": {"name", "type", "blobs", "layer"},
    "V0LayerParameter": {"name", "type", "blobs"},
}


def _minimal_net_class():  # noqa: ANN202
    """NetParameter of a schema copy that keeps only what the reader descends into.

    Everything else becomes an unknown field to protobuf too, so on any input that both parsers
    accept, they must agree exactly.
    """
    fdp = descriptor_pb2.FileDescriptorProto()
    schema.file_descriptor().CopyToProto(fdp)
    fdp.name, fdp.package = "minimal_caffe.proto", "minimal_caffe"
    for msg in fdp.message_type:
        if msg.name in _MINIMAL_FIELDS:
            kept = [f for f in msg.field if f.name in _MINIMAL_FIELDS[msg.name]]
            for field in kept:
                if msg.name == "V1LayerParameter" and field.name == "type":  # raw enum number
                    field.type = field.TYPE_INT32
                    field.ClearField("type_name")
            del msg.field[:]
            msg.field.extend(kept)
        for field in [*msg.field, *(f for n in msg.nested_type for f in n.field)]:
            if field.type_name:
                field.type_name = field.type_name.replace(".caffe_bridge.caffe.",
                                                          ".minimal_caffe.")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("minimal_caffe.NetParameter"))


MINIMAL_NET = _minimal_net_class()


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def oracle_layers(raw: bytes) -> tuple[list, list]:
    """Reference parse for fuzzing: (V1/V0 records, V2 records), each in file order.

    Unknown V1 enum values are named like the reader does.
    """
    net = MINIMAL_NET.FromString(raw)
    out = []
    for layer in net.layers:
        name, blobs = _text(layer.name), list(layer.blobs)
        type_ = caffemodel.V1_LAYER_TYPES.get(layer.type, f"V1LayerType({layer.type})")
        if layer.HasField("layer"):
            if layer.layer.HasField("name"):
                name = _text(layer.layer.name)
            if layer.layer.HasField("type"):
                v0 = _text(layer.layer.type)
                type_ = caffemodel.V0_LAYER_TYPES.get(v0, v0)
            blobs += list(layer.layer.blobs)
        out.append((name, type_, [reference_blob(b) for b in blobs]))
    v2 = [(_text(x.name), _text(x.type), [reference_blob(b) for b in x.blobs]) for x in net.layer]
    return out, v2


def _same(ours: CaffemodelLayer, ref: tuple[str, str, list[np.ndarray]]) -> bool:
    name, type_, blobs = ref
    return (ours.name, ours.type, len(ours.blobs)) == (name, type_, len(blobs)) and all(
        a.shape == b.shape and a.tobytes() == b.tobytes()
        for a, b in zip(ours.blobs, blobs, strict=True)
    )


def interleaves(ours: list[CaffemodelLayer], v1: list, v2: list) -> bool:
    """Whether ``ours`` (file order) is an order-preserving merge of protobuf's two lists."""
    if len(ours) != len(v1) + len(v2):
        return False
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        if i + j == len(ours):
            return True
        if (i, j) not in memo:
            k = i + j
            memo[i, j] = (i < len(v1) and _same(ours[k], v1[i]) and go(i + 1, j)) or (
                j < len(v2) and _same(ours[k], v2[j]) and go(i, j + 1))
        return memo[i, j]

    return go(0, 0)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "f.caffemodel"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(mutated(), st.binary(max_size=200)))
def test_fuzz_only_caffemodel_error_escapes(fuzz_file: Path, data: bytes) -> None:
    fuzz_file.unlink(missing_ok=True)  # truncating a file in place can be slow (discard)
    fuzz_file.write_bytes(data)
    try:
        layers = read_caffemodel_layers(fuzz_file)
    except CaffemodelError as exc:
        assert exc.file == str(fuzz_file)
        return
    # Whatever the reader accepts, protobuf accepts too, with the very same content.
    assert all(b.dtype == np.float32 and b.size <= len(data) for x in layers for b in x.blobs)
    assert interleaves(layers, *oracle_layers(data))


def test_offsets_beyond_4gb(tmp_path: Path) -> None:
    """A sparse 4.3 GB file: the layer after the huge blob is read at offsets past 2**32."""
    n = (1 << 30) + 7  # floats: payload 4 GiB + 28 bytes
    payload = 4 * n
    shape = f_len(7, f_len(1, enc_varint(n)))
    data_head = enc_varint(5 << 3 | 2) + enc_varint(payload)
    blob_len = len(data_head) + payload + len(shape)
    body_head = f_len(1, b"big") + enc_varint(7 << 3 | 2) + enc_varint(blob_len) + data_head
    layer_len = len(body_head) + payload + len(shape)
    tail = v2_layer("tail", [shape_msg((2,)) + packed_f32(np.array([1.5, -2.0]))])
    path = tmp_path / "huge.caffemodel"
    try:
        with open(path, "wb") as f:
            f.write(enc_varint(100 << 3 | 2) + enc_varint(layer_len) + body_head)
            f.seek(payload, os.SEEK_CUR)
            f.write(shape + tail)
    except OSError as exc:
        pytest.skip(f"cannot create a sparse 4 GB file here: {exc}")
    st_ = path.stat()
    if st_.st_blocks * 512 > 1 << 24:
        path.unlink()
        pytest.skip("file system has no sparse files")
    layers = read_caffemodel_layers(path)
    big, tail_layer = layers
    assert big.blobs[0].shape == (n,)
    assert big.blobs[0][-1] == 0.0 and big.blobs[0][0] == 0.0
    np.testing.assert_array_equal(tail_layer.blobs[0], [1.5, -2.0])


# -- writer -------------------------------------------------------------------------------------


def test_write_read_round_trip_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    weights = {
        "conv1/7x7_s2": [rng.standard_normal((64, 3, 7, 7)).astype(np.float32),
                         rng.standard_normal(64).astype(np.float32)],
        "bn": [rng.standard_normal(5), np.abs(rng.standard_normal(5)), np.array([999.98])],
        "scalar": [np.float32(3.5)],
        "ints": [np.arange(6, dtype=np.int64).reshape(3, 2)],
        "empty": [np.zeros((0, 4), np.float32)],
        "split": [],
        "nonfinite": [np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], np.float32)],
        "fortran": [np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32))],
        "ünïcode/層": (np.ones((1, 2), np.float32),),
    }
    path = tmp_path / "rt.caffemodel"
    write_caffemodel(path, weights, "SE-ResNet-50", types={"conv1/7x7_s2": "Convolution",
                                                           "unused": "ReLU"})
    assert os.listdir(tmp_path) == ["rt.caffemodel"]
    model = open_caffemodel(path)
    assert model.name == "SE-ResNet-50"
    assert [x.name for x in model.layers] == list(weights)
    assert model.layers[0].type == "Convolution" and model.layers[1].type == ""
    for layer in model.layers:
        want = [np.asarray(b).astype(np.float32) for b in weights[layer.name]]
        assert len(layer.blobs) == len(want)
        for got, exp in zip(layer.blobs, want, strict=True):
            assert got.shape == exp.shape and got.dtype == np.float32
            assert got.tobytes() == exp.tobytes()  # bit-exact (NaN, -0.0, denormals)
    # byte-identical to protobuf's own serialization of the same message
    raw = path.read_bytes()
    assert schema.NetParameter.FromString(raw).SerializeToString() == raw


def test_write_is_readable_by_protobuf_with_shape(tmp_path: Path) -> None:
    path = tmp_path / "p.caffemodel"
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_caffemodel(path, {"fc": [w]}, types={"fc": "InnerProduct"})
    net = schema.NetParameter.FromString(path.read_bytes())
    assert not net.HasField("name")
    (layer,) = net.layer
    assert layer.type == "InnerProduct" and list(layer.blobs[0].shape.dim) == [3, 4]
    np.testing.assert_array_equal(np.array(layer.blobs[0].data, np.float32), w.ravel())


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.mark.parametrize(
    "bad",
    [np.array(["a", "b"]), np.array([1 + 2j]), np.array([object()], dtype=object), "text"],
)
def test_bad_array_leaves_target_alone(tmp_path: Path, bad: object) -> None:
    path = tmp_path / "keep.caffemodel"
    path.write_bytes(b"old contents")
    with pytest.raises(CaffemodelError, match="blob #1"):
        write_caffemodel(path, {"a": [np.ones(3)], "b": [np.ones(2), bad]})
    assert path.read_bytes() == b"old contents"
    assert _listing(tmp_path) == ["keep.caffemodel"]


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_midway_removes_temp_and_keeps_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    path = tmp_path / "keep.caffemodel"
    path.write_bytes(b"old contents")
    calls = []
    real = caffemodel._write_blob_data

    def flaky(f, array):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 3:
            assert len(_listing(tmp_path)) == 2  # the temp file exists beside the target
            raise exc
        real(f, array)

    monkeypatch.setattr(caffemodel, "_write_blob_data", flaky)
    weights = {f"l{i}": [np.ones((4, 4), np.float32)] for i in range(5)}
    expected = CaffemodelError if isinstance(exc, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        write_caffemodel(path, weights)
    assert path.read_bytes() == b"old contents"
    assert _listing(tmp_path) == ["keep.caffemodel"]


def test_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "x.caffemodel"
    with pytest.raises(CaffemodelError, match="sequence"):
        write_caffemodel(path, {"a": np.ones(3)})  # type: ignore[dict-item]
    with pytest.raises(CaffemodelError, match="not a string"):
        write_caffemodel(path, {1: [np.ones(3)]})  # type: ignore[dict-item]
    with pytest.raises(CaffemodelError, match="mapping"):
        write_caffemodel(path, [("a", [np.ones(3)])])  # type: ignore[arg-type]
    with pytest.raises(CaffemodelError, match="cannot create"):
        write_caffemodel(tmp_path / "nodir" / "x.caffemodel", {"a": [np.ones(3)]})
    assert not path.exists()


def test_write_empty_weights(tmp_path: Path) -> None:
    """Nothing to write is allowed (other tools read it as an empty net); we reject reading it."""
    path = tmp_path / "none.caffemodel"
    write_caffemodel(path, {}, "named")
    assert schema.NetParameter.FromString(path.read_bytes()).name == "named"
    with pytest.raises(CaffemodelError, match="no layer records"):
        read_caffemodel(path)


def test_write_overwrites_and_streams_large(tmp_path: Path) -> None:
    path = tmp_path / "big.caffemodel"
    path.write_bytes(b"old")
    big = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    write_caffemodel(path, {"fc": [big, big[:, 0]]})
    got = read_caffemodel(path)["fc"]
    np.testing.assert_array_equal(got[0], big)
    np.testing.assert_array_equal(got[1], big[:, 0])
    assert path.stat().st_size < big.nbytes + 4 * 1024 + 64


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_file_says_truncated_with_sizes(tmp_path: Path, keep: float) -> None:
    """A cut-off download: the message says 'truncated' and the expected vs actual size."""
    path = tmp_path / "full.caffemodel"
    rng = np.random.default_rng(0)
    write_caffemodel(path, {f"l{i}": [rng.standard_normal((64, 64)).astype(np.float32)]
                            for i in range(4)})
    data = path.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CaffemodelError) as info:
        read_caffemodel(cut)
    message = str(info.value)
    assert "truncated" in message and str(cut) in message
    assert f"actual size {int(len(data) * keep):,} bytes" in message
    assert "expected at least" in message
