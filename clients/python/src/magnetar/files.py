"""The files of a container's root file system (``magnetar.file.v1.FileService``).

Example::

    files = container.files()
    files.mkdir("/work", parents=True)
    files.write_file("/work/run.py", b"print('hi')\\n", atomic=True)
    data = files.read_file("/work/out.txt")
    for change in files.watch("/work"):  # returns once the watch is in place
        print(change.type, change.path)
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from connectrpc.errors import ConnectError

from magnetar._resume import retry, retry_async
from magnetar.errors import from_connect
from magnetar.file.v1 import file_pb2

if TYPE_CHECKING:
    from magnetar.file.v1.file_connect import FileServiceClient, FileServiceClientSync

__all__ = ["AsyncFiles", "FileChange", "Files"]

_CHUNK = 1 << 20
_MODES = {
    "truncate": file_pb2.WRITE_MODE_TRUNCATE,
    "append": file_pb2.WRITE_MODE_APPEND,
    "create_new": file_pb2.WRITE_MODE_CREATE_NEW,
}
_CHANGES = {
    file_pb2.FILE_EVENT_TYPE_CREATED: "created",
    file_pb2.FILE_EVENT_TYPE_MODIFIED: "modified",
    file_pb2.FILE_EVENT_TYPE_REMOVED: "removed",
}


@contextmanager
def _api() -> Iterator[None]:
    try:
        yield
    except ConnectError as e:
        raise from_connect(e) from e


@dataclass(frozen=True)
class FileChange:
    """A change under a watched directory."""

    type: str
    """``"created"``, ``"modified"`` or ``"removed"``."""
    path: str
    """Absolute path inside the container's root."""
    is_dir: bool


def _chunks(content: bytes | str | Iterable[bytes]) -> Iterator[bytes]:
    if isinstance(content, str):
        content = content.encode()
    if isinstance(content, (bytes, bytearray, memoryview)):
        b = bytes(content)
        for off in range(0, len(b), _CHUNK):
            yield b[off : off + _CHUNK]
        return
    for part in content:
        for off in range(0, len(part), _CHUNK):
            yield part[off : off + _CHUNK]


class Files:
    """The files of one container's root file system, while it runs and
    after it exited: paths resolve inside the container's root (no link or
    ``..`` leads outside it). Errors are :class:`magnetar.MagnetarError`
    subclasses (``NotFoundError``, ``InvalidArgumentError``,
    ``AlreadyExistsError``, ``FailedPreconditionError``...)."""

    def __init__(self, service: FileServiceClientSync, container_id: str, retry_timeout: float = 0) -> None:
        self._s = service
        self.container_id = container_id
        self._retry = retry_timeout

    def stat(self, path: str) -> file_pb2.FileInfo:
        """Describes ``path`` (a symbolic link is not followed)."""
        with _api():
            req = file_pb2.StatRequest(container_id=self.container_id, path=path)
            return retry(self._retry, lambda: self._s.stat(req)).info

    def list(self, path: str, *, recursive: bool = False, limit: int = 0) -> tuple[list[file_pb2.FileInfo], bool]:
        """Lists a directory; returns the entries and whether there were more than ``limit`` (default 1000)."""
        with _api():
            req = file_pb2.ListRequest(container_id=self.container_id, path=path, recursive=recursive, limit=limit)
            res = retry(self._retry, lambda: self._s.list(req))
        return list(res.entries), res.truncated

    def read(self, path: str, *, offset: int = 0, length: int = 0) -> Iterator[bytes]:
        """Streams a regular file's bytes from ``offset``, at most ``length`` (0: all)."""
        with _api():
            for msg in self._s.read(
                file_pb2.ReadRequest(container_id=self.container_id, path=path, offset=offset, length=length)
            ):
                yield msg.data

    def read_file(self, path: str) -> bytes:
        """Returns a regular file's whole content."""
        return b"".join(self.read(path))

    def write_file(
        self,
        path: str,
        content: bytes | str | Iterable[bytes],
        *,
        mode: str = "truncate",
        permissions: int = 0,
        atomic: bool = False,
    ) -> file_pb2.FileInfo:
        """Writes a file, streamed in messages of at most 1 MiB. ``mode`` is
        ``"truncate"``, ``"append"`` or ``"create_new"``; ``atomic`` writes a
        new file and renames it over the target when complete."""
        header = file_pb2.WriteHeader(
            container_id=self.container_id, path=path, mode=_MODES[mode], permissions=permissions, atomic=atomic
        )

        def requests() -> Iterator[file_pb2.WriteRequest]:
            first = True
            for data in _chunks(content):
                yield file_pb2.WriteRequest(header=header, data=data) if first else file_pb2.WriteRequest(data=data)
                first = False
            if first:
                yield file_pb2.WriteRequest(header=header)

        with _api():
            return self._s.write(requests()).info

    def mkdir(self, path: str, *, parents: bool = False, permissions: int = 0) -> None:
        """Creates a directory (with its missing parents if ``parents``)."""
        with _api():
            self._s.make_dir(
                file_pb2.MakeDirRequest(
                    container_id=self.container_id, path=path, parents=parents, permissions=permissions
                )
            )

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Removes a path (a directory and what it holds if ``recursive``)."""
        with _api():
            self._s.remove(file_pb2.RemoveRequest(container_id=self.container_id, path=path, recursive=recursive))

    def rename(self, old_path: str, new_path: str) -> None:
        """Renames a path."""
        with _api():
            self._s.rename(
                file_pb2.RenameRequest(container_id=self.container_id, old_path=old_path, new_path=new_path)
            )

    def watch(self, path: str, *, recursive: bool = False) -> Iterator[FileChange]:
        """Watches a directory: returns once the watch is in place, an
        iterator of the changes until the directory goes (close it to stop
        watching)."""
        with _api():
            stream = iter(
                self._s.watch(file_pb2.WatchRequest(container_id=self.container_id, path=path, recursive=recursive))
            )
            next(stream)  # started

        def changes() -> Iterator[FileChange]:
            with _api():
                for msg in stream:
                    for e in msg.events:
                        yield FileChange(_CHANGES.get(e.type, "modified"), e.path, e.is_dir)

        return changes()

    def download_tar(self, path: str) -> Iterator[bytes]:
        """Streams a directory (or file) as a tar archive."""
        with _api():
            for msg in self._s.download_tar(
                file_pb2.DownloadTarRequest(container_id=self.container_id, path=path)
            ):
                yield msg.data

    def upload_tar(self, path: str, archive: bytes | Iterable[bytes]) -> tuple[int, int]:
        """Extracts a tar archive into a directory; returns the entries and file bytes extracted."""
        header = file_pb2.UploadTarHeader(container_id=self.container_id, path=path)

        def requests() -> Iterator[file_pb2.UploadTarRequest]:
            first = True
            for data in _chunks(archive):
                yield (
                    file_pb2.UploadTarRequest(header=header, data=data)
                    if first
                    else file_pb2.UploadTarRequest(data=data)
                )
                first = False
            if first:
                yield file_pb2.UploadTarRequest(header=header)

        with _api():
            res = self._s.upload_tar(requests())
        return res.entries, res.bytes


async def _achunks(content: bytes | str | Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(content, AsyncIterable):
        async for part in content:
            for off in range(0, len(part), _CHUNK):
                yield part[off : off + _CHUNK]
        return
    for c in _chunks(content):
        yield c


class AsyncFiles:
    """The asyncio counterpart of :class:`Files` (same methods, awaitable;
    the streams are async iterators)."""

    def __init__(self, service: FileServiceClient, container_id: str, retry_timeout: float = 0) -> None:
        self._s = service
        self.container_id = container_id
        self._retry = retry_timeout

    async def stat(self, path: str) -> file_pb2.FileInfo:
        """Describes ``path`` (a symbolic link is not followed)."""
        with _api():
            req = file_pb2.StatRequest(container_id=self.container_id, path=path)
            return (await retry_async(self._retry, lambda: self._s.stat(req))).info

    async def list(
        self, path: str, *, recursive: bool = False, limit: int = 0
    ) -> tuple[list[file_pb2.FileInfo], bool]:
        """Lists a directory; returns the entries and whether there were more than ``limit``."""
        with _api():
            req = file_pb2.ListRequest(container_id=self.container_id, path=path, recursive=recursive, limit=limit)
            res = await retry_async(self._retry, lambda: self._s.list(req))
        return list(res.entries), res.truncated

    async def read(self, path: str, *, offset: int = 0, length: int = 0) -> AsyncIterator[bytes]:
        """Streams a regular file's bytes from ``offset``, at most ``length`` (0: all)."""
        with _api():
            async for msg in self._s.read(
                file_pb2.ReadRequest(container_id=self.container_id, path=path, offset=offset, length=length)
            ):
                yield msg.data

    async def read_file(self, path: str) -> bytes:
        """Returns a regular file's whole content."""
        return b"".join([b async for b in self.read(path)])

    async def write_file(
        self,
        path: str,
        content: bytes | str | Iterable[bytes] | AsyncIterable[bytes],
        *,
        mode: str = "truncate",
        permissions: int = 0,
        atomic: bool = False,
    ) -> file_pb2.FileInfo:
        """Writes a file, streamed (see :meth:`Files.write_file`)."""
        header = file_pb2.WriteHeader(
            container_id=self.container_id, path=path, mode=_MODES[mode], permissions=permissions, atomic=atomic
        )

        async def requests() -> AsyncIterator[file_pb2.WriteRequest]:
            first = True
            async for data in _achunks(content):
                yield file_pb2.WriteRequest(header=header, data=data) if first else file_pb2.WriteRequest(data=data)
                first = False
            if first:
                yield file_pb2.WriteRequest(header=header)

        with _api():
            return (await self._s.write(requests())).info

    async def mkdir(self, path: str, *, parents: bool = False, permissions: int = 0) -> None:
        """Creates a directory (with its missing parents if ``parents``)."""
        with _api():
            await self._s.make_dir(
                file_pb2.MakeDirRequest(
                    container_id=self.container_id, path=path, parents=parents, permissions=permissions
                )
            )

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Removes a path (a directory and what it holds if ``recursive``)."""
        with _api():
            await self._s.remove(
                file_pb2.RemoveRequest(container_id=self.container_id, path=path, recursive=recursive)
            )

    async def rename(self, old_path: str, new_path: str) -> None:
        """Renames a path."""
        with _api():
            await self._s.rename(
                file_pb2.RenameRequest(container_id=self.container_id, old_path=old_path, new_path=new_path)
            )

    async def watch(self, path: str, *, recursive: bool = False) -> AsyncIterator[FileChange]:
        """Watches a directory: returns once the watch is in place, an async
        iterator of the changes until the directory goes."""
        with _api():
            stream = aiter(
                self._s.watch(file_pb2.WatchRequest(container_id=self.container_id, path=path, recursive=recursive))
            )
            await anext(stream)  # started

        async def changes() -> AsyncIterator[FileChange]:
            with _api():
                async for msg in stream:
                    for e in msg.events:
                        yield FileChange(_CHANGES.get(e.type, "modified"), e.path, e.is_dir)

        return changes()

    async def download_tar(self, path: str) -> AsyncIterator[bytes]:
        """Streams a directory (or file) as a tar archive."""
        with _api():
            async for msg in self._s.download_tar(
                file_pb2.DownloadTarRequest(container_id=self.container_id, path=path)
            ):
                yield msg.data

    async def upload_tar(self, path: str, archive: bytes | Iterable[bytes] | AsyncIterable[bytes]) -> tuple[int, int]:
        """Extracts a tar archive into a directory; returns the entries and file bytes extracted."""
        header = file_pb2.UploadTarHeader(container_id=self.container_id, path=path)

        async def requests() -> AsyncIterator[file_pb2.UploadTarRequest]:
            first = True
            async for data in _achunks(archive):
                yield (
                    file_pb2.UploadTarRequest(header=header, data=data)
                    if first
                    else file_pb2.UploadTarRequest(data=data)
                )
                first = False
            if first:
                yield file_pb2.UploadTarRequest(header=header)

        with _api():
            res = await self._s.upload_tar(requests())
        return res.entries, res.bytes
