"""Server reflection that carries the proto comments.

The generated `*_pb2` modules drop source comments, so reflection built on
the default pool shows none. `make proto` also writes a descriptor set with
source info (`memoryd/v1/descriptor_set.binpb`); reflection serves a pool
built from it, plus the health and reflection services' own descriptors, so
`grpcurl describe` shows every comment of the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2


class _FileWithSource:
    """A file descriptor that serializes to its original proto, source info
    included (a pool's `CopyToProto` leaves the comments out)."""

    def __init__(self, pool: _SourcePool, descriptor: Any) -> None:
        self._pool = pool
        self._descriptor = descriptor
        self.name: str = descriptor.name

    @property
    def dependencies(self) -> list[_FileWithSource]:
        return [self._pool.wrap(d) for d in self._descriptor.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        original = self._pool.protos.get(self.name)
        if original is not None:
            proto.CopyFrom(original)
        else:
            self._descriptor.CopyToProto(proto)


class _SourcePool:
    """The look-ups the reflection servicer makes, answering with files that
    keep their comments."""

    def __init__(self) -> None:
        data = resources.files("memoryd.v1").joinpath("descriptor_set.binpb").read_bytes()
        self.pool = descriptor_pool.DescriptorPool()
        self.protos: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        for proto in descriptor_pb2.FileDescriptorSet.FromString(data).file:
            self.pool.Add(proto)
            _drop_json_names(proto.message_type)
            self.protos[proto.name] = proto
        for module in (health_pb2, reflection_pb2):
            self.pool.Add(
                descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
            )

    def wrap(self, descriptor: Any) -> _FileWithSource:
        return _FileWithSource(self, descriptor)

    def FindFileByName(self, name: str) -> _FileWithSource:
        return self.wrap(self.pool.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> _FileWithSource:
        return self.wrap(self.pool.FindFileContainingSymbol(symbol))

    def FindMessageTypeByName(self, name: str) -> Any:
        return self.pool.FindMessageTypeByName(name)

    def FindExtensionByNumber(self, message: Any, number: int) -> Any:
        return self.pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: Any) -> Any:
        return self.pool.FindAllExtensions(message)


def _drop_json_names(messages: Any) -> None:
    """protoc fills in `json_name`, which makes grpcurl print lowerCamelCase;
    without it, JSON output keeps the field names of the .proto files, as the
    README and the rest of this server's tooling show them."""
    for message in messages:
        for f in message.field:
            f.ClearField("json_name")
        _drop_json_names(message.nested_type)


def enable(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    names = (
        *service_names,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    # duck-typed: the servicer only makes the look-ups _SourcePool answers
    reflection.enable_server_reflection(names, server, pool=_SourcePool())  # type: ignore[arg-type]
