"""Magnetar's Python client.

:class:`Client` (sync) and :class:`magnetar.aio.AsyncClient` (asyncio) wrap
the generated Connect stubs (``magnetar.{sandbox,container,image}.v1``) with
a thin layer: dial a unix socket or an http:// URL, create a sandbox, run a
container, stream its output, write its stdin, wait for its exit, with
context managers that delete what they created and typed errors
(:mod:`magnetar.errors`).
"""

from magnetar._common import DEFAULT_ADDRESS, Kind, Output, Protocol
from magnetar._ports import AsyncPortConnection, PortConnection
from magnetar.aio import AsyncClient, AsyncContainer, AsyncSandbox
from magnetar.client import Client, Container, Sandbox
from magnetar.files import AsyncFiles, FileChange, Files
from magnetar.errors import (
    AlreadyExistsError,
    Code,
    FailedPreconditionError,
    InvalidArgumentError,
    MagnetarError,
    NotFoundError,
    UnavailableError,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "AlreadyExistsError",
    "AsyncClient",
    "AsyncContainer",
    "AsyncFiles",
    "AsyncPortConnection",
    "AsyncSandbox",
    "Client",
    "Code",
    "Container",
    "FailedPreconditionError",
    "FileChange",
    "Files",
    "InvalidArgumentError",
    "Kind",
    "MagnetarError",
    "NotFoundError",
    "Output",
    "PortConnection",
    "Protocol",
    "Sandbox",
    "UnavailableError",
]
