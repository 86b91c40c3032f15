"""Caffe's protobuf schema, loaded from the precompiled ``caffe.desc`` into a private pool.

Every top-level message of ``proto/caffe.proto`` is a module attribute::

    from caffe_bridge import schema
    net = schema.NetParameter()
    schema.PoolingParameter.FLOOR          # nested enum values live on the class
    schema.Phase.Value("TEST")             # top-level enums are EnumTypeWrappers

The descriptors live in a ``DescriptorPool`` of our own (package ``caffe_bridge.caffe``),
so they never clash with another caffe.proto registered in the default pool. Works with
protobuf 4.21 and later; protoc is never run at import time.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal import enum_type_wrapper
from google.protobuf.message import Message

PACKAGE = "caffe_bridge.caffe"
PROTO_FILE = "caffe.proto"

_RESOURCE_PACKAGE = "caffe_bridge.proto"
_DESC_NAME = "caffe.desc"
# Where caffe.desc lies in a source checkout that is not installed (proto/ is mapped
# to caffe_bridge.proto only by setup.py).
_REPO_DESC = Path(__file__).resolve().parent.parent / "proto" / _DESC_NAME


def descriptor_set_bytes() -> bytes:
    """Return the serialized FileDescriptorSet shipped with the package."""
    try:
        return resources.files(_RESOURCE_PACKAGE).joinpath(_DESC_NAME).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    try:
        return _REPO_DESC.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Caffe schema not found: neither package resource {_RESOURCE_PACKAGE}/{_DESC_NAME} "
            f"nor {_REPO_DESC} exists (run scripts/gen_schema.py)"
        ) from None


@functools.cache
def pool() -> descriptor_pool.DescriptorPool:
    """The private descriptor pool holding caffe.proto (built once)."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set_bytes())
    result = descriptor_pool.DescriptorPool()
    for file_proto in fds.file:
        result.AddSerializedFile(file_proto.SerializeToString())
    return result


def file_descriptor() -> descriptor.FileDescriptor:
    """The FileDescriptor of caffe.proto."""
    return pool().FindFileByName(PROTO_FILE)


@functools.cache
def _legacy_factory() -> message_factory.MessageFactory:
    # Only for protobuf releases without message_factory.GetMessageClass (4.21.x).
    # One factory for the whole pool, so nested message classes are shared.
    return message_factory.MessageFactory(pool())


def _class_for(desc: descriptor.Descriptor) -> type[Message]:
    get_message_class = getattr(message_factory, "GetMessageClass", None)
    if get_message_class is not None:
        return get_message_class(desc)
    return _legacy_factory().GetPrototype(desc)  # pragma: no cover - protobuf 4.21 only


def is_repeated(field: descriptor.FieldDescriptor) -> bool:
    """Whether ``field`` is repeated, on every protobuf release.

    protobuf 7 removed ``FieldDescriptor.label``; ``is_repeated`` does not exist before 5.x.
    """
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == descriptor.FieldDescriptor.LABEL_REPEATED  # pragma: no cover


def message_names() -> tuple[str, ...]:
    """Names of all top-level messages, in declaration order."""
    return tuple(file_descriptor().message_types_by_name)


def enum_names() -> tuple[str, ...]:
    """Names of all top-level enums (``Phase``)."""
    return tuple(file_descriptor().enum_types_by_name)


@functools.cache
def message_class(name: str) -> type[Message]:
    """The generated class of the top-level message ``name`` (e.g. ``"NetParameter"``).

    Raises KeyError when caffe.proto has no such top-level message.
    """
    desc = file_descriptor().message_types_by_name.get(name)
    if desc is None:
        raise KeyError(f"caffe.proto has no top-level message {name!r}")
    return _class_for(desc)


@functools.cache
def enum_type(name: str) -> enum_type_wrapper.EnumTypeWrapper:
    """The top-level enum ``name`` (e.g. ``"Phase"``) as an EnumTypeWrapper."""
    desc = file_descriptor().enum_types_by_name.get(name)
    if desc is None:
        raise KeyError(f"caffe.proto has no top-level enum {name!r}")
    return enum_type_wrapper.EnumTypeWrapper(desc)


def __getattr__(name: str) -> object:
    # PEP 562: schema.NetParameter, schema.Phase, ... resolved lazily and cached above.
    if not name.startswith("_"):
        fd = file_descriptor()
        if name in fd.message_types_by_name:
            return message_class(name)
        if name in fd.enum_types_by_name:
            return enum_type(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(message_names()) | set(enum_names()))
