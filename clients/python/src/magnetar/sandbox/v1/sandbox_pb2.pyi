import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from magnetar.types.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SandboxState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SANDBOX_STATE_UNSPECIFIED: _ClassVar[SandboxState]
    SANDBOX_STATE_CREATED: _ClassVar[SandboxState]
    SANDBOX_STATE_READY: _ClassVar[SandboxState]
    SANDBOX_STATE_STOPPED: _ClassVar[SandboxState]
    SANDBOX_STATE_UNKNOWN: _ClassVar[SandboxState]
    SANDBOX_STATE_PAUSED: _ClassVar[SandboxState]

class NetworkMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NETWORK_MODE_UNSPECIFIED: _ClassVar[NetworkMode]
    NETWORK_MODE_NONE: _ClassVar[NetworkMode]
    NETWORK_MODE_HOST: _ClassVar[NetworkMode]
    NETWORK_MODE_NETNS: _ClassVar[NetworkMode]
    NETWORK_MODE_BRIDGE: _ClassVar[NetworkMode]

class EgressAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EGRESS_ACTION_UNSPECIFIED: _ClassVar[EgressAction]
    EGRESS_ACTION_ALLOW: _ClassVar[EgressAction]
    EGRESS_ACTION_DENY: _ClassVar[EgressAction]

class IsolationLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ISOLATION_LEVEL_UNSPECIFIED: _ClassVar[IsolationLevel]
    ISOLATION_LEVEL_CONTAINER: _ClassVar[IsolationLevel]
    ISOLATION_LEVEL_WASM: _ClassVar[IsolationLevel]
    ISOLATION_LEVEL_USER_SPACE_KERNEL: _ClassVar[IsolationLevel]
    ISOLATION_LEVEL_VIRTUAL_MACHINE: _ClassVar[IsolationLevel]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_SANDBOX_CREATED: _ClassVar[EventType]
    EVENT_TYPE_SANDBOX_STARTED: _ClassVar[EventType]
    EVENT_TYPE_SANDBOX_EXITED: _ClassVar[EventType]
    EVENT_TYPE_SANDBOX_DELETED: _ClassVar[EventType]
    EVENT_TYPE_CONTAINER_CREATED: _ClassVar[EventType]
    EVENT_TYPE_CONTAINER_STARTED: _ClassVar[EventType]
    EVENT_TYPE_CONTAINER_DELETED: _ClassVar[EventType]
    EVENT_TYPE_PROCESS_STARTED: _ClassVar[EventType]
    EVENT_TYPE_PROCESS_EXITED: _ClassVar[EventType]
    EVENT_TYPE_PROCESS_OOM: _ClassVar[EventType]
    EVENT_TYPE_SANDBOX_EXPIRED: _ClassVar[EventType]
    EVENT_TYPE_SANDBOX_PAUSED: _ClassVar[EventType]
    EVENT_TYPE_SANDBOX_RESUMED: _ClassVar[EventType]
    EVENT_TYPE_SANDBOX_NETWORK_POLICY_CHANGED: _ClassVar[EventType]
SANDBOX_STATE_UNSPECIFIED: SandboxState
SANDBOX_STATE_CREATED: SandboxState
SANDBOX_STATE_READY: SandboxState
SANDBOX_STATE_STOPPED: SandboxState
SANDBOX_STATE_UNKNOWN: SandboxState
SANDBOX_STATE_PAUSED: SandboxState
NETWORK_MODE_UNSPECIFIED: NetworkMode
NETWORK_MODE_NONE: NetworkMode
NETWORK_MODE_HOST: NetworkMode
NETWORK_MODE_NETNS: NetworkMode
NETWORK_MODE_BRIDGE: NetworkMode
EGRESS_ACTION_UNSPECIFIED: EgressAction
EGRESS_ACTION_ALLOW: EgressAction
EGRESS_ACTION_DENY: EgressAction
ISOLATION_LEVEL_UNSPECIFIED: IsolationLevel
ISOLATION_LEVEL_CONTAINER: IsolationLevel
ISOLATION_LEVEL_WASM: IsolationLevel
ISOLATION_LEVEL_USER_SPACE_KERNEL: IsolationLevel
ISOLATION_LEVEL_VIRTUAL_MACHINE: IsolationLevel
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_SANDBOX_CREATED: EventType
EVENT_TYPE_SANDBOX_STARTED: EventType
EVENT_TYPE_SANDBOX_EXITED: EventType
EVENT_TYPE_SANDBOX_DELETED: EventType
EVENT_TYPE_CONTAINER_CREATED: EventType
EVENT_TYPE_CONTAINER_STARTED: EventType
EVENT_TYPE_CONTAINER_DELETED: EventType
EVENT_TYPE_PROCESS_STARTED: EventType
EVENT_TYPE_PROCESS_EXITED: EventType
EVENT_TYPE_PROCESS_OOM: EventType
EVENT_TYPE_SANDBOX_EXPIRED: EventType
EVENT_TYPE_SANDBOX_PAUSED: EventType
EVENT_TYPE_SANDBOX_RESUMED: EventType
EVENT_TYPE_SANDBOX_NETWORK_POLICY_CHANGED: EventType

class Sandbox(_message.Message):
    __slots__ = ("id", "kind", "state", "labels", "annotations", "created_at", "started_at", "exited_at", "exit_status", "pid", "netns_path", "task_address", "info", "expires_at", "idle_timeout", "network")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class InfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXITED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    NETNS_PATH_FIELD_NUMBER: _ClassVar[int]
    TASK_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    state: SandboxState
    labels: _containers.ScalarMap[str, str]
    annotations: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    exited_at: _timestamp_pb2.Timestamp
    exit_status: int
    pid: int
    netns_path: str
    task_address: str
    info: _containers.ScalarMap[str, str]
    expires_at: _timestamp_pb2.Timestamp
    idle_timeout: _duration_pb2.Duration
    network: SandboxNetwork
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[SandboxState, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exited_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exit_status: _Optional[int] = ..., pid: _Optional[int] = ..., netns_path: _Optional[str] = ..., task_address: _Optional[str] = ..., info: _Optional[_Mapping[str, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., network: _Optional[_Union[SandboxNetwork, _Mapping]] = ...) -> None: ...

class SandboxNetwork(_message.Message):
    __slots__ = ("name", "ip_addresses", "gateway", "egress")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ip_addresses: _containers.RepeatedScalarFieldContainer[str]
    gateway: str
    egress: EgressPolicy
    def __init__(self, name: _Optional[str] = ..., ip_addresses: _Optional[_Iterable[str]] = ..., gateway: _Optional[str] = ..., egress: _Optional[_Union[EgressPolicy, _Mapping]] = ...) -> None: ...

class EgressPolicy(_message.Message):
    __slots__ = ("default_action", "allow", "deny", "dns")
    DEFAULT_ACTION_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    default_action: EgressAction
    allow: _containers.RepeatedScalarFieldContainer[str]
    deny: _containers.RepeatedScalarFieldContainer[str]
    dns: EgressAction
    def __init__(self, default_action: _Optional[_Union[EgressAction, str]] = ..., allow: _Optional[_Iterable[str]] = ..., deny: _Optional[_Iterable[str]] = ..., dns: _Optional[_Union[EgressAction, str]] = ...) -> None: ...

class NetworkConfig(_message.Message):
    __slots__ = ("mode", "netns_path", "network", "egress")
    MODE_FIELD_NUMBER: _ClassVar[int]
    NETNS_PATH_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    mode: NetworkMode
    netns_path: str
    network: str
    egress: EgressPolicy
    def __init__(self, mode: _Optional[_Union[NetworkMode, str]] = ..., netns_path: _Optional[str] = ..., network: _Optional[str] = ..., egress: _Optional[_Union[EgressPolicy, _Mapping]] = ...) -> None: ...

class CreateSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "kind", "labels", "annotations", "hostname", "dns", "network", "resources", "cgroup_parent", "timeout", "idle_timeout")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    CGROUP_PARENT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    kind: str
    labels: _containers.ScalarMap[str, str]
    annotations: _containers.ScalarMap[str, str]
    hostname: str
    dns: _types_pb2.DNSConfig
    network: NetworkConfig
    resources: _types_pb2.Resources
    cgroup_parent: str
    timeout: _duration_pb2.Duration
    idle_timeout: _duration_pb2.Duration
    def __init__(self, sandbox_id: _Optional[str] = ..., kind: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., hostname: _Optional[str] = ..., dns: _Optional[_Union[_types_pb2.DNSConfig, _Mapping]] = ..., network: _Optional[_Union[NetworkConfig, _Mapping]] = ..., resources: _Optional[_Union[_types_pb2.Resources, _Mapping]] = ..., cgroup_parent: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CreateSandboxResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class StartSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class StartSandboxResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class StopSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "timeout")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    timeout: _duration_pb2.Duration
    def __init__(self, sandbox_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StopSandboxResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class DeleteSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "force")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    force: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteSandboxResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class GetSandboxResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class ListSandboxesRequest(_message.Message):
    __slots__ = ("labels", "kinds", "states")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    states: _containers.RepeatedScalarFieldContainer[SandboxState]
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., kinds: _Optional[_Iterable[str]] = ..., states: _Optional[_Iterable[_Union[SandboxState, str]]] = ...) -> None: ...

class ListSandboxesResponse(_message.Message):
    __slots__ = ("sandboxes",)
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[Sandbox]
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[Sandbox, _Mapping]]] = ...) -> None: ...

class PauseSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class PauseSandboxResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class ResumeSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class ResumeSandboxResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class SandboxUsage(_message.Message):
    __slots__ = ("timestamp", "cpu_usage_ns", "memory_usage_bytes", "memory_working_set_bytes", "pids", "disk_read_bytes", "disk_write_bytes", "net_rx_bytes", "net_tx_bytes")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CPU_USAGE_NS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_WORKING_SET_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    DISK_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    cpu_usage_ns: int
    memory_usage_bytes: int
    memory_working_set_bytes: int
    pids: int
    disk_read_bytes: int
    disk_write_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cpu_usage_ns: _Optional[int] = ..., memory_usage_bytes: _Optional[int] = ..., memory_working_set_bytes: _Optional[int] = ..., pids: _Optional[int] = ..., disk_read_bytes: _Optional[int] = ..., disk_write_bytes: _Optional[int] = ..., net_rx_bytes: _Optional[int] = ..., net_tx_bytes: _Optional[int] = ...) -> None: ...

class GetSandboxUsageRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class GetSandboxUsageResponse(_message.Message):
    __slots__ = ("usage",)
    USAGE_FIELD_NUMBER: _ClassVar[int]
    usage: SandboxUsage
    def __init__(self, usage: _Optional[_Union[SandboxUsage, _Mapping]] = ...) -> None: ...

class WatchSandboxUsageRequest(_message.Message):
    __slots__ = ("sandbox_id", "interval")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    interval: _duration_pb2.Duration
    def __init__(self, sandbox_id: _Optional[str] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchSandboxUsageResponse(_message.Message):
    __slots__ = ("usage",)
    USAGE_FIELD_NUMBER: _ClassVar[int]
    usage: SandboxUsage
    def __init__(self, usage: _Optional[_Union[SandboxUsage, _Mapping]] = ...) -> None: ...

class DialPortRequest(_message.Message):
    __slots__ = ("target", "data")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    target: DialPortTarget
    data: bytes
    def __init__(self, target: _Optional[_Union[DialPortTarget, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class DialPortTarget(_message.Message):
    __slots__ = ("sandbox_id", "port")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    port: int
    def __init__(self, sandbox_id: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class DialPortResponse(_message.Message):
    __slots__ = ("data", "closed")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    closed: bool
    def __init__(self, data: _Optional[bytes] = ..., closed: _Optional[bool] = ...) -> None: ...

class SetSandboxTimeoutRequest(_message.Message):
    __slots__ = ("sandbox_id", "timeout", "idle_timeout")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    timeout: _duration_pb2.Duration
    idle_timeout: _duration_pb2.Duration
    def __init__(self, sandbox_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class UpdateNetworkPolicyRequest(_message.Message):
    __slots__ = ("sandbox_id", "egress")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    egress: EgressPolicy
    def __init__(self, sandbox_id: _Optional[str] = ..., egress: _Optional[_Union[EgressPolicy, _Mapping]] = ...) -> None: ...

class UpdateNetworkPolicyResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class SetSandboxTimeoutResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("sandbox_ids", "types", "after_sequence")
    SANDBOX_IDS_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sandbox_ids: _containers.RepeatedScalarFieldContainer[str]
    types: _containers.RepeatedScalarFieldContainer[EventType]
    after_sequence: int
    def __init__(self, sandbox_ids: _Optional[_Iterable[str]] = ..., types: _Optional[_Iterable[_Union[EventType, str]]] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: Event
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("type", "topic", "timestamp", "sandbox_id", "container_id", "exec_id", "pid", "exit_status", "exited_at", "sequence", "reason")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    EXITED_AT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    type: EventType
    topic: str
    timestamp: _timestamp_pb2.Timestamp
    sandbox_id: str
    container_id: str
    exec_id: str
    pid: int
    exit_status: int
    exited_at: _timestamp_pb2.Timestamp
    sequence: int
    reason: str
    def __init__(self, type: _Optional[_Union[EventType, str]] = ..., topic: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sandbox_id: _Optional[str] = ..., container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., pid: _Optional[int] = ..., exit_status: _Optional[int] = ..., exited_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Kind(_message.Message):
    __slots__ = ("name", "description", "available", "unavailable_reason", "capabilities")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    available: bool
    unavailable_reason: str
    capabilities: KindCapabilities
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., available: _Optional[bool] = ..., unavailable_reason: _Optional[str] = ..., capabilities: _Optional[_Union[KindCapabilities, _Mapping]] = ...) -> None: ...

class KindCapabilities(_message.Message):
    __slots__ = ("exec", "tty", "stdin", "oom_events", "update_resources", "stats", "pause", "isolation_level", "egress_policy")
    EXEC_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    OOM_EVENTS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    PAUSE_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    EGRESS_POLICY_FIELD_NUMBER: _ClassVar[int]
    exec: bool
    tty: bool
    stdin: bool
    oom_events: bool
    update_resources: bool
    stats: bool
    pause: bool
    isolation_level: IsolationLevel
    egress_policy: bool
    def __init__(self, exec: _Optional[bool] = ..., tty: _Optional[bool] = ..., stdin: _Optional[bool] = ..., oom_events: _Optional[bool] = ..., update_resources: _Optional[bool] = ..., stats: _Optional[bool] = ..., pause: _Optional[bool] = ..., isolation_level: _Optional[_Union[IsolationLevel, str]] = ..., egress_policy: _Optional[bool] = ...) -> None: ...

class ListKindsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKindsResponse(_message.Message):
    __slots__ = ("kinds",)
    KINDS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedCompositeFieldContainer[Kind]
    def __init__(self, kinds: _Optional[_Iterable[_Union[Kind, _Mapping]]] = ...) -> None: ...
