"""The asynchronous (asyncio) Magnetar client; the same API as
:mod:`magnetar.client` with ``async``/``await``.

Example::

    import magnetar.aio

    async with magnetar.aio.AsyncClient() as client:
        async with await client.create_sandbox("wasm") as sandbox:
            c = await sandbox.run("docker.io/magnetar/hello-wasm:latest")
            async for chunk in c.output():
                print(chunk.stream, chunk.data.decode(), end="")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf import duration_pb2
from pyqwest import Client as HTTPClient, HTTPTransport, HTTPVersion

from magnetar._common import (
    DEFAULT_ADDRESS,
    MAX_MESSAGE_BYTES,
    Kind,
    Output,
    Protocol,
    container_request,
    duration,
    lifetime_fields,
    parse_address,
    transport_options,
)
from magnetar._ports import AsyncPortConnection
from magnetar._relay import UnixRelay
from magnetar._resume import (
    DEFAULT_RETRY_TIMEOUT,
    follow_output_async,
    retry_async,
    watch_events_async,
    watch_usage_async,
)
from magnetar.container.v1 import container_connect, container_pb2
from magnetar.errors import Code, MagnetarError, NotFoundError, UnavailableError, from_connect
from magnetar.file.v1 import file_connect
from magnetar.files import AsyncFiles
from magnetar.image.v1 import image_connect, image_pb2
from magnetar.sandbox.v1 import sandbox_connect, sandbox_pb2

__all__ = ["AsyncClient", "AsyncSandbox", "AsyncContainer"]



class _Bearer:
    """Sends a bearer token with every call."""

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    async def on_start(self, ctx: RequestContext[Any, Any]) -> None:
        ctx.request_headers["authorization"] = self._value

    async def on_end(self, token: None, ctx: RequestContext[Any, Any], error: Exception | None) -> None:
        return


@contextmanager
def _api() -> Iterator[None]:
    try:
        yield
    except ConnectError as e:
        raise from_connect(e) from e


class AsyncClient:
    """An asyncio client of a sandboxer's API.

    ``address`` is ``unix:///path/to/api.sock`` (the default is
    :data:`magnetar.DEFAULT_ADDRESS`), ``https://host:port`` (a sandboxer's
    remote listener: TLS, verified against ``ca_file`` or the system's CAs;
    ``client_cert_file`` and ``client_key_file`` for one that verifies
    clients) or ``http://host:port`` (cleartext). ``token`` is a tenant's
    bearer token, sent with every call to a remote sandboxer. ``protocol``
    selects Connect (default) or gRPC, both over HTTP/2.
    ``timeout`` (seconds) bounds each call, except the ones that last as long
    as a process or an import (output, wait, import_image).

    The client rides out restarts of the sandboxer (a crash of its worker, a
    live upgrade): calls that change nothing (kinds, sandbox, list_sandboxes,
    refresh, wait, close_stdin) are retried while it answers ``UNAVAILABLE``,
    with a backoff from 50 ms doubling up to 1 s, for at most
    ``retry_timeout`` seconds (default 30; 0: never), and :meth:`events` and
    ``output`` resume where they broke off, losing and repeating nothing.

    The generated stubs are available as :attr:`sandboxes`,
    :attr:`containers` and :attr:`images` for calls the thin layer doesn't
    wrap. Use the client as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        protocol: Protocol | str = Protocol.CONNECT,
        timeout: float | None = None,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
        token: str | None = None,
        ca_file: str | None = None,
        client_cert_file: str | None = None,
        client_key_file: str | None = None,
    ) -> None:
        proto = Protocol(protocol)
        self.retry_timeout = retry_timeout
        """Seconds calls that change nothing are retried, and output and
        event streams resumed, while the sandboxer is unavailable (it
        restarts); 0 turns that off."""
        path, url = parse_address(address)
        tls = transport_options(
            address, path, token=token, ca_file=ca_file, client_cert_file=client_cert_file, client_key_file=client_key_file
        )
        self._relay: UnixRelay | None = None
        if path is not None:
            # Like the Go SDK: check that the socket exists, connect on the first call.
            try:
                self._relay = UnixRelay(path)
            except OSError as e:
                raise UnavailableError(Code.UNAVAILABLE, f"sandboxer API socket {path}: {e.strerror or e}") from e
            url = self._relay.url
        assert url is not None
        self._transport = HTTPTransport(http_version=HTTPVersion.HTTP2, **tls)  # type: ignore[arg-type]
        http = HTTPClient(self._transport)
        kw = dict(
            interceptors=() if token is None else (_Bearer(token),),
            protocol=proto.to_connectrpc(),
            http_client=http,
            read_max_bytes=MAX_MESSAGE_BYTES,
            timeout_ms=None if timeout is None else int(timeout * 1000),
        )
        self.protocol = proto
        self.sandboxes = sandbox_connect.SandboxServiceClient(url, **kw)  # type: ignore[arg-type]
        """The generated SandboxService client."""
        self.containers = container_connect.ContainerServiceClient(url, **kw)  # type: ignore[arg-type]
        """The generated ContainerService client."""
        self.images = image_connect.ImageServiceClient(url, **kw)  # type: ignore[arg-type]
        """The generated ImageService client."""
        # Streams and WaitProcess last as long as the process or the import:
        # the thin layer sends them without the timeout.
        kw["timeout_ms"] = None
        self._containers_long = container_connect.ContainerServiceClient(url, **kw)  # type: ignore[arg-type]
        self._long_sandboxes = sandbox_connect.SandboxServiceClient(url, **kw)  # type: ignore[arg-type]
        self._images_long = image_connect.ImageServiceClient(url, **kw)  # type: ignore[arg-type]
        self._files_long = file_connect.FileServiceClient(url, **kw)  # type: ignore[arg-type]

    async def close(self) -> None:
        """Closes the connections (and the unix socket relay)."""
        for c in (
            self.sandboxes,
            self.containers,
            self.images,
            self._containers_long,
            self._long_sandboxes,
            self._images_long,
            self._files_long,
        ):
            await c.close()
        await self._transport.aclose()
        if self._relay is not None:
            self._relay.close()
            self._relay = None

    def files(self, container_id: str) -> AsyncFiles:
        """The files of a container's root file system (see :class:`magnetar.files.AsyncFiles`)."""
        return AsyncFiles(self._files_long, container_id, self.retry_timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.close()

    async def kinds(self) -> list[Kind]:
        """The sandbox kinds of the sandboxer, available or not."""
        with _api():
            res = await retry_async(self.retry_timeout, lambda: self.sandboxes.list_kinds(sandbox_pb2.ListKindsRequest()))
        return [Kind.from_proto(k) for k in res.kinds]

    async def import_image(self, path: str) -> list[image_pb2.Image]:
        """Imports an OCI archive, OCI layout or docker-save archive from a
        path on the sandboxer's host; returns the imported images."""
        images: list[image_pb2.Image] = []
        with _api():
            async for res in self._images_long.import_image(image_pb2.ImportImageRequest(path=path, unpack=True)):
                if res.HasField("images"):
                    images.extend(res.images.images)
        return images

    async def create_sandbox(
        self,
        kind: str,
        *,
        sandbox_id: str = "",
        labels: dict[str, str] | None = None,
        hostname: str = "",
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> AsyncSandbox:
        """Creates and starts a sandbox of ``kind`` (see :meth:`kinds`).

        ``timeout`` (seconds) is the sandbox's lifetime from its creation and
        ``idle_timeout`` (seconds) how long it may stay without running
        containers or attached streams: at the end the sandboxer stops and
        deletes it (event ``EVENT_TYPE_SANDBOX_EXPIRED``). None: no limit.

        Used as a context manager, the sandbox is deleted (forcibly) on exit.
        If starting fails, the created sandbox is deleted again.
        """
        req = sandbox_pb2.CreateSandboxRequest(
            sandbox_id=sandbox_id, kind=kind, labels=labels or {}, hostname=hostname
        )
        lifetime_fields(req, timeout, idle_timeout)
        with _api():
            created = await self.sandboxes.create_sandbox(req)
        sid = created.sandbox.id
        try:
            with _api():
                started = await self.sandboxes.start_sandbox(sandbox_pb2.StartSandboxRequest(sandbox_id=sid))
        except MagnetarError:
            try:
                await self.sandboxes.delete_sandbox(sandbox_pb2.DeleteSandboxRequest(sandbox_id=sid, force=True))
            except ConnectError:
                pass
            raise
        return AsyncSandbox(self, started.sandbox)

    async def sandbox(self, sandbox_id: str) -> AsyncSandbox:
        """The existing sandbox ``sandbox_id``."""
        with _api():
            req = sandbox_pb2.GetSandboxRequest(sandbox_id=sandbox_id)
            res = await retry_async(self.retry_timeout, lambda: self.sandboxes.get_sandbox(req))
        return AsyncSandbox(self, res.sandbox)

    async def list_sandboxes(self) -> list[sandbox_pb2.Sandbox]:
        """All sandboxes of the sandboxer."""
        with _api():
            res = await retry_async(self.retry_timeout, lambda: self.sandboxes.list_sandboxes(sandbox_pb2.ListSandboxesRequest()))
            return list(res.sandboxes)


    async def events(
        self, sandbox_ids: list[str] | None = None, *, after: int | None = None
    ) -> AsyncIterator[sandbox_pb2.Event]:
        """Streams lifecycle events (of ``sandbox_ids`` only, if given) until
        the caller stops: with ``after`` (a :attr:`Event.sequence`; 0 for every
        event kept), first the events the sandboxer kept after it, otherwise
        only new ones. The stream resumes by itself after the last event
        received across a restart of the sandboxer."""
        with _api():
            async for ev in watch_events_async(
                self._long_sandboxes.watch_events, list(sandbox_ids or []), after, self.retry_timeout
            ):
                yield ev

class AsyncSandbox:
    """A sandbox; a context manager that deletes it on exit."""

    def __init__(self, client: AsyncClient, proto: sandbox_pb2.Sandbox) -> None:
        self._client = client
        self.id: str = proto.id
        self.kind: str = proto.kind
        self.proto = proto
        """The sandbox as last returned by the API."""

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self.id!r}, kind={self.kind!r})"

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        try:
            await self.delete(force=True)
        except NotFoundError:
            pass  # already deleted

    async def run(
        self,
        image: str,
        *,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        tty: bool = False,
        container_id: str = "",
        cwd: str = "",
    ) -> AsyncContainer:
        """Creates and starts a container from ``image`` (a reference in the
        sandboxer's image store). ``args`` replace the image's command;
        ``stdin=True`` keeps stdin open for :meth:`AsyncContainer.write_stdin`.
        Output is buffered by the sandboxer until :meth:`AsyncContainer.output`."""
        req = container_request(self.id, image, args, env, stdin, tty, container_id, cwd)
        with _api():
            created = await self._client.containers.create_container(req)
        c = AsyncContainer(self._client, created.container)
        try:
            with _api():
                await self._client.containers.start_container(
                    container_pb2.StartContainerRequest(container_id=c.id)
                )
        except MagnetarError:
            try:
                await c.delete(force=True)
            except MagnetarError:
                pass
            raise
        return c

    async def refresh(self) -> sandbox_pb2.Sandbox:
        """Reloads and returns the sandbox's state."""
        with _api():
            req = sandbox_pb2.GetSandboxRequest(sandbox_id=self.id)
            res = await retry_async(self._client.retry_timeout, lambda: self._client.sandboxes.get_sandbox(req))
        self.proto = res.sandbox
        return self.proto

    async def stop(self, timeout: float | None = None) -> None:
        """Stops the sandbox and its containers (signal, then kill after ``timeout`` seconds)."""
        req = sandbox_pb2.StopSandboxRequest(sandbox_id=self.id)
        if timeout is not None:
            req.timeout.CopyFrom(duration_pb2.Duration(seconds=int(timeout), nanos=int(timeout % 1 * 1e9)))
        with _api():
            res = await self._client.sandboxes.stop_sandbox(req)
        self.proto = res.sandbox

    async def set_timeout(self, timeout: float | None = None, *, idle_timeout: float | None = None) -> sandbox_pb2.Sandbox:
        """Replaces the sandbox's lifetime: it ends ``timeout`` seconds from
        now and after ``idle_timeout`` seconds of idleness. Both are replaced:
        None or 0 removes that limit. Returns the sandbox with its new
        ``expires_at`` and ``idle_timeout``."""
        req = sandbox_pb2.SetSandboxTimeoutRequest(sandbox_id=self.id)
        lifetime_fields(req, timeout, idle_timeout)
        with _api():
            self.proto = (await retry_async(self._client.retry_timeout, lambda: self._client.sandboxes.set_sandbox_timeout(req))).sandbox
        return self.proto

    async def update_network_policy(self, egress: sandbox_pb2.EgressPolicy | None = None) -> sandbox_pb2.Sandbox:
        """Replaces the egress policy of a sandbox on a bridge network, at
        once and while it runs (None allows everything). Returns the sandbox
        with the new policy in ``network.egress``."""
        req = sandbox_pb2.UpdateNetworkPolicyRequest(sandbox_id=self.id, egress=egress)
        with _api():
            self.proto = (await self._client.sandboxes.update_network_policy(req)).sandbox
        return self.proto

    async def pause(self) -> sandbox_pb2.Sandbox:
        """Freezes the sandbox's running containers (state SANDBOX_STATE_PAUSED)."""
        req = sandbox_pb2.PauseSandboxRequest(sandbox_id=self.id)
        with _api():
            self.proto = (await retry_async(self._client.retry_timeout, lambda: self._client.sandboxes.pause_sandbox(req))).sandbox
        return self.proto

    async def resume(self) -> sandbox_pb2.Sandbox:
        """Thaws the containers :meth:`pause` froze (state SANDBOX_STATE_READY)."""
        req = sandbox_pb2.ResumeSandboxRequest(sandbox_id=self.id)
        with _api():
            self.proto = (await retry_async(self._client.retry_timeout, lambda: self._client.sandboxes.resume_sandbox(req))).sandbox
        return self.proto

    async def usage(self) -> sandbox_pb2.SandboxUsage:
        """What the sandbox uses now: CPU time, memory, pids, disk and network bytes."""
        req = sandbox_pb2.GetSandboxUsageRequest(sandbox_id=self.id)
        with _api():
            return (await retry_async(self._client.retry_timeout, lambda: self._client.sandboxes.get_sandbox_usage(req))).usage

    async def watch_usage(self, interval: float = 1.0) -> AsyncIterator[sandbox_pb2.SandboxUsage]:
        """Yields the sandbox's usage every ``interval`` seconds (the server
        enforces a minimum) until the caller stops or the sandbox is gone
        (:class:`NotFoundError`). Across a restart of the sandboxer the
        stream is opened again and goes on with the next sample."""
        req = sandbox_pb2.WatchSandboxUsageRequest(sandbox_id=self.id, interval=duration(interval))
        with _api():
            async for u in watch_usage_async(
                lambda: self._client._long_sandboxes.watch_sandbox_usage(req), self._client.retry_timeout
            ):
                yield u

    async def dial_port(self, port: int) -> AsyncPortConnection:
        """Connects to TCP ``port`` on the sandbox's loopback through the
        sandboxer and returns the connection once made (see
        :class:`magnetar.AsyncPortConnection`). Nothing listening on the
        port raises :class:`UnavailableError`."""
        return await AsyncPortConnection(self.id, port)._connect(self._client._long_sandboxes.dial_port)

    async def delete(self, *, force: bool = False) -> None:
        """Deletes the sandbox; ``force`` also stops it and its containers."""
        with _api():
            await self._client.sandboxes.delete_sandbox(
                sandbox_pb2.DeleteSandboxRequest(sandbox_id=self.id, force=force)
            )


class AsyncContainer:
    """A container's init process: stream its output, write its stdin, wait for it."""

    def __init__(self, client: AsyncClient, proto: container_pb2.Container) -> None:
        self._client = client
        self.id: str = proto.id
        self.sandbox_id: str = proto.sandbox_id
        self.exit_code: int | None = None
        """The exit status, once :meth:`output` reached the end or :meth:`wait` returned."""

    def __repr__(self) -> str:
        return f"AsyncContainer(id={self.id!r}, sandbox_id={self.sandbox_id!r})"

    def files(self) -> AsyncFiles:
        """The container's files (see :class:`magnetar.files.AsyncFiles`)."""
        return self._client.files(self.id)

    async def __aenter__(self) -> AsyncContainer:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        try:
            await self.delete(force=True)
        except NotFoundError:
            pass  # already deleted

    async def output(self, start_offset: int | None = None, *, follow: bool = True) -> AsyncIterator[Output]:
        """Streams stdout and stderr until the process exits (then
        :attr:`exit_code` is set): from ``start_offset`` (see
        :attr:`Output.offset`) or from the oldest byte the sandboxer kept (on
        disk, the newest 1 MiB or so, since the container's creation). The
        stream resumes by itself across a restart of the sandboxer. With
        ``follow=False`` it does not wait for more: the output there was when
        the call reached the sandboxer, then the end (:attr:`exit_code` set
        only if the process had exited; ``magnetar logs`` without ``-f``)."""

        def done(code: int) -> None:
            self.exit_code = code

        with _api():
            async for out in follow_output_async(
                self._client._containers_long.attach_output,
                self.id,
                "",
                start_offset,
                self._client.retry_timeout,
                done,
                follow=follow,
            ):
                yield out

    async def write_stdin(self, data: bytes, *, eof: bool = False) -> None:
        """Writes ``data`` to the process's stdin (needs ``stdin=True``);
        ``eof`` closes stdin after it."""
        with _api():
            await self._client.containers.write_stdin(
                container_pb2.WriteStdinRequest(container_id=self.id, data=data, eof=eof)
            )

    async def close_stdin(self) -> None:
        """Closes the process's stdin."""
        with _api():
            req = container_pb2.CloseStdinRequest(container_id=self.id)
            await retry_async(self._client.retry_timeout, lambda: self._client.containers.close_stdin(req))

    async def wait(self) -> int:
        """Waits for the process to exit and returns its exit status."""
        with _api():
            req = container_pb2.WaitProcessRequest(container_id=self.id)
            res = await retry_async(self._client.retry_timeout, lambda: self._client._containers_long.wait_process(req))
        self.exit_code = res.exit_status
        return res.exit_status

    async def kill(self, signal: int = 9) -> None:
        """Sends ``signal`` to the process."""
        with _api():
            await self._client.containers.signal_process(
                container_pb2.SignalProcessRequest(container_id=self.id, signal=signal)
            )

    async def delete(self, *, force: bool = False) -> None:
        """Deletes the container; ``force`` kills it first if it runs."""
        with _api():
            await self._client.containers.delete_container(
                container_pb2.DeleteContainerRequest(container_id=self.id, force=force)
            )
