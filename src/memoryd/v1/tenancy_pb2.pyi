from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class EnvironmentKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENVIRONMENT_KIND_UNSPECIFIED: _ClassVar[EnvironmentKind]
    ENVIRONMENT_KIND_LIVE: _ClassVar[EnvironmentKind]
    ENVIRONMENT_KIND_TEST: _ClassVar[EnvironmentKind]
    ENVIRONMENT_KIND_DEV: _ClassVar[EnvironmentKind]
ENVIRONMENT_KIND_UNSPECIFIED: EnvironmentKind
ENVIRONMENT_KIND_LIVE: EnvironmentKind
ENVIRONMENT_KIND_TEST: EnvironmentKind
ENVIRONMENT_KIND_DEV: EnvironmentKind
