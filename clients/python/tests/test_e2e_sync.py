"""End-to-end tests of the sync client against a live sandboxer, over Connect and gRPC."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

import magnetar
from conftest import Daemon
from magnetar.sandbox.v1 import sandbox_pb2


def _collect(c: magnetar.Container) -> tuple[str, str]:
    out, err = b"", b""
    for chunk in c.output():
        if chunk.stream == "stderr":
            err += chunk.data
        else:
            out += chunk.data
    return out.decode(), err.decode()


def test_kinds(client: magnetar.Client) -> None:
    kinds = {k.name: k for k in client.kinds()}
    assert kinds["wasm"].available, kinds["wasm"].unavailable_reason
    assert kinds["runc"].available, kinds["runc"].unavailable_reason
    assert "vm" in kinds


def test_wasm_run_output_and_exit(client: magnetar.Client, daemon: Daemon) -> None:
    with client.create_sandbox("wasm") as sb:
        assert sb.kind == "wasm"
        assert sb.proto.state == sandbox_pb2.SANDBOX_STATE_READY
        c = sb.run(daemon.wasm_image, args=["-exit", "3", "from", "python"], env={"GREETING": "hi"})
        out, err = _collect(c)
        assert "Hello from WebAssembly!" in out
        assert "args: from python" in out
        assert "GREETING=hi" in out
        assert "exiting with 3" in err
        assert c.exit_code == 3
        assert c.wait() == 3
        c.delete()
    with pytest.raises(magnetar.NotFoundError):
        client.sandbox(sb.id)


def test_wasm_stdin(client: magnetar.Client, daemon: Daemon) -> None:
    with client.create_sandbox("wasm") as sb:
        c = sb.run(daemon.wasm_image, args=["-echo"], stdin=True)
        c.write_stdin(b"hello\n")
        c.write_stdin(b"magnetar\n", eof=True)
        out, _ = _collect(c)
        assert "HELLO\nMAGNETAR\n" in out
        assert c.exit_code == 0


def test_runc_run_stdio(client: magnetar.Client, daemon: Daemon) -> None:
    sid = f"py-{uuid.uuid4().hex[:8]}"
    with client.create_sandbox("runc", sandbox_id=sid, labels={"test": "python"}) as sb:
        assert sb.id == sid
        assert [s.id for s in client.list_sandboxes() if s.id == sid] == [sid]
        with sb.run(daemon.busybox_image, args=["sh", "-c", "read l; echo got $l; echo oops >&2; exit 7"], stdin=True) as c:
            c.write_stdin(b"ping\n")
            c.close_stdin()
            out, err = _collect(c)
            assert out == "got ping\n"
            assert err == "oops\n"
            assert c.exit_code == 7
            assert c.wait() == 7
    assert sid not in [s.id for s in client.list_sandboxes()]
    with pytest.raises(magnetar.NotFoundError) as ei:
        client.sandbox(sid)
    assert ei.value.code == magnetar.Code.NOT_FOUND


def test_output_without_follow(client: magnetar.Client, daemon: Daemon) -> None:
    with client.create_sandbox("runc") as sb:
        c = sb.run(daemon.busybox_image, args=["sh", "-c", "echo one; echo two >&2; read x; echo three"], stdin=True)

        def so_far() -> bytes:
            return b"".join(o.data for o in c.output(follow=False))

        # Running: what it printed so far, then the end, no exit status.
        deadline = time.monotonic() + 30
        while sorted(so_far().splitlines()) != [b"one", b"two"]:
            assert time.monotonic() < deadline, so_far()
            time.sleep(0.05)
        assert c.exit_code is None
        c.write_stdin(b"go\n", eof=True)
        assert c.wait() == 0
        c.exit_code = None
        # Exited: all of it, and the exit status.
        assert sorted(so_far().splitlines()) == [b"one", b"three", b"two"]
        assert c.exit_code == 0


def test_errors(client: magnetar.Client, daemon: Daemon) -> None:
    with pytest.raises(magnetar.InvalidArgumentError) as ei:
        client.create_sandbox("wasm", sandbox_id="../escape")
    assert ei.value.code == magnetar.Code.INVALID_ARGUMENT
    with pytest.raises(magnetar.NotFoundError):
        client.sandbox("no-such-sandbox")
    with pytest.raises(magnetar.MagnetarError):
        client.create_sandbox("no-such-kind")
    with client.create_sandbox("wasm") as sb:
        with pytest.raises(magnetar.AlreadyExistsError):
            client.create_sandbox("wasm", sandbox_id=sb.id)
        with pytest.raises(magnetar.NotFoundError):
            sb.run("example.com/no/such:image")
    # The generated stubs are usable directly and raise the runtime's error.
    from connectrpc.errors import ConnectError

    with pytest.raises(ConnectError) as ce:
        client.sandboxes.get_sandbox(sandbox_pb2.GetSandboxRequest(sandbox_id="no-such-sandbox"))
    assert ce.value.code == magnetar.Code.NOT_FOUND


def test_readme_example(daemon: Daemon, protocol: magnetar.Protocol) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent
    tar = Path(os.environ.get("MAGNETAR_EXAMPLES", here.parents[1] / ".tmp" / "examples")) / "hello-wasm.oci.tar"
    args = [sys.executable, str(here / "examples" / "hello.py"), daemon.address, str(tar)]
    if protocol == magnetar.Protocol.GRPC:
        args.insert(2, "--grpc")
    env = dict(os.environ, PYTHONPATH=str(here / "src"))
    res = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert "kinds: " in res.stdout and "wasm" in res.stdout
    assert "Hello from WebAssembly!" in res.stdout
    assert "SHOUT THIS" in res.stdout
    assert res.stdout.rstrip().endswith("exit code: 0")


def test_timeout_spares_output_and_wait(daemon: Daemon, protocol: magnetar.Protocol) -> None:
    from connectrpc.errors import ConnectError

    from magnetar.container.v1 import container_pb2

    with magnetar.Client(daemon.address, protocol=protocol, timeout=5) as client:
        with client.create_sandbox("wasm") as sb:
            c = sb.run(daemon.wasm_image, args=["-sleep", "8s"])
            # The generated stubs carry the client's timeout...
            with pytest.raises(ConnectError) as ei:
                client.containers.wait_process(container_pb2.WaitProcessRequest(container_id=c.id))
            assert ei.value.code == magnetar.Code.DEADLINE_EXCEEDED
            # ...the thin layer's output and wait last as long as the process.
            out = b"".join(chunk.data for chunk in c.output())
            assert b"Hello from WebAssembly!" in out
            assert c.exit_code == 0
            assert c.wait() == 0
            sb.delete(force=True)  # the with block tolerates an already deleted sandbox


def test_files(client: magnetar.Client, daemon: Daemon) -> None:
    with client.create_sandbox("runc") as sb:
        c = sb.run(daemon.busybox_image, args=["sh", "-c", "mkdir -p /work && echo made-inside > /work/in.txt"])
        assert c.wait() == 0
        files = c.files()
        # After the container exited, until it is deleted.
        assert files.read_file("/work/in.txt") == b"made-inside\n"
        big = bytes(range(256)) * (12 * 1024 + 3)
        info = files.write_file("/work/big.bin", big, atomic=True, permissions=0o600)
        assert info.size == len(big) and info.mode == 0o600
        assert files.read_file("/work/big.bin") == big
        assert b"".join(files.read("/work/big.bin", offset=10, length=5)) == big[10:15]
        files.write_file("/work/log", "a\n")
        files.write_file("/work/log", [b"b\n", b"c\n"], mode="append")
        assert files.read_file("/work/log") == b"a\nb\nc\n"
        changes = files.watch("/work")  # in place when it returns
        files.mkdir("/work/sub/deep", parents=True)
        change = next(changes)
        assert (change.type, change.path, change.is_dir) == ("created", "/work/sub", True)
        changes.close()  # type: ignore[attr-defined]
        entries, truncated = files.list("/work", recursive=True)
        assert [e.path for e in entries] == [
            "/work/big.bin", "/work/in.txt", "/work/log", "/work/sub", "/work/sub/deep",
        ] and not truncated
        archive = b"".join(files.download_tar("/work/sub"))
        assert files.upload_tar("/copy", archive) == (1, 0)
        assert files.stat("/copy/deep").type == magnetar.files.file_pb2.FILE_TYPE_DIRECTORY
        files.rename("/work/log", "/work/log2")
        files.remove("/copy", recursive=True)
        with pytest.raises(magnetar.NotFoundError):
            files.stat("/copy")
        with pytest.raises(magnetar.AlreadyExistsError):
            files.write_file("/work/log2", b"x", mode="create_new")
        with pytest.raises(magnetar.InvalidArgumentError):
            files.read_file("/work")
        with pytest.raises(magnetar.FailedPreconditionError):
            files.remove("/work")
        c.delete()
        with pytest.raises(magnetar.NotFoundError):
            files.stat("/")


def test_idle_timeout_expires(client: magnetar.Client) -> None:
    sb = client.create_sandbox("runc", idle_timeout=1)
    assert sb.proto.idle_timeout.seconds == 1
    # Events are the only way to watch without resetting the idle time
    # (every call about the sandbox counts as activity).
    for ev in client.events([sb.id], after=0):
        if ev.type == sandbox_pb2.EVENT_TYPE_SANDBOX_EXPIRED:
            assert ev.reason == "idle"
            break
    deadline = time.monotonic() + 30
    while True:
        try:
            client.sandbox(sb.id)
        except magnetar.NotFoundError:
            break
        assert time.monotonic() < deadline, "expired sandbox not deleted"
        time.sleep(0.1)


def test_set_timeout(client: magnetar.Client) -> None:
    with client.create_sandbox("runc", timeout=3600) as sb:
        assert sb.proto.HasField("expires_at")
        before = sb.proto.expires_at.seconds
        got = sb.set_timeout(60, idle_timeout=600)
        assert got.expires_at.seconds < before and got.idle_timeout.seconds == 600
        got = sb.set_timeout()
        assert not got.HasField("expires_at") and got.idle_timeout.seconds == 0
        assert not sb.refresh().HasField("expires_at")
        with pytest.raises(magnetar.InvalidArgumentError):
            sb.set_timeout(idle_timeout=2 * 366 * 86400)


def test_pause_resume_usage(client: magnetar.Client, daemon: Daemon) -> None:
    with client.create_sandbox("runc") as sb:
        sb.run(daemon.busybox_image, args=["sh", "-c", "trap 'exit 0' TERM; while :; do :; done"])
        u0 = sb.usage()
        assert u0.pids >= 1 and u0.memory_usage_bytes > 0
        samples = []
        for u in sb.watch_usage(0.1):
            samples.append(u)
            if len(samples) == 3:
                break
        assert samples[-1].cpu_usage_ns > u0.cpu_usage_ns
        assert sb.pause().state == sandbox_pb2.SANDBOX_STATE_PAUSED
        assert sb.refresh().state == sandbox_pb2.SANDBOX_STATE_PAUSED
        p0 = sb.usage().cpu_usage_ns
        time.sleep(0.5)  # a measurement window, not synchronisation
        p1 = sb.usage().cpu_usage_ns
        assert p1 - p0 < 50_000_000, f"paused sandbox used {p1 - p0} ns CPU in 0.5 s"
        assert sb.resume().state == sandbox_pb2.SANDBOX_STATE_READY
        deadline = time.monotonic() + 10
        while sb.usage().cpu_usage_ns < p1 + 50_000_000:
            assert time.monotonic() < deadline, "CPU did not grow after resume"
            time.sleep(0.05)


def _echo_server() -> list[str]:
    # One connection at a time; dialing retries while it does not listen.
    return ["sh", "-c", "while :; do nc -l -p 8081 -e cat; done"]


def _pattern(n: int) -> bytes:
    return bytes((i * 7 + (i >> 13)) & 0xFF for i in range(n))


def _dial(sb: magnetar.Sandbox, port: int) -> magnetar.PortConnection:
    deadline = time.monotonic() + 30
    while True:
        try:
            return sb.dial_port(port)
        except magnetar.UnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_dial_port(client: magnetar.Client, daemon: Daemon) -> None:
    with client.create_sandbox("runc") as sb:
        sb.run(daemon.busybox_image, args=_echo_server())
        with pytest.raises(magnetar.UnavailableError):
            sb.dial_port(8082)  # nothing listens
        with pytest.raises(magnetar.InvalidArgumentError):
            sb.dial_port(70000)
        # 1 MiB round trip, sent from a thread while it is read back, then
        # a half-close: cat reads end of file, the rest comes back, then
        # the end of the connection.
        data = _pattern(1 << 20)
        with _dial(sb, 8081) as conn:

            def write() -> None:
                conn.send(data)
                conn.close_write()

            t = threading.Thread(target=write)
            t.start()
            got = bytearray()
            while chunk := conn.recv():
                got += chunk
            t.join()
            assert bytes(got) == data
        # More connections, one after the other.
        for i in range(3):
            with _dial(sb, 8081) as conn:
                conn.send(f"line {i}\n".encode())
                conn.close_write()
                got = bytearray()
                while chunk := conn.recv(3):
                    got += chunk
                assert got == f"line {i}\n".encode()
        # Dropped before the end: nothing hangs.
        conn = _dial(sb, 8081)
        conn.send(b"unfinished")
        conn.close()


@pytest.mark.parametrize("protocol", [magnetar.Protocol.CONNECT, magnetar.Protocol.GRPC], ids=lambda p: p.value)
def test_remote_tls_tokens_and_tenants(daemon: Daemon, protocol: magnetar.Protocol) -> None:
    """A remote listener: TLS against the test CA, a bearer token per tenant."""
    assert daemon.tokens is not None
    url, ca = daemon.remote_url, daemon.ca_file

    def remote(token: str | None, ca_file: str | None = ca) -> magnetar.Client:
        return magnetar.Client(url, protocol=protocol, token=token, ca_file=ca_file, retry_timeout=0)

    with remote(daemon.tokens["admin"]) as admin:
        with admin.create_sandbox("wasm") as sb:
            c = sb.run(daemon.wasm_image, args=["via", "remote", protocol.value])
            out, _ = _collect(c)
            assert f"args: via remote {protocol.value}" in out
            assert c.exit_code == 0
    with remote(None) as anonymous:
        with pytest.raises(magnetar.MagnetarError) as e:
            anonymous.kinds()
        assert e.value.code == magnetar.Code.UNAUTHENTICATED
    with remote(daemon.tokens["a"], ca_file=None) as untrusting:
        with pytest.raises(magnetar.MagnetarError):
            untrusting.kinds()
    with remote(daemon.tokens["a"]) as a, remote(daemon.tokens["b"]) as b:
        with b.create_sandbox("wasm") as sb_b, a.create_sandbox("wasm") as sb_a:
            assert sb_a.proto.labels["magnetar.io/tenant"] == "a"
            with pytest.raises(magnetar.NotFoundError):
                a.sandbox(sb_b.id)
            assert [s.id for s in a.list_sandboxes()] == [sb_a.id]
            assert [s.id for s in b.list_sandboxes()] == [sb_b.id]


def test_remote_options_checked() -> None:
    with pytest.raises(ValueError, match="tokens are for remote sandboxers"):
        magnetar.Client("unix:///nonexistent/api.sock", token="t")
    with pytest.raises(ValueError, match="need an https"):
        magnetar.Client("http://127.0.0.1:1", ca_file="/ca.pem")
    with pytest.raises(ValueError, match="line break"):
        magnetar.Client("https://127.0.0.1:1", token="a\nb")
