"""Parts shared by the sync and async clients: addresses and result types."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import Enum

from connectrpc.protocol import ProtocolType
from google.protobuf import duration_pb2

from magnetar.container.v1 import container_pb2
from magnetar.sandbox.v1 import sandbox_pb2

DEFAULT_ADDRESS = "unix:///run/magnetar/api.sock"
"""The API socket of a sandboxer started with its defaults."""

MAX_MESSAGE_BYTES = 16 << 20
"""The largest response message read (as the daemon and the Go SDK)."""


class Protocol(str, Enum):
    """The wire protocol: Connect (default) or gRPC, both over HTTP/2."""

    CONNECT = "connect"
    GRPC = "grpc"

    def to_connectrpc(self) -> ProtocolType:
        return ProtocolType.CONNECT if self is Protocol.CONNECT else ProtocolType.GRPC


def parse_address(address: str) -> tuple[str | None, str | None]:
    """Splits an address into (unix socket path, http(s) base URL); one is None.

    Accepted: ``unix:///abs/path``, ``unix:/abs/path``, ``/abs/path``,
    ``https://host:port`` (a sandboxer's remote listener, TLS) and
    ``http://host:port`` (cleartext HTTP/2, for a local forwarder).
    """
    if address.startswith("unix://"):
        path = address[len("unix://") :]
    elif address.startswith("unix:"):
        path = address[len("unix:") :]
    elif address.startswith("/"):
        path = address
    elif re.match(r"^https?://[^/]+/?$", address):
        return None, address.rstrip("/")
    else:
        raise ValueError(f"address {address!r}: want unix:///path/to/api.sock, https://host:port or http://host:port")
    if not os.path.isabs(path):
        raise ValueError(f"address {address!r}: the unix socket path must be absolute")
    return path, None


def output_stream_name(stream: int) -> str:
    """``stdout`` or ``stderr`` for an OutputStream enum value."""
    return "stderr" if stream == container_pb2.OUTPUT_STREAM_STDERR else "stdout"


@dataclass(frozen=True)
class Output:
    """A chunk of a process's output."""

    stream: str
    """``stdout`` or ``stderr`` (``stdout`` for a terminal)."""
    data: bytes
    offset: int = 0
    """Where ``data`` starts in the process's output (bytes of both streams
    before it); ``output(start_offset=offset + len(data))`` goes on after it."""


@dataclass(frozen=True)
class Kind:
    """A sandbox kind (backend) of the sandboxer."""

    name: str
    description: str
    available: bool
    unavailable_reason: str
    capabilities: sandbox_pb2.KindCapabilities = field(repr=False)

    @staticmethod
    def from_proto(k: sandbox_pb2.Kind) -> Kind:
        return Kind(k.name, k.description, k.available, k.unavailable_reason, k.capabilities)


def container_request(
    sandbox_id: str,
    image: str,
    args: list[str] | None,
    env: dict[str, str] | None,
    stdin: bool,
    tty: bool,
    container_id: str,
    cwd: str,
) -> container_pb2.CreateContainerRequest:
    return container_pb2.CreateContainerRequest(
        sandbox_id=sandbox_id,
        container_id=container_id,
        image=image,
        process=container_pb2.ProcessSpec(
            args=list(args or []),
            env=[f"{k}={v}" for k, v in (env or {}).items()],
            cwd=cwd,
            terminal=tty,
            open_stdin=stdin,
        ),
    )


def duration(seconds: float) -> duration_pb2.Duration:
    """A protobuf Duration of ``seconds`` (a float); negative is refused."""
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {seconds}")
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int(round((seconds - whole) * 1e9)))


def lifetime_fields(req: object, timeout: float | None, idle_timeout: float | None) -> None:
    """Sets ``timeout``/``idle_timeout`` (seconds) on a request having those Duration fields."""
    if timeout is not None:
        req.timeout.CopyFrom(duration(timeout))  # type: ignore[attr-defined]
    if idle_timeout is not None:
        req.idle_timeout.CopyFrom(duration(idle_timeout))  # type: ignore[attr-defined]


def transport_options(
    address: str,
    path: str | None,
    *,
    token: str | None,
    ca_file: str | None,
    client_cert_file: str | None,
    client_key_file: str | None,
) -> dict[str, object]:
    """Checks the TLS and token options of a client of ``address`` and
    returns the TLS keyword arguments of its pyqwest transport."""
    remote = address.startswith("https://")
    if token is not None and (token == "" or "\r" in token or "\n" in token):
        raise ValueError("token: empty, or with a line break")
    if token is not None and path is not None:
        raise ValueError(
            f"address {address!r}: tokens are for remote sandboxers (https://); the unix socket is the host administrator's"
        )
    if not remote and (ca_file or client_cert_file or client_key_file):
        raise ValueError(f"address {address!r}: TLS options need an https:// address")
    if bool(client_cert_file) != bool(client_key_file):
        raise ValueError("client_cert_file and client_key_file go together")
    if not remote:
        return {}
    opts: dict[str, object] = {}
    if ca_file:
        with open(ca_file, "rb") as f:
            opts["tls_ca_cert"] = f.read()
    else:
        opts["tls_include_system_certs"] = True
    if client_cert_file and client_key_file:
        with open(client_cert_file, "rb") as f:
            opts["tls_cert"] = f.read()
        with open(client_key_file, "rb") as f:
            opts["tls_key"] = f.read()
    return opts
