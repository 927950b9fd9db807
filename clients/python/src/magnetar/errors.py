"""Typed errors of the Magnetar client.

Every failed call of the hand-written layer raises a :class:`MagnetarError`
subclass chosen by the RPC status code; the generated stubs themselves raise
:class:`connectrpc.errors.ConnectError`, which :func:`from_connect` converts.
"""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError

__all__ = [
    "Code",
    "MagnetarError",
    "InvalidArgumentError",
    "NotFoundError",
    "AlreadyExistsError",
    "FailedPreconditionError",
    "UnavailableError",
    "DeadlineExceededError",
    "UnimplementedError",
    "from_connect",
]


class MagnetarError(Exception):
    """An error returned by the sandboxer (or by the transport to it)."""

    code: Code
    """The RPC status code (the same for Connect and gRPC)."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.value}: {message}" if message else code.value)
        self.code = code
        self.message = message


class InvalidArgumentError(MagnetarError):
    """The request was malformed (``INVALID_ARGUMENT``)."""


class NotFoundError(MagnetarError):
    """A sandbox, container, process or image does not exist (``NOT_FOUND``)."""


class AlreadyExistsError(MagnetarError):
    """An object with that ID already exists (``ALREADY_EXISTS``)."""


class FailedPreconditionError(MagnetarError):
    """The object is in the wrong state for the call (``FAILED_PRECONDITION``)."""


class UnavailableError(MagnetarError):
    """The sandboxer or a backend could not be reached (``UNAVAILABLE``)."""


class DeadlineExceededError(MagnetarError):
    """The call timed out (``DEADLINE_EXCEEDED``)."""


class UnimplementedError(MagnetarError):
    """The kind or the server does not support the call (``UNIMPLEMENTED``)."""


_BY_CODE: dict[Code, type[MagnetarError]] = {
    Code.INVALID_ARGUMENT: InvalidArgumentError,
    Code.NOT_FOUND: NotFoundError,
    Code.ALREADY_EXISTS: AlreadyExistsError,
    Code.FAILED_PRECONDITION: FailedPreconditionError,
    Code.UNAVAILABLE: UnavailableError,
    Code.DEADLINE_EXCEEDED: DeadlineExceededError,
    Code.UNIMPLEMENTED: UnimplementedError,
}


def from_connect(err: ConnectError) -> MagnetarError:
    """Converts a runtime error into the matching :class:`MagnetarError`."""
    cls = _BY_CODE.get(err.code, MagnetarError)
    out = cls(err.code, err.message)
    out.__cause__ = err
    return out
