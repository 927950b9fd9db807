"""Unit tests that need no sandboxer: addresses, errors, the unix socket relay."""

from __future__ import annotations

import os
import socket
import tempfile
import threading

import pytest
from connectrpc.errors import ConnectError

import magnetar
from magnetar._common import parse_address
from magnetar._relay import UnixRelay, _peer_uid
from magnetar.errors import from_connect


def test_parse_address() -> None:
    assert parse_address("unix:///run/x.sock") == ("/run/x.sock", None)
    assert parse_address("unix:/run/x.sock") == ("/run/x.sock", None)
    assert parse_address("/run/x.sock") == ("/run/x.sock", None)
    assert parse_address("http://127.0.0.1:8080/") == (None, "http://127.0.0.1:8080")
    assert parse_address("https://magnetar.example:7443") == (None, "https://magnetar.example:7443")
    for bad in ("unix://rel.sock", "ftp://h:1", "tcp://h:1", "http://h:1/path", "https://h:1/path", ""):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_error_mapping() -> None:
    e = from_connect(ConnectError(magnetar.Code.NOT_FOUND, "sandbox x: not found"))
    assert isinstance(e, magnetar.NotFoundError)
    assert e.code == magnetar.Code.NOT_FOUND and e.message == "sandbox x: not found"
    other = from_connect(ConnectError(magnetar.Code.INTERNAL, "boom"))
    assert type(other) is magnetar.MagnetarError and other.code == magnetar.Code.INTERNAL


def test_relay_copies_both_ways_and_closes() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.sock")
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen()

        def echo() -> None:
            conn, _ = srv.accept()
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data.upper())

        t = threading.Thread(target=echo)
        t.start()
        relay = UnixRelay(path)
        try:
            with socket.create_connection(("127.0.0.1", relay.port)) as c:
                c.sendall(b"x" * 100_000)
                c.shutdown(socket.SHUT_WR)
                got = b""
                while data := c.recv(65536):
                    got += data
                assert got == b"X" * 100_000
        finally:
            relay.close()
            t.join()
            srv.close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", relay.port), timeout=5)


def test_relay_checks_peer_uid() -> None:
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        c = socket.create_connection(lst.getsockname())
        conn, _ = lst.accept()
        with c, conn:
            assert _peer_uid(conn) == os.geteuid()


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
    reason="needs root and a system python3 to connect as another user",
)
def test_relay_refuses_other_users() -> None:
    import subprocess

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.sock")
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen()
        srv.settimeout(0.5)
        relay = UnixRelay(path)
        try:
            # As nobody: the relay closes the connection without reaching the socket.
            # Closed means EOF, or a reset when the relay closed with our bytes unread.
            code = (
                "import socket,sys\n"
                "c = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=60)\n"
                "try:\n"
                "    c.sendall(b'hi'); got = c.recv(10)\n"
                "except (ConnectionResetError, BrokenPipeError):\n"
                "    got = b''\n"
                "sys.exit(0 if got == b'' else 1)\n"
            )
            res = subprocess.run(
                ["/usr/bin/python3", "-c", code, str(relay.port)], user=65534, group=65534, timeout=120
            )
            assert res.returncode == 0
            with pytest.raises(TimeoutError):
                srv.accept()
        finally:
            relay.close()
            srv.close()


def test_missing_socket_is_unavailable() -> None:
    with tempfile.TemporaryDirectory() as d:
        with pytest.raises(magnetar.UnavailableError) as ei:
            magnetar.Client(f"unix://{d}/missing.sock")
        assert ei.value.code == magnetar.Code.UNAVAILABLE and "missing.sock" in str(ei.value)
        with pytest.raises(magnetar.UnavailableError):
            magnetar.AsyncClient(d)  # a directory, not a socket


# Retries and stream resumption (magnetar._resume), against fake streams.

from collections.abc import Iterator  # noqa: E402

from magnetar._resume import Backoff, follow_output, retry, watch_events  # noqa: E402
from magnetar.container.v1 import container_pb2  # noqa: E402
from magnetar.sandbox.v1 import sandbox_pb2  # noqa: E402

_UNAVAILABLE = ConnectError(magnetar.Code.UNAVAILABLE, "worker restarting")


def _chunk(data: bytes, offset: int) -> container_pb2.AttachOutputResponse:
    return container_pb2.AttachOutputResponse(
        output=container_pb2.OutputChunk(stream=container_pb2.OUTPUT_STREAM_STDOUT, data=data, offset=offset)
    )


def test_retry_only_unavailable_and_bounded() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _UNAVAILABLE
        return "ok"

    sleeps: list[float] = []
    assert retry(10, flaky, sleeps.append) == "ok" and len(calls) == 3
    assert sleeps == [0.05, 0.1]

    def not_found() -> str:
        calls.append(1)
        raise ConnectError(magnetar.Code.NOT_FOUND, "gone")

    calls.clear()
    with pytest.raises(ConnectError):
        retry(10, not_found, sleeps.append)
    assert len(calls) == 1

    # The budget bounds an outage; 0 turns retries off.
    now = [0.0]
    b = Backoff(1.0, clock=lambda: now[0])
    delays = []
    while (d := b.next_delay()) is not None:
        delays.append(d)
        now[0] += d
    assert delays == [0.05, 0.1, 0.2, 0.4] and sum(delays) <= 1.0
    assert Backoff(0).next_delay() is None


def test_output_resumes_from_next_offset() -> None:
    requests: list[container_pb2.AttachOutputRequest] = []

    def attach(req: container_pb2.AttachOutputRequest) -> Iterator[container_pb2.AttachOutputResponse]:
        requests.append(req)
        if len(requests) == 1:
            yield _chunk(b"ab", 0)
            yield _chunk(b"cd", 2)
            raise _UNAVAILABLE
        if len(requests) == 2:
            raise ConnectError(magnetar.Code.INTERNAL, "incomplete envelope")  # a broken connection
        yield _chunk(b"ef", 4)
        yield container_pb2.AttachOutputResponse(exit=container_pb2.ProcessExit(exit_status=7))

    exits: list[int] = []
    got = list(follow_output(attach, "c", "", None, 10, exits.append, sleep=lambda _: None))
    assert b"".join(o.data for o in got) == b"abcdef" and [o.offset for o in got] == [0, 2, 4]
    assert exits == [7]
    assert not requests[0].HasField("start_offset")
    assert [r.start_offset for r in requests[1:]] == [4, 4]


def test_output_does_not_resume_other_errors() -> None:
    def attach(req: container_pb2.AttachOutputRequest) -> Iterator[container_pb2.AttachOutputResponse]:
        raise ConnectError(magnetar.Code.OUT_OF_RANGE, "no longer kept")
        yield  # a generator

    with pytest.raises(ConnectError) as ei:
        list(follow_output(attach, "c", "", 3, 10, lambda _: None, sleep=lambda _: None))
    assert ei.value.code == magnetar.Code.OUT_OF_RANGE


def test_events_resume_after_last_sequence() -> None:
    requests: list[sandbox_pb2.WatchEventsRequest] = []

    def watch(req: sandbox_pb2.WatchEventsRequest) -> Iterator[sandbox_pb2.WatchEventsResponse]:
        requests.append(req)
        start = req.after_sequence if req.HasField("after_sequence") else 10
        for seq in range(start + 1, 15):
            if len(requests) == 1 and seq == 13:
                raise _UNAVAILABLE
            yield sandbox_pb2.WatchEventsResponse(event=sandbox_pb2.Event(sandbox_id="sb", sequence=seq))

    got = []
    for ev in watch_events(watch, ["sb"], 10, 10, sleep=lambda _: None):
        got.append(ev.sequence)
        if ev.sequence == 14:
            break
    assert got == [11, 12, 13, 14]
    assert [r.after_sequence for r in requests] == [10, 12]
    assert list(requests[0].sandbox_ids) == ["sb"]


@pytest.mark.asyncio
async def test_async_output_and_events_resume() -> None:
    from collections.abc import AsyncIterator

    from magnetar._resume import follow_output_async, watch_events_async

    reqs: list[container_pb2.AttachOutputRequest] = []

    async def attach(req: container_pb2.AttachOutputRequest) -> AsyncIterator[container_pb2.AttachOutputResponse]:
        reqs.append(req)
        if len(reqs) == 1:
            yield _chunk(b"ab", 0)
            raise _UNAVAILABLE
        yield _chunk(b"cd", 2)
        yield container_pb2.AttachOutputResponse(exit=container_pb2.ProcessExit(exit_status=3))

    exits: list[int] = []
    got = [o async for o in follow_output_async(attach, "c", "", None, 10, exits.append)]
    assert b"".join(o.data for o in got) == b"abcd" and exits == [3] and reqs[1].start_offset == 2

    wreqs: list[sandbox_pb2.WatchEventsRequest] = []

    async def watch(req: sandbox_pb2.WatchEventsRequest) -> AsyncIterator[sandbox_pb2.WatchEventsResponse]:
        wreqs.append(req)
        yield sandbox_pb2.WatchEventsResponse(event=sandbox_pb2.Event(sequence=req.after_sequence + 1))
        if len(wreqs) == 1:
            raise _UNAVAILABLE

    seqs = []
    async for ev in watch_events_async(watch, [], 0, 10):
        seqs.append(ev.sequence)
        if len(seqs) == 2:
            break
    assert seqs == [1, 2] and [r.after_sequence for r in wreqs] == [0, 1]


def test_duration() -> None:
    from magnetar._common import duration

    d = duration(1.25)
    assert (d.seconds, d.nanos) == (1, 250_000_000)
    with pytest.raises(ValueError):
        duration(-1)


def test_thin_layer_retries_calls_that_change_nothing() -> None:
    """pause, resume, set_timeout, usage and file stat/list are retried
    through an outage, as in the Go SDK; calls that change things are not."""
    from types import SimpleNamespace

    from magnetar.file.v1 import file_pb2
    from magnetar.files import Files
    from magnetar.sandbox.v1 import sandbox_pb2

    calls: dict[str, int] = {}

    def flaky(name: str, res: object, fails: int = 1) -> object:
        def call(_req: object) -> object:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] <= fails:
                raise _UNAVAILABLE
            return res

        return call

    sb_msg = sandbox_pb2.Sandbox(id="sb")
    stubs = SimpleNamespace(
        pause_sandbox=flaky("pause", sandbox_pb2.PauseSandboxResponse(sandbox=sb_msg)),
        resume_sandbox=flaky("resume", sandbox_pb2.ResumeSandboxResponse(sandbox=sb_msg)),
        set_sandbox_timeout=flaky("timeout", sandbox_pb2.SetSandboxTimeoutResponse(sandbox=sb_msg)),
        get_sandbox_usage=flaky("usage", sandbox_pb2.GetSandboxUsageResponse(usage=sandbox_pb2.SandboxUsage(pids=3))),
        delete_sandbox=flaky("delete", sandbox_pb2.DeleteSandboxResponse()),
    )
    sb = magnetar.Sandbox(SimpleNamespace(sandboxes=stubs, retry_timeout=10), sb_msg)  # type: ignore[arg-type]
    assert sb.pause().id == "sb" and sb.resume().id == "sb" and sb.set_timeout(60).id == "sb"
    assert sb.usage().pids == 3
    with pytest.raises(magnetar.UnavailableError):
        sb.delete(force=True)
    assert calls == {"pause": 2, "resume": 2, "timeout": 2, "usage": 2, "delete": 1}

    files = Files(
        SimpleNamespace(  # type: ignore[arg-type]
            stat=flaky("stat", file_pb2.StatResponse(info=file_pb2.FileInfo(path="/x"))),
            list=flaky("list", file_pb2.ListResponse(entries=[file_pb2.FileInfo(path="/x")])),
            remove=flaky("remove", file_pb2.RemoveResponse()),
        ),
        "c",
        10,
    )
    assert files.stat("/x").path == "/x"
    assert [e.path for e in files.list("/")[0]] == ["/x"]
    with pytest.raises(magnetar.UnavailableError):
        files.remove("/x")
    assert (calls["stat"], calls["list"], calls["remove"]) == (2, 2, 1)
