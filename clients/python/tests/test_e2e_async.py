"""End-to-end tests of the asyncio client against a live sandboxer, over Connect and gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import magnetar
from conftest import Daemon
from magnetar.sandbox.v1 import sandbox_pb2


async def _collect(c: magnetar.AsyncContainer) -> tuple[str, str]:
    out, err = b"", b""
    async for chunk in c.output():
        if chunk.stream == "stderr":
            err += chunk.data
        else:
            out += chunk.data
    return out.decode(), err.decode()


@pytest.mark.asyncio
async def test_async_wasm_and_runc(daemon: Daemon, protocol: magnetar.Protocol) -> None:
    async with magnetar.AsyncClient(daemon.address, protocol=protocol, timeout=120) as client:
        kinds = {k.name: k for k in await client.kinds()}
        assert kinds["wasm"].available and kinds["runc"].available

        async with await client.create_sandbox("wasm") as wasm, await client.create_sandbox("runc") as runc:
            # Two containers in two kinds, streamed concurrently.
            w = await wasm.run(daemon.wasm_image, args=["-echo"], stdin=True)
            r = await runc.run(daemon.busybox_image, args=["sh", "-c", "cat; echo done >&2; exit 5"], stdin=True)
            await w.write_stdin(b"async\n", eof=True)
            await r.write_stdin(b"from runc\n")
            await r.close_stdin()
            (wout, _), (rout, rerr) = await asyncio.gather(_collect(w), _collect(r))
            assert "ASYNC\n" in wout and w.exit_code == 0
            assert rout == "from runc\n" and rerr == "done\n" and r.exit_code == 5
            assert await r.wait() == 5
            ids = {wasm.id, runc.id}
            assert ids <= {s.id for s in await client.list_sandboxes()}
        assert not ids & {s.id for s in await client.list_sandboxes()}
        with pytest.raises(magnetar.NotFoundError):
            await client.sandbox(wasm.id)


@pytest.mark.asyncio
async def test_async_output_without_follow(daemon: Daemon, protocol: magnetar.Protocol) -> None:
    async with magnetar.AsyncClient(daemon.address, protocol=protocol, timeout=120) as client:
        async with await client.create_sandbox("runc") as sb:
            c = await sb.run(daemon.busybox_image, args=["sh", "-c", "echo one; read x; echo two"], stdin=True)

            async def so_far() -> bytes:
                return b"".join([o.data async for o in c.output(follow=False)])

            deadline = asyncio.get_running_loop().time() + 30
            while await so_far() != b"one\n":
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            assert c.exit_code is None
            await c.write_stdin(b"go\n", eof=True)
            assert await c.wait() == 0
            c.exit_code = None
            assert await so_far() == b"one\ntwo\n"
            assert c.exit_code == 0


@pytest.mark.asyncio
async def test_async_errors(daemon: Daemon, protocol: magnetar.Protocol) -> None:
    async with magnetar.AsyncClient(daemon.address, protocol=protocol) as client:
        with pytest.raises(magnetar.InvalidArgumentError) as ei:
            await client.create_sandbox("runc", sandbox_id="bad/id")
        assert ei.value.code == magnetar.Code.INVALID_ARGUMENT
        with pytest.raises(magnetar.NotFoundError):
            await client.sandbox("no-such-sandbox")
        async with await client.create_sandbox("wasm") as sb:
            c = await sb.run(daemon.wasm_image, args=["-sleep", "60s"])
            with pytest.raises(magnetar.FailedPreconditionError):
                await c.delete()  # still running, no force
            await c.kill()
            assert await c.wait() != 0


@pytest.mark.asyncio
async def test_async_files(daemon: Daemon, protocol: magnetar.Protocol) -> None:
    async with magnetar.AsyncClient(daemon.address, protocol=protocol, timeout=120) as client:
        async with await client.create_sandbox("runc") as sb:
            c = await sb.run(daemon.busybox_image, args=["sleep", "300"])
            files = c.files()
            await files.mkdir("/work/out", parents=True)

            async def parts() -> AsyncIterator[bytes]:
                for i in range(3):
                    yield f"part {i}\n".encode()

            info = await files.write_file("/work/parts.txt", parts(), atomic=True)
            assert info.size == 21
            assert await files.read_file("/work/parts.txt") == b"part 0\npart 1\npart 2\n"
            changes = await files.watch("/work/out")  # in place when it returns
            await files.write_file("/work/out/f", b"x")
            change = await anext(changes)
            assert (change.type, change.path, change.is_dir) == ("created", "/work/out/f", False)
            await changes.aclose()  # type: ignore[attr-defined]
            entries, truncated = await files.list("/work", recursive=True, limit=2)
            assert len(entries) == 2 and truncated
            archive = b"".join([b async for b in files.download_tar("/work/parts.txt")])
            assert await files.upload_tar("/copy", archive) == (1, 21)
            await files.rename("/copy/parts.txt", "/copy/p.txt")
            await files.remove("/copy", recursive=True)
            with pytest.raises(magnetar.NotFoundError):
                await files.stat("/copy")
            await c.delete(force=True)


@pytest.mark.asyncio
async def test_async_lifetime_pause_usage(daemon: Daemon, protocol: magnetar.Protocol) -> None:
    async with magnetar.AsyncClient(daemon.address, protocol=protocol, timeout=120) as client:
        async with await client.create_sandbox("runc", timeout=3600, idle_timeout=600) as sb:
            assert sb.proto.HasField("expires_at") and sb.proto.idle_timeout.seconds == 600
            got = await sb.set_timeout(idle_timeout=300)
            assert not got.HasField("expires_at") and got.idle_timeout.seconds == 300
            await sb.run(daemon.busybox_image, args=["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"])
            assert (await sb.pause()).state == sandbox_pb2.SANDBOX_STATE_PAUSED
            assert (await sb.refresh()).state == sandbox_pb2.SANDBOX_STATE_PAUSED
            assert (await sb.resume()).state == sandbox_pb2.SANDBOX_STATE_READY
            u = await sb.usage()
            assert u.pids >= 1
            samples = []
            async for s in sb.watch_usage(0.1):
                samples.append(s)
                if len(samples) == 2:
                    break
            assert samples[1].timestamp.ToNanoseconds() > samples[0].timestamp.ToNanoseconds()


@pytest.mark.asyncio
async def test_async_dial_port(daemon: Daemon, protocol: magnetar.Protocol) -> None:
    async with magnetar.AsyncClient(daemon.address, protocol=protocol, timeout=120) as client:
        async with await client.create_sandbox("runc") as sb:
            await sb.run(daemon.busybox_image, args=["sh", "-c", "while :; do nc -l -p 8081 -e cat; done"])
            with pytest.raises(magnetar.UnavailableError):
                await sb.dial_port(8082)

            async def dial() -> magnetar.AsyncPortConnection:
                deadline = asyncio.get_running_loop().time() + 30
                while True:
                    try:
                        return await sb.dial_port(8081)
                    except magnetar.UnavailableError:
                        if asyncio.get_running_loop().time() > deadline:
                            raise
                        await asyncio.sleep(0.1)

            async def read(conn: magnetar.AsyncPortConnection) -> bytes:
                got = bytearray()
                while chunk := await conn.recv():
                    got += chunk
                return bytes(got)

            data = bytes((i * 7 + (i >> 13)) & 0xFF for i in range(1 << 20))
            async with await dial() as conn:

                async def write() -> None:
                    await conn.send(data)
                    await conn.close_write()

                _, got = await asyncio.gather(write(), read(conn))
                assert got == data
            async with await dial() as conn:
                await conn.send(b"half\n")
                await conn.close_write()
                assert await read(conn) == b"half\n"
                assert await conn.recv() == b""


@pytest.mark.asyncio
async def test_async_remote_tenants(daemon: Daemon, protocol: magnetar.Protocol) -> None:
    """The asyncio client on the remote listener: tokens, tenants, TLS."""
    assert daemon.tokens is not None
    url, ca = daemon.remote_url, daemon.ca_file
    async with magnetar.AsyncClient(url, protocol=protocol, token=daemon.tokens["a"], ca_file=ca) as a:
        async with magnetar.AsyncClient(url, protocol=protocol, token=daemon.tokens["b"], ca_file=ca) as b:
            async with await b.create_sandbox("wasm") as sb_b:
                with pytest.raises(magnetar.NotFoundError):
                    await a.sandbox(sb_b.id)
                assert [s.id for s in await a.list_sandboxes()] == []
    async with magnetar.AsyncClient(url, protocol=protocol, ca_file=ca, retry_timeout=0) as anonymous:
        with pytest.raises(magnetar.MagnetarError) as e:
            await anonymous.kinds()
        assert e.value.code == magnetar.Code.UNAUTHENTICATED
