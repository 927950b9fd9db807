"""Fixtures: a real magnetar-sandboxer in direct mode, private to the test session.

The sandboxer binary comes from ``$MAGNETAR_BIN`` (default ``<repo>/.tmp/bin``,
``make build``) and the example images from ``$MAGNETAR_EXAMPLES`` (default
``<repo>/.tmp/examples``, ``make examples``). Without root or without them the
end-to-end tests are skipped; ``MAGNETAR_E2E_REQUIRED=1`` makes that a failure.
"""

from __future__ import annotations

import os
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

    def worker_pid(self) -> int:
        """The pid of the supervisor's worker (0: none now)."""
        for f in Path(f"/proc/{self.supervisor_pid}/task").glob("*/children"):
            for pid in f.read_text().split():
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
    log = open(work / "sandboxer.log", "wb")
    proc = subprocess.Popen(
        [
            str(sandboxer),
            "--state-dir", str(work / "state"),
            "--run-dir", str(work / "run"),
            "--listen", str(work / "run" / "sandboxer.sock"),
            "--api-listen", str(sock),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not sock.exists():
            if proc.poll() is not None:
                pytest.fail(f"sandboxer exited ({proc.returncode}): {(work / 'sandboxer.log').read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("sandboxer: no API socket after 120 s")
            time.sleep(0.05)
        address = f"unix://{sock}"
        with magnetar.Client(address) as client:
            wasm = client.import_image(str(wasm_tar))
            busybox = client.import_image(str(busybox_tar))
        yield Daemon(address, str(sock), wasm[0].name, busybox[0].name, str(sandboxer), str(work / "run"), proc.pid)
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
