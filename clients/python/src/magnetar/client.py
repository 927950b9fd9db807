"""The synchronous Magnetar client.

Example::

    import magnetar

    with magnetar.Client("unix:///run/magnetar/api.sock") as client:
        with client.create_sandbox("wasm") as sandbox:
            c = sandbox.run("docker.io/magnetar/hello-wasm:latest", args=["hi"])
            for chunk in c.output():
                print(chunk.stream, chunk.data.decode(), end="")
            print("exit", c.exit_code)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf import duration_pb2
from pyqwest import HTTPVersion, SyncClient, SyncHTTPTransport

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
from magnetar._ports import PortConnection
from magnetar._relay import UnixRelay
from magnetar._resume import DEFAULT_RETRY_TIMEOUT, follow_output, retry, watch_events, watch_usage
from magnetar.container.v1 import container_connect, container_pb2
from magnetar.errors import Code, MagnetarError, NotFoundError, UnavailableError, from_connect
from magnetar.file.v1 import file_connect
from magnetar.files import Files
from magnetar.image.v1 import image_connect, image_pb2
from magnetar.sandbox.v1 import sandbox_connect, sandbox_pb2

__all__ = ["Client", "Sandbox", "Container"]


class _BearerSync:
    """Sends a bearer token with every call."""

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def on_start_sync(self, ctx: RequestContext[Any, Any]) -> None:
        ctx.request_headers["authorization"] = self._value

    def on_end_sync(self, token: None, ctx: RequestContext[Any, Any], error: Exception | None) -> None:
        return


@contextmanager
def _api() -> Iterator[None]:
    try:
        yield
    except ConnectError as e:
        raise from_connect(e) from e


class Client:
    """A synchronous client of a sandboxer's API.

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
        self._transport = SyncHTTPTransport(http_version=HTTPVersion.HTTP2, **tls)  # type: ignore[arg-type]
        http = SyncClient(self._transport)
        kw = dict(
            interceptors=() if token is None else (_BearerSync(token),),
            protocol=proto.to_connectrpc(),
            http_client=http,
            read_max_bytes=MAX_MESSAGE_BYTES,
            timeout_ms=None if timeout is None else int(timeout * 1000),
        )
        self.protocol = proto
        self.sandboxes = sandbox_connect.SandboxServiceClientSync(url, **kw)  # type: ignore[arg-type]
        """The generated SandboxService client."""
        self.containers = container_connect.ContainerServiceClientSync(url, **kw)  # type: ignore[arg-type]
        """The generated ContainerService client."""
        self.images = image_connect.ImageServiceClientSync(url, **kw)  # type: ignore[arg-type]
        """The generated ImageService client."""
        self._files_long = file_connect.FileServiceClientSync(url, **{**kw, "timeout_ms": None})  # type: ignore[arg-type]
        # Streams and WaitProcess last as long as the process or the import:
        # the thin layer sends them without the timeout.
        kw["timeout_ms"] = None
        self._containers_long = container_connect.ContainerServiceClientSync(url, **kw)  # type: ignore[arg-type]
        self._long_sandboxes = sandbox_connect.SandboxServiceClientSync(url, **kw)  # type: ignore[arg-type]
        self._images_long = image_connect.ImageServiceClientSync(url, **kw)  # type: ignore[arg-type]

    def close(self) -> None:
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
            c.close()
        self._transport.close()
        if self._relay is not None:
            self._relay.close()
            self._relay = None

    def files(self, container_id: str) -> Files:
        """The files of a container's root file system (see :class:`magnetar.files.Files`)."""
        return Files(self._files_long, container_id, self.retry_timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def kinds(self) -> list[Kind]:
        """The sandbox kinds of the sandboxer, available or not."""
        with _api():
            res = retry(self.retry_timeout, lambda: self.sandboxes.list_kinds(sandbox_pb2.ListKindsRequest()))
        return [Kind.from_proto(k) for k in res.kinds]

    def import_image(self, path: str) -> list[image_pb2.Image]:
        """Imports an OCI archive, OCI layout or docker-save archive from a
        path on the sandboxer's host; returns the imported images."""
        images: list[image_pb2.Image] = []
        with _api():
            for res in self._images_long.import_image(image_pb2.ImportImageRequest(path=path, unpack=True)):
                if res.HasField("images"):
                    images.extend(res.images.images)
        return images

    def create_sandbox(
        self,
        kind: str,
        *,
        sandbox_id: str = "",
        labels: dict[str, str] | None = None,
        hostname: str = "",
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> Sandbox:
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
            created = self.sandboxes.create_sandbox(req)
        sid = created.sandbox.id
        try:
            with _api():
                started = self.sandboxes.start_sandbox(sandbox_pb2.StartSandboxRequest(sandbox_id=sid))
        except MagnetarError:
            try:
                self.sandboxes.delete_sandbox(sandbox_pb2.DeleteSandboxRequest(sandbox_id=sid, force=True))
            except ConnectError:
                pass
            raise
        return Sandbox(self, started.sandbox)

    def sandbox(self, sandbox_id: str) -> Sandbox:
        """The existing sandbox ``sandbox_id``."""
        with _api():
            req = sandbox_pb2.GetSandboxRequest(sandbox_id=sandbox_id)
            res = retry(self.retry_timeout, lambda: self.sandboxes.get_sandbox(req))
        return Sandbox(self, res.sandbox)

    def list_sandboxes(self) -> list[sandbox_pb2.Sandbox]:
        """All sandboxes of the sandboxer."""
        with _api():
            res = retry(self.retry_timeout, lambda: self.sandboxes.list_sandboxes(sandbox_pb2.ListSandboxesRequest()))
            return list(res.sandboxes)


    def events(self, sandbox_ids: list[str] | None = None, *, after: int | None = None) -> Iterator[sandbox_pb2.Event]:
        """Streams lifecycle events (of ``sandbox_ids`` only, if given) until
        the caller stops: with ``after`` (a :attr:`Event.sequence`; 0 for every
        event kept), first the events the sandboxer kept after it, otherwise
        only new ones. The stream resumes by itself after the last event
        received across a restart of the sandboxer."""
        with _api():
            yield from watch_events(self._long_sandboxes.watch_events, list(sandbox_ids or []), after, self.retry_timeout)

class Sandbox:
    """A sandbox; a context manager that deletes it on exit."""

    def __init__(self, client: Client, proto: sandbox_pb2.Sandbox) -> None:
        self._client = client
        self.id: str = proto.id
        self.kind: str = proto.kind
        self.proto = proto
        """The sandbox as last returned by the API."""

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, kind={self.kind!r})"

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        try:
            self.delete(force=True)
        except NotFoundError:
            pass  # already deleted

    def run(
        self,
        image: str,
        *,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        tty: bool = False,
        container_id: str = "",
        cwd: str = "",
    ) -> Container:
        """Creates and starts a container from ``image`` (a reference in the
        sandboxer's image store). ``args`` replace the image's command;
        ``stdin=True`` keeps stdin open for :meth:`Container.write_stdin`.
        Output is buffered by the sandboxer until :meth:`Container.output`."""
        req = container_request(self.id, image, args, env, stdin, tty, container_id, cwd)
        with _api():
            created = self._client.containers.create_container(req)
        c = Container(self._client, created.container)
        try:
            with _api():
                self._client.containers.start_container(
                    container_pb2.StartContainerRequest(container_id=c.id)
                )
        except MagnetarError:
            try:
                c.delete(force=True)
            except MagnetarError:
                pass
            raise
        return c

    def refresh(self) -> sandbox_pb2.Sandbox:
        """Reloads and returns the sandbox's state."""
        with _api():
            req = sandbox_pb2.GetSandboxRequest(sandbox_id=self.id)
            self.proto = retry(self._client.retry_timeout, lambda: self._client.sandboxes.get_sandbox(req)).sandbox
        return self.proto

    def stop(self, timeout: float | None = None) -> None:
        """Stops the sandbox and its containers (signal, then kill after ``timeout`` seconds)."""
        req = sandbox_pb2.StopSandboxRequest(sandbox_id=self.id)
        if timeout is not None:
            req.timeout.CopyFrom(duration_pb2.Duration(seconds=int(timeout), nanos=int(timeout % 1 * 1e9)))
        with _api():
            self.proto = self._client.sandboxes.stop_sandbox(req).sandbox

    def set_timeout(self, timeout: float | None = None, *, idle_timeout: float | None = None) -> sandbox_pb2.Sandbox:
        """Replaces the sandbox's lifetime: it ends ``timeout`` seconds from
        now and after ``idle_timeout`` seconds of idleness. Both are replaced:
        None or 0 removes that limit. Returns the sandbox with its new
        ``expires_at`` and ``idle_timeout``."""
        req = sandbox_pb2.SetSandboxTimeoutRequest(sandbox_id=self.id)
        lifetime_fields(req, timeout, idle_timeout)
        with _api():
            self.proto = retry(self._client.retry_timeout, lambda: self._client.sandboxes.set_sandbox_timeout(req)).sandbox
        return self.proto

    def update_network_policy(self, egress: sandbox_pb2.EgressPolicy | None = None) -> sandbox_pb2.Sandbox:
        """Replaces the egress policy of a sandbox on a bridge network, at
        once and while it runs (None allows everything). Returns the sandbox
        with the new policy in ``network.egress``."""
        req = sandbox_pb2.UpdateNetworkPolicyRequest(sandbox_id=self.id, egress=egress)
        with _api():
            self.proto = (self._client.sandboxes.update_network_policy(req)).sandbox
        return self.proto

    def pause(self) -> sandbox_pb2.Sandbox:
        """Freezes the sandbox's running containers (state SANDBOX_STATE_PAUSED)."""
        req = sandbox_pb2.PauseSandboxRequest(sandbox_id=self.id)
        with _api():
            self.proto = retry(self._client.retry_timeout, lambda: self._client.sandboxes.pause_sandbox(req)).sandbox
        return self.proto

    def resume(self) -> sandbox_pb2.Sandbox:
        """Thaws the containers :meth:`pause` froze (state SANDBOX_STATE_READY)."""
        req = sandbox_pb2.ResumeSandboxRequest(sandbox_id=self.id)
        with _api():
            self.proto = retry(self._client.retry_timeout, lambda: self._client.sandboxes.resume_sandbox(req)).sandbox
        return self.proto

    def usage(self) -> sandbox_pb2.SandboxUsage:
        """What the sandbox uses now: CPU time, memory, pids, disk and network bytes."""
        req = sandbox_pb2.GetSandboxUsageRequest(sandbox_id=self.id)
        with _api():
            return retry(self._client.retry_timeout, lambda: self._client.sandboxes.get_sandbox_usage(req)).usage

    def watch_usage(self, interval: float = 1.0) -> Iterator[sandbox_pb2.SandboxUsage]:
        """Yields the sandbox's usage every ``interval`` seconds (the server
        enforces a minimum) until the caller stops or the sandbox is gone
        (:class:`NotFoundError`). Across a restart of the sandboxer the
        stream is opened again and goes on with the next sample."""
        req = sandbox_pb2.WatchSandboxUsageRequest(sandbox_id=self.id, interval=duration(interval))
        with _api():
            yield from watch_usage(lambda: self._client._long_sandboxes.watch_sandbox_usage(req), self._client.retry_timeout)

    def dial_port(self, port: int) -> PortConnection:
        """Connects to TCP ``port`` on the sandbox's loopback (a server that a
        process in the sandbox runs) through the sandboxer, and returns the
        connection once made (see :class:`magnetar.PortConnection`:
        ``send``, ``recv``, ``close_write`` to half-close, ``close``).
        Nothing listening on the port raises :class:`UnavailableError`.
        Connections are independent: open as many as needed."""
        return PortConnection(self._client._long_sandboxes.dial_port, self.id, port)

    def delete(self, *, force: bool = False) -> None:
        """Deletes the sandbox; ``force`` also stops it and its containers."""
        with _api():
            self._client.sandboxes.delete_sandbox(
                sandbox_pb2.DeleteSandboxRequest(sandbox_id=self.id, force=force)
            )


class Container:
    """A container's init process: stream its output, write its stdin, wait for it."""

    def __init__(self, client: Client, proto: container_pb2.Container) -> None:
        self._client = client
        self.id: str = proto.id
        self.sandbox_id: str = proto.sandbox_id
        self.exit_code: int | None = None
        """The exit status, once :meth:`output` reached the end or :meth:`wait` returned."""

    def __repr__(self) -> str:
        return f"Container(id={self.id!r}, sandbox_id={self.sandbox_id!r})"

    def files(self) -> Files:
        """The container's files (see :class:`magnetar.files.Files`)."""
        return self._client.files(self.id)

    def __enter__(self) -> Container:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        try:
            self.delete(force=True)
        except NotFoundError:
            pass  # already deleted

    def output(self, start_offset: int | None = None, *, follow: bool = True) -> Iterator[Output]:
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
            yield from follow_output(
                self._client._containers_long.attach_output,
                self.id,
                "",
                start_offset,
                self._client.retry_timeout,
                done,
                follow=follow,
            )

    def write_stdin(self, data: bytes, *, eof: bool = False) -> None:
        """Writes ``data`` to the process's stdin (needs ``stdin=True``);
        ``eof`` closes stdin after it."""
        with _api():
            self._client.containers.write_stdin(
                container_pb2.WriteStdinRequest(container_id=self.id, data=data, eof=eof)
            )

    def close_stdin(self) -> None:
        """Closes the process's stdin."""
        with _api():
            req = container_pb2.CloseStdinRequest(container_id=self.id)
            retry(self._client.retry_timeout, lambda: self._client.containers.close_stdin(req))

    def wait(self) -> int:
        """Waits for the process to exit and returns its exit status."""
        with _api():
            req = container_pb2.WaitProcessRequest(container_id=self.id)
            res = retry(self._client.retry_timeout, lambda: self._client._containers_long.wait_process(req))
        self.exit_code = res.exit_status
        return res.exit_status

    def kill(self, signal: int = 9) -> None:
        """Sends ``signal`` to the process."""
        with _api():
            self._client.containers.signal_process(
                container_pb2.SignalProcessRequest(container_id=self.id, signal=signal)
            )

    def delete(self, *, force: bool = False) -> None:
        """Deletes the container; ``force`` kills it first if it runs."""
        with _api():
            self._client.containers.delete_container(
                container_pb2.DeleteContainerRequest(container_id=self.id, force=force)
            )
