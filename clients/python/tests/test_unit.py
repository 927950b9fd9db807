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
    for bad in ("unix://rel.sock", "https://h:1", "tcp://h:1", "http://h:1/path", ""):
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
