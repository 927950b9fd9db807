"""The sync client across restarts of a live sandboxer: kill -9 of its worker
and a live upgrade, with an output stream, an event stream and a usage
stream open."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import magnetar
from conftest import Daemon
from magnetar.sandbox.v1 import sandbox_pb2


def test_streams_survive_restart(daemon: Daemon) -> None:
    with magnetar.Client(daemon.address, timeout=60) as client, client.create_sandbox("runc") as sb:
        events: list[sandbox_pb2.Event] = []
        errors: list[BaseException] = []

        def watch() -> None:
            try:
                for ev in client.events([sb.id], after=0):
                    events.append(ev)
                    if ev.type == sandbox_pb2.EVENT_TYPE_PROCESS_EXITED:
                        return
            except BaseException as e:  # reported by the test
                errors.append(e)

        watcher = threading.Thread(target=watch)
        watcher.start()
        # Usage samples every 100 ms, across the restarts.
        samples: list[sandbox_pb2.SandboxUsage] = []
        stop = threading.Event()

        def sample() -> None:
            try:
                for u in sb.watch_usage(0.1):
                    samples.append(u)
                    if stop.is_set():
                        return
            except BaseException as e:  # reported by the test
                errors.append(e)

        sampler = threading.Thread(target=sample)
        sampler.start()
        c = sb.run(
            daemon.busybox_image,
            args=["sh", "-c", "trap 'exit 7' TERM; i=0; while :; do echo $i; i=$((i+1)); sleep 0.02; done"],
        )
        data = b""
        offsets_ok = True
        restarts = 0
        for chunk in c.output():
            offsets_ok = offsets_ok and chunk.offset == len(data)
            data += chunk.data
            lines = data.count(b"\n")
            # 1500 lines: 30 s or more of output.
            assert restarts == 0 or lines < mark + 1500, f"usage samples stopped at {len(samples)} after restart {restarts}"
            if restarts == 0 and lines >= 20:
                old = daemon.worker_pid()
                assert old, "no worker"
                os.kill(old, signal.SIGKILL)
                # A call that changes nothing is retried through the gap.
                assert client.sandbox(sb.id).id == sb.id
                daemon.new_worker(old)
                restarts, mark, smark = 1, lines, len(samples)
            elif restarts == 1 and lines >= mark + 20 and len(samples) >= smark + 3:
                old = daemon.worker_pid()
                subprocess.run([daemon.binary, "upgrade", "--run-dir", daemon.run_dir], check=True, capture_output=True)
                daemon.new_worker(old)
                restarts, mark, smark = 2, lines, len(samples)
            elif restarts == 2 and lines >= mark + 20 and len(samples) >= smark + 3:
                c.kill(signal.SIGTERM)
                restarts = 3
        assert restarts == 3
        assert c.exit_code == 7
        assert offsets_ok
        got = data.decode().splitlines()
        assert got == [str(i) for i in range(len(got))], "output lost or repeated across the restarts"
        watcher.join(timeout=60)
        stop.set()
        sampler.join(timeout=60)
        assert not errors, errors
        types = [e.type for e in events]
        assert types[-3:] == [
            sandbox_pb2.EVENT_TYPE_CONTAINER_CREATED,
            sandbox_pb2.EVENT_TYPE_CONTAINER_STARTED,
            sandbox_pb2.EVENT_TYPE_PROCESS_EXITED,
        ], types
        seqs = [e.sequence for e in events]
        assert seqs == sorted(set(seqs)), seqs
        # What the stream delivered is what the sandboxer kept.
        kept = []
        for ev in client.events([sb.id], after=0):
            kept.append(ev.sequence)
            if ev.sequence == seqs[-1]:
                break
        assert kept == seqs
        assert events[-1].exit_status == 7
        c.delete()
