"""Fixtures: a real magnetar-sandboxer in direct mode, private to the test session.

The sandboxer binary comes from ``$MAGNETAR_BIN`` (default ``<repo>/.tmp/bin``,
``make build``) and the example images from ``$MAGNETAR_EXAMPLES`` (default
``<repo>/.tmp/examples``, ``make examples``). Without root or without them the
end-to-end tests are skipped; ``MAGNETAR_E2E_REQUIRED=1`` makes that a failure.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import magnetar

ROOT = Path(__file__).resolve().parents[3]
PROTOCOLS = [magnetar.Protocol.CONNECT, magnetar.Protocol.GRPC]


@dataclass
class Daemon:
    """A running sandboxer and the images imported into it."""

    address: str
    socket: str
    wasm_image: str
    busybox_image: str
    binary: str
    run_dir: str
    supervisor_pid: int
    remote_url: str = ""
    """The remote listener (TLS with tests/testdata's certificate)."""
    ca_file: str = ""
    tokens: dict[str, str] | None = None
    """The remote listener's tokens: tenants "a" and "b", and "admin"."""

    def worker_pid(self) -> int:
        """The pid of the supervisor's worker (0: none now)."""
        for f in Path(f"/proc/{self.supervisor_pid}/task").glob("*/children"):
            try:
                children = f.read_text().split()
            except OSError:
                continue  # the thread ended since the listing
            for pid in children:
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"magnetar-sandboxer\x00--state-dir\x00" in cmd:
                    return int(pid)
        return 0

    def new_worker(self, old: int, timeout: float = 60) -> int:
        """Waits for a worker other than ``old``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.worker_pid()
            if pid not in (0, old):
                return pid
            time.sleep(0.05)
        raise AssertionError(f"no new worker after {old} within {timeout} s")


def _make_certs(d: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 signed by it (cert.pem,
    key.pem, ca.pem), valid for a day, made with openssl."""
    d.mkdir(mode=0o700)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=magnetar-test-ca",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    ossl("req", *ec, "-keyout", "key.pem", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "cert.pem", "-days", "1", "-extfile", "ext.cnf")


def _unavailable(msg: str) -> None:
    if os.environ.get("MAGNETAR_E2E_REQUIRED") == "1":
        pytest.fail(f"{msg} (MAGNETAR_E2E_REQUIRED=1)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    bin_dir = Path(os.environ.get("MAGNETAR_BIN", ROOT / ".tmp" / "bin"))
    examples = Path(os.environ.get("MAGNETAR_EXAMPLES", ROOT / ".tmp" / "examples"))
    sandboxer = bin_dir / "magnetar-sandboxer"
    wasm_tar = examples / "hello-wasm.oci.tar"
    busybox_tar = examples / "busybox.oci.tar"
    if os.geteuid() != 0:
        _unavailable("the sandboxer needs root (runc kind, mounts, cgroups)")
    for p in (sandboxer, wasm_tar, busybox_tar):
        if not p.exists():
            _unavailable(f"{p} is missing: run `make build examples`")

    # Short path: a unix socket path must fit in 107 bytes.
    work = Path(tempfile.mkdtemp(prefix="mgpy."))
    sock = work / "run" / "api.sock"
    testdata = work / "tls"
    _make_certs(testdata)
    tokens = {"a": "token-of-tenant-a", "b": "token-of-tenant-b", "admin": "token-of-the-admin"}
    sha = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in tokens.items()}
    (work / "tenants.toml").write_text(
        "version = 1\n"
        f'[[tenant]]\nname = "a"\ntoken_sha256 = ["{sha["a"]}"]\n'
        f'[[tenant]]\nname = "b"\ntoken_sha256 = ["{sha["b"]}"]\n'
        f'[[tenant]]\nname = "admin"\nadmin = true\ntoken_sha256 = ["{sha["admin"]}"]\n'
    )
    log = open(work / "sandboxer.log", "wb")
    proc = subprocess.Popen(
        [
            str(sandboxer),
            "--state-dir", str(work / "state"),
            "--run-dir", str(work / "run"),
            "--listen", str(work / "run" / "sandboxer.sock"),
            "--api-listen", str(sock),
            "--api-listen", "tcp://127.0.0.1:0",
            "--api-tls-cert", str(testdata / "cert.pem"),
            "--api-tls-key", str(testdata / "key.pem"),
            "--api-tenants", str(work / "tenants.toml"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        def remote_port() -> str | None:
            m = re.search(
                r"serving Magnetar API to tenants.* listen=127\.0\.0\.1:(\d+)", (work / "sandboxer.log").read_text()
            )
            return m.group(1) if m else None

        while not sock.exists() or remote_port() is None:
            if proc.poll() is not None:
                pytest.fail(f"sandboxer exited ({proc.returncode}): {(work / 'sandboxer.log').read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("sandboxer: no API socket after 120 s")
            time.sleep(0.05)
        address = f"unix://{sock}"
        with magnetar.Client(address) as client:
            wasm = client.import_image(str(wasm_tar))
            busybox = client.import_image(str(busybox_tar))
        yield Daemon(
            address,
            str(sock),
            wasm[0].name,
            busybox[0].name,
            str(sandboxer),
            str(work / "run"),
            proc.pid,
            remote_url=f"https://127.0.0.1:{remote_port()}",
            ca_file=str(testdata / "ca.pem"),
            tokens=tokens,
        )
        # Everything the tests created must be gone already.
        with magnetar.Client(address) as client:
            left = client.list_sandboxes()
            for sb in left:
                client.sandbox(sb.id).delete(force=True)
        assert not left, f"sandboxes left behind by the tests: {[sb.id for sb in left]}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(params=PROTOCOLS, ids=lambda p: p.value)
def protocol(request: pytest.FixtureRequest) -> magnetar.Protocol:
    return request.param


@pytest.fixture
def client(daemon: Daemon, protocol: magnetar.Protocol) -> Iterator[magnetar.Client]:
    with magnetar.Client(daemon.address, protocol=protocol, timeout=120) as c:
        yield c
