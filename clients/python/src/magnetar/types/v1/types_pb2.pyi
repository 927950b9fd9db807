from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Resources(_message.Message):
    __slots__ = ("cpu_shares", "cpu_quota_us", "cpu_period_us", "cpuset_cpus", "cpuset_mems", "memory_limit_bytes", "memory_swap_limit_bytes", "pids_limit")
    CPU_SHARES_FIELD_NUMBER: _ClassVar[int]
    CPU_QUOTA_US_FIELD_NUMBER: _ClassVar[int]
    CPU_PERIOD_US_FIELD_NUMBER: _ClassVar[int]
    CPUSET_CPUS_FIELD_NUMBER: _ClassVar[int]
    CPUSET_MEMS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SWAP_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    cpu_shares: int
    cpu_quota_us: int
    cpu_period_us: int
    cpuset_cpus: str
    cpuset_mems: str
    memory_limit_bytes: int
    memory_swap_limit_bytes: int
    pids_limit: int
    def __init__(self, cpu_shares: _Optional[int] = ..., cpu_quota_us: _Optional[int] = ..., cpu_period_us: _Optional[int] = ..., cpuset_cpus: _Optional[str] = ..., cpuset_mems: _Optional[str] = ..., memory_limit_bytes: _Optional[int] = ..., memory_swap_limit_bytes: _Optional[int] = ..., pids_limit: _Optional[int] = ...) -> None: ...

class DNSConfig(_message.Message):
    __slots__ = ("servers", "searches", "options")
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    servers: _containers.RepeatedScalarFieldContainer[str]
    searches: _containers.RepeatedScalarFieldContainer[str]
    options: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, servers: _Optional[_Iterable[str]] = ..., searches: _Optional[_Iterable[str]] = ..., options: _Optional[_Iterable[str]] = ...) -> None: ...
