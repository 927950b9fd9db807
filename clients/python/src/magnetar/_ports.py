"""Connections to TCP ports in a sandbox over ``SandboxService.DialPort``.

DialPort is a bidirectional stream: the first request names the sandbox and
port, the next ones carry bytes for the process; the first response says the
connection was made, the next ones carry the process's bytes, and one with
``closed`` set says the process closed its side. Ending the requests
half-closes the connection (the process reads end of file). The client's
transport (pyqwest, HTTP/2) streams both ways for Connect and gRPC.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType

from connectrpc.errors import ConnectError

from magnetar.errors import Code, InvalidArgumentError, MagnetarError, from_connect
from magnetar.sandbox.v1 import sandbox_pb2

# The most one DialPort message carries (as the Go SDK); and how many
# messages may wait to be sent before send() blocks.
_CHUNK = 32 * 1024
_QUEUE = 8
_END = None


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise InvalidArgumentError(Code.INVALID_ARGUMENT, f"port {port} is not between 1 and 65535")


def _target(sandbox_id: str, port: int) -> sandbox_pb2.DialPortRequest:
    return sandbox_pb2.DialPortRequest(target=sandbox_pb2.DialPortTarget(sandbox_id=sandbox_id, port=port))


class PortConnection:
    """A connection to a TCP port in a sandbox (see :meth:`Sandbox.dial_port`).

    :meth:`send` writes bytes to the process, :meth:`recv` reads its bytes
    (``b""`` once it closed its side), :meth:`close_write` half-closes (the
    process reads end of file and may go on answering), :meth:`close` drops
    the connection. A context manager closes it. :meth:`send` and
    :meth:`recv` may be called from two threads at once; errors are
    :class:`magnetar.MagnetarError`.
    """

    def __init__(self, dial: Callable[[Iterator[sandbox_pb2.DialPortRequest]], Iterator[sandbox_pb2.DialPortResponse]], sandbox_id: str, port: int) -> None:
        _check_port(port)
        self._requests: queue.Queue[sandbox_pb2.DialPortRequest | None] = queue.Queue(_QUEUE)
        self._requests.put(_target(sandbox_id, port))
        self._lock = threading.Lock()
        self._write_closed = False
        self._read_closed = False
        self._closed = False
        self._sent_all = threading.Event()
        self._buf = b""
        self._responses = dial(self._request_iter())
        try:
            next(self._responses)  # connected
        except ConnectError as e:
            self._abort()
            raise from_connect(e) from e
        except StopIteration:
            self._abort()
            raise MagnetarError(Code.UNAVAILABLE, f"DialPort to {sandbox_id}:{port}: the stream ended before it connected") from None

    def _request_iter(self) -> Iterator[sandbox_pb2.DialPortRequest]:
        try:
            while True:
                req = self._requests.get()
                if req is _END:
                    return
                yield req
        finally:
            self._sent_all.set()

    def send(self, data: bytes) -> None:
        """Sends all of ``data`` to the process (blocks while the
        connection is congested)."""
        with self._lock:
            if self._write_closed:
                raise MagnetarError(Code.FAILED_PRECONDITION, "send on a connection closed for writing")
        view = memoryview(data)
        for off in range(0, len(view), _CHUNK):
            self._requests.put(sandbox_pb2.DialPortRequest(data=bytes(view[off : off + _CHUNK])))

    sendall = send

    def recv(self, bufsize: int = 64 * 1024) -> bytes:
        """Returns up to ``bufsize`` bytes from the process, waiting for
        some; ``b""`` once the process closed its side."""
        if bufsize <= 0:
            raise InvalidArgumentError(Code.INVALID_ARGUMENT, "recv: bufsize must be positive")
        while not self._buf and not self._read_closed:
            try:
                res = next(self._responses)
            except StopIteration:
                self._read_closed = True
                break
            except ConnectError as e:
                self._read_closed = True
                raise from_connect(e) from e
            self._buf = res.data
            if res.closed:
                self._read_closed = True
        out, self._buf = self._buf[:bufsize], self._buf[bufsize:]
        return out

    def close_write(self) -> None:
        """Half-closes the connection: the process reads end of file, and
        :meth:`recv` goes on returning what it answers."""
        with self._lock:
            if self._write_closed:
                return
            self._write_closed = True
        self._requests.put(_END)

    def close(self) -> None:
        """Closes the connection. What was sent is delivered (for up to
        10 s); the process's side is not waited for. Call it from the thread
        that calls :meth:`recv`, or once no :meth:`recv` is in progress."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.close_write()
        if not self._read_closed:
            # Drop the call once what was sent went out, unless the process
            # closed its side already: then the stream ends by itself.
            self._sent_all.wait(10)
            self._abort()
        else:
            # Let the server end the stream: drain it.
            try:
                for _ in self._responses:
                    pass
            except ConnectError:
                pass

    def _abort(self) -> None:
        close = getattr(self._responses, "close", None)
        if close is not None:
            try:
                close()
            except ValueError:  # being iterated by another thread's recv
                pass
        # Unblock the request iterator if the call was dropped.
        try:
            self._requests.put_nowait(_END)
        except queue.Full:
            pass

    def __enter__(self) -> PortConnection:
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.close()


class AsyncPortConnection:
    """The asyncio counterpart of :class:`PortConnection` (see
    :meth:`magnetar.aio.AsyncSandbox.dial_port`): ``await send(data)``,
    ``await recv()``, ``await close_write()``, ``await close()``, and an
    async context manager."""

    def __init__(self, sandbox_id: str, port: int) -> None:
        _check_port(port)
        self._sandbox_id = sandbox_id
        self._port = port
        self._requests: asyncio.Queue[sandbox_pb2.DialPortRequest | None] = asyncio.Queue(_QUEUE)
        self._requests.put_nowait(_target(sandbox_id, port))
        self._write_closed = False
        self._read_closed = False
        self._closed = False
        self._buf = b""
        self._responses: AsyncIterator[sandbox_pb2.DialPortResponse] | None = None

    async def _connect(self, dial: Callable[[AsyncIterator[sandbox_pb2.DialPortRequest]], AsyncIterator[sandbox_pb2.DialPortResponse]]) -> AsyncPortConnection:
        self._responses = dial(self._request_iter())
        try:
            await self._responses.__anext__()  # connected
        except ConnectError as e:
            await self._abort()
            raise from_connect(e) from e
        except StopAsyncIteration:
            await self._abort()
            raise MagnetarError(
                Code.UNAVAILABLE, f"DialPort to {self._sandbox_id}:{self._port}: the stream ended before it connected"
            ) from None
        return self

    async def _request_iter(self) -> AsyncIterator[sandbox_pb2.DialPortRequest]:
        while True:
            req = await self._requests.get()
            if req is _END:
                return
            yield req

    async def send(self, data: bytes) -> None:
        """Sends all of ``data`` to the process."""
        if self._write_closed:
            raise MagnetarError(Code.FAILED_PRECONDITION, "send on a connection closed for writing")
        view = memoryview(data)
        for off in range(0, len(view), _CHUNK):
            await self._requests.put(sandbox_pb2.DialPortRequest(data=bytes(view[off : off + _CHUNK])))

    sendall = send

    async def recv(self, bufsize: int = 64 * 1024) -> bytes:
        """Up to ``bufsize`` bytes from the process; ``b""`` once it closed its side."""
        if bufsize <= 0:
            raise InvalidArgumentError(Code.INVALID_ARGUMENT, "recv: bufsize must be positive")
        assert self._responses is not None
        while not self._buf and not self._read_closed:
            try:
                res = await self._responses.__anext__()
            except StopAsyncIteration:
                self._read_closed = True
                break
            except ConnectError as e:
                self._read_closed = True
                raise from_connect(e) from e
            self._buf = res.data
            if res.closed:
                self._read_closed = True
        out, self._buf = self._buf[:bufsize], self._buf[bufsize:]
        return out

    async def close_write(self) -> None:
        """Half-closes the connection: the process reads end of file."""
        if self._write_closed:
            return
        self._write_closed = True
        await self._requests.put(_END)

    async def close(self) -> None:
        """Closes the connection without waiting for the process's side."""
        if self._closed:
            return
        self._closed = True
        await self.close_write()
        if not self._read_closed:
            await self._abort()
        elif self._responses is not None:
            try:
                async for _ in self._responses:
                    pass
            except ConnectError:
                pass

    async def _abort(self) -> None:
        aclose = getattr(self._responses, "aclose", None)
        if aclose is not None:
            await aclose()
        try:
            self._requests.put_nowait(_END)
        except asyncio.QueueFull:
            pass

    async def __aenter__(self) -> AsyncPortConnection:
        return self

    async def __aexit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        await self.close()
