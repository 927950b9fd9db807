// Live tests: a real magnetar-sandboxer (direct mode) driven through the
// client over its unix socket, with the Connect protocol and with gRPC, and
// through a URL (a loopback TCP port forwarded to the socket).
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import * as tls from "node:tls";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { after, before, describe, test } from "node:test";
import {
  Code,
  ConnectError,
  EventType,
  MagnetarError,
  SandboxState,
  dial,
  isNotFound,
  type DialOptions,
  type sandboxv1,
  type MagnetarClient,
  type OutputChunk,
} from "../src/index.js";
import {
  busyboxArchive,
  busyboxImage,
  helloWasmArchive,
  helloWasmImage,
  liveSkipReason,
  startSandboxer,
  type Sandboxer,
} from "./sandboxer.js";

const skip = liveSkipReason();
// Generous: VM-less, but the machine is shared and may be slow.
const timeout = 300_000;

// Each protocol gets its own labels so that listings of one suite do not
// see the other's sandboxes.
const variants: { name: string; options: DialOptions }[] = [
  { name: "connect", options: { protocol: "connect" } },
  { name: "grpc", options: { protocol: "grpc" } },
  { name: "connect-http1.1", options: { protocol: "connect", httpVersion: "1.1" } },
];

// A self-signed certificate for 127.0.0.1 (test/testdata, valid until 2126).
const testdata = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "test", "testdata");

/**
 * Listens on a loopback port and forwards every connection to the
 * sandboxer's unix socket (the sandboxer serves only its socket): plain TCP,
 * or TLS terminated here (ALPN h2 or http/1.1; the sandboxer speaks both in
 * clear text).
 */
async function forwarder(socket: string, useTLS: boolean): Promise<{ url: string; close(): Promise<void> }> {
  const conns = new Set<net.Socket>();
  const onConn = (down: net.Socket) => {
    const up = net.connect(socket);
    conns.add(down).add(up);
    down.pipe(up).pipe(down);
    const drop = () => {
      down.destroy();
      up.destroy();
      conns.delete(down);
      conns.delete(up);
    };
    down.on("error", drop).on("close", drop);
    up.on("error", drop).on("close", drop);
  };
  const server = useTLS
    ? tls.createServer(
        {
          key: fs.readFileSync(path.join(testdata, "key.pem")),
          cert: fs.readFileSync(path.join(testdata, "cert.pem")),
          ALPNProtocols: ["h2", "http/1.1"],
        },
        onConn,
      )
    : net.createServer(onConn);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `${useTLS ? "https" : "http"}://127.0.0.1:${port}`,
    async close() {
      for (const c of conns) {
        c.destroy();
      }
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

const text = (chunks: OutputChunk[], stream: "stdout" | "stderr") =>
  Buffer.concat(chunks.filter((c) => c.stream === stream).map((c) => c.data)).toString("utf8");

describe("magnetar-sandboxer", { skip, timeout: 30 * 60_000 }, () => {
  let daemon: Sandboxer;

  before(async () => {
    daemon = await startSandboxer();
    const c = dial(daemon.socket);
    try {
      const phases = new Set<number>();
      const wasm = await c.importImage(helloWasmArchive, (p) => phases.add(p.phase));
      assert.deepEqual(wasm.map((i) => i.name), [helloWasmImage]);
      const busybox = await c.importImage(busyboxArchive);
      assert.deepEqual(busybox.map((i) => i.name), [busyboxImage]);
      assert.ok(phases.size > 0, "import reported no progress");
      const names = (await c.images()).map((i) => i.name).sort();
      assert.deepEqual(names, [busyboxImage, helloWasmImage].sort());
    } finally {
      c.close();
    }
  }, { timeout });

  after(async () => {
    await daemon?.stop();
  }, { timeout });

  for (const variant of variants) {
    describe(variant.name, () => {
      let client: MagnetarClient;
      const labels = { "magnetar.test/variant": variant.name };
      before(() => {
        client = dial(daemon.socket, variant.options);
      });
      after(() => client?.close());

      test("lists the kinds", { timeout }, async () => {
        const kinds = new Map((await client.kinds()).map((k) => [k.name, k]));
        for (const name of ["runc", "wasm"]) {
          const k = kinds.get(name);
          assert.ok(k, `kind ${name} missing from ${[...kinds.keys()].join(", ")}`);
          assert.equal(k.available, true, `${name}: ${k.unavailableReason}`);
        }
        assert.equal(kinds.get("wasm")?.capabilities?.stdin, true);
      });

      test("runs a Wasm container: output stream, stdin, exit code", { timeout }, async () => {
        const sb = await client.createSandbox("wasm", { labels });
        assert.equal(sb.kind, "wasm");
        assert.equal(sb.state, SandboxState.READY);
        const ctr = await sb.run({
          image: helloWasmImage,
          args: ["-echo", "-exit", "3", "from", variant.name],
          env: { GREETING: "hi" },
          stdin: true,
        });
        assert.equal(ctr.sandboxId, sb.id);
        assert.equal(await ctr.writeStdin("shout this\n"), 11);
        await ctr.writeStdin("and this\n", { eof: true });

        const chunks: OutputChunk[] = [];
        for await (const chunk of ctr.output()) {
          chunks.push(chunk);
        }
        const stdout = text(chunks, "stdout");
        assert.match(stdout, /^Hello from WebAssembly! \(wasip1\/wasm\)$/m);
        assert.match(stdout, new RegExp(`^args: from ${variant.name}$`, "m"));
        assert.match(stdout, /^GREETING=hi$/m);
        assert.match(stdout, /^SHOUT THIS\nAND THIS$/m);
        assert.equal(text(chunks, "stderr"), "exiting with 3\n");
        assert.equal((await ctr.wait()).code, 3);

        // Output is kept: a second reader sees it all again.
        const again = await ctr.collect();
        assert.equal(again.stdout, stdout);
        assert.equal(again.code, 3);
        await sb.delete({ force: true });
      });

      test("runs a runc container and an exec in it", { timeout }, async () => {
        await using sb = await client.createSandbox("runc", { labels, hostname: "ts-client" });
        const ctr = await sb.run({
          image: busyboxImage,
          args: ["sh", "-c", 'read line; echo "got:$line"; echo oops >&2; cat; exit 7'],
          stdin: true,
        });
        await ctr.writeStdin("first line\n");
        const exec = await ctr.exec({ args: ["sh", "-c", "echo exec:$(hostname)"], execId: "probe" });
        assert.equal(exec.execId, "probe");
        const probe = await exec.collect();
        assert.deepEqual([probe.stdout, probe.stderr, probe.code], ["exec:ts-client\n", "", 0]);

        await ctr.writeStdin("rest\n");
        await ctr.closeStdin();
        const res = await ctr.collect();
        assert.equal(res.stdout, "got:first line\nrest\n");
        assert.equal(res.stderr, "oops\n");
        assert.equal(res.code, 7);
        assert.equal((await ctr.delete()).code, 7);
      });

      test("reads the output there is without following (follow: false)", { timeout }, async () => {
        await using sb = await client.createSandbox("runc", { labels });
        const ctr = await sb.run({ image: busyboxImage, args: ["sh", "-c", "echo one; echo two >&2; read x; echo three"], stdin: true });
        const soFar = async () => {
          const chunks: OutputChunk[] = [];
          const it = ctr.output({ follow: false });
          for (;;) {
            const r = await it.next();
            if (r.done) {
              return { chunks, exit: r.value };
            }
            chunks.push(r.value);
          }
        };
        // Running: what it printed so far, then the stream ends, no exit.
        const deadline = Date.now() + 30_000;
        let got = await soFar();
        while (text(got.chunks, "stdout") + text(got.chunks, "stderr") !== "one\ntwo\n") {
          assert.ok(Date.now() < deadline, `output so far: ${JSON.stringify(got)}`);
          await new Promise((r) => setTimeout(r, 50));
          got = await soFar();
        }
        assert.equal(got.exit, undefined);
        await ctr.writeStdin("go\n", { eof: true });
        assert.equal((await ctr.wait()).code, 0);
        // Exited: all of it and the exit status.
        got = await soFar();
        assert.equal(text(got.chunks, "stdout"), "one\nthree\n");
        assert.equal(got.exit?.code, 0);
      });

      test("an idle sandbox expires, then is gone", { timeout }, async () => {
        const sb = await client.createSandbox("runc", { labels, idleTimeoutMs: 1000 });
        assert.equal(Number(sb.info.idleTimeout?.seconds), 1);
        // Only events watch it without resetting its idle time.
        for await (const ev of client.events({ sandboxIds: [sb.id], after: 0n })) {
          if (ev.type === EventType.SANDBOX_EXPIRED) {
            assert.equal(ev.reason, "idle");
            break;
          }
        }
        const deadline = Date.now() + 30_000;
        for (;;) {
          try {
            await client.sandbox(sb.id);
          } catch (err) {
            assert.ok(isNotFound(err), String(err));
            break;
          }
          assert.ok(Date.now() < deadline, "expired sandbox not deleted");
          await new Promise((r) => setTimeout(r, 100));
        }
      });

      test("sets a sandbox's timeout", { timeout }, async () => {
        await using sb = await client.createSandbox("runc", { labels, timeoutMs: 3_600_000 });
        const before = Number(sb.info.expiresAt?.seconds);
        assert.ok(before > 0);
        await sb.setTimeout({ timeoutMs: 60_000, idleTimeoutMs: 600_000 });
        assert.ok(Number(sb.info.expiresAt?.seconds) < before);
        assert.equal(Number(sb.info.idleTimeout?.seconds), 600);
        await sb.setTimeout();
        assert.equal(sb.info.expiresAt, undefined);
        assert.equal((await sb.refresh()).info.expiresAt, undefined);
        await assert.rejects(sb.setTimeout({ timeoutMs: -1 }), (err: unknown) => err instanceof MagnetarError && err.code === Code.InvalidArgument);
      });

      test("pauses, resumes and measures a sandbox", { timeout }, async () => {
        await using sb = await client.createSandbox("runc", { labels });
        await sb.run({ image: busyboxImage, args: ["sh", "-c", "trap 'exit 0' TERM; while :; do :; done"] });
        const u0 = await sb.usage();
        assert.ok(u0.pids >= 1n && u0.memoryUsageBytes > 0n);
        const samples: sandboxv1.SandboxUsage[] = [];
        for await (const u of sb.watchUsage(100)) {
          samples.push(u);
          if (samples.length === 3) {
            break;
          }
        }
        assert.ok(samples[2].cpuUsageNs > u0.cpuUsageNs);
        assert.equal((await sb.pause()).state, SandboxState.PAUSED);
        assert.equal((await sb.refresh()).state, SandboxState.PAUSED);
        const p0 = (await sb.usage()).cpuUsageNs;
        await new Promise((r) => setTimeout(r, 500)); // a measurement window
        const p1 = (await sb.usage()).cpuUsageNs;
        assert.ok(p1 - p0 < 50_000_000n, `paused sandbox used ${p1 - p0} ns CPU in 0.5 s`);
        assert.equal((await sb.resume()).state, SandboxState.READY);
        const deadline = Date.now() + 10_000;
        while ((await sb.usage()).cpuUsageNs < p1 + 50_000_000n) {
          assert.ok(Date.now() < deadline, "CPU did not grow after resume");
          await new Promise((r) => setTimeout(r, 50));
        }
      });

      test("dials a port in a sandbox: round trip and half-close", { timeout }, async () => {
        await using sb = await client.createSandbox("runc", { labels });
        if (variant.options.httpVersion === "1.1") {
          // Connect over HTTP/1.1 cannot stream both ways.
          await assert.rejects(sb.dialPort(8081), (err: unknown) => {
            assert.ok(err instanceof MagnetarError, String(err));
            assert.equal(err.code, Code.Unimplemented, err.message);
            return true;
          });
          return;
        }
        // An echo server, one connection at a time (dial retries while it
        // does not listen).
        await sb.run({ image: busyboxImage, args: ["sh", "-c", "while :; do nc -l -p 8081 -e cat; done"] });
        // Nothing listens on 8082; 70000 is no port.
        await assert.rejects(sb.dialPort(8082), (err: unknown) => err instanceof MagnetarError && err.code === Code.Unavailable);
        await assert.rejects(sb.dialPort(70000), (err: unknown) => err instanceof MagnetarError && err.code === Code.InvalidArgument);
        const deadline = Date.now() + 30_000;
        const dial = async () => {
          for (;;) {
            try {
              return await sb.dialPort(8081);
            } catch (err) {
              if (!(err instanceof MagnetarError && err.code === Code.Unavailable) || Date.now() > deadline) {
                throw err;
              }
              await new Promise((r) => setTimeout(r, 100));
            }
          }
        };
        // A round trip of 1 MiB, written while it is read back, then a
        // half-close: cat reads end of file, the rest comes back, then
        // the end of the stream.
        const data = Buffer.alloc(1 << 20);
        for (let i = 0; i < data.length; i++) {
          data[i] = (i * 7 + (i >> 13)) & 0xff;
        }
        const roundTrip = async (payload: Buffer) => {
          const conn = await dial();
          const got: Buffer[] = [];
          const ended = new Promise<void>((resolve, reject) => {
            conn.on("data", (b: Buffer) => got.push(b));
            conn.on("end", resolve);
            conn.on("error", reject);
          });
          conn.end(payload);
          await ended;
          await new Promise<void>((resolve) => (conn.closed ? resolve() : conn.on("close", () => resolve())));
          return Buffer.concat(got);
        };
        assert.ok((await roundTrip(data)).equals(data), "1 MiB echo differs");
        // More connections, one after the other (nc serves one at a time).
        for (const i of [1, 2, 3]) {
          assert.equal((await roundTrip(Buffer.from(`line ${i} for cat\n`))).toString(), `line ${i} for cat\n`);
        }
        // Dropped at once: the other side sees it, nothing hangs.
        const conn = await dial();
        conn.write("unfinished");
        conn.destroy();
        await new Promise<void>((resolve) => (conn.closed ? resolve() : conn.on("close", () => resolve())));
      });

      test("reads, writes and watches a container's files", { timeout }, async () => {
        await using sb = await client.createSandbox("runc", { labels });
        const ctr = await sb.run({ image: busyboxImage, args: ["sleep", "300"] });
        const files = ctr.files();
        await files.mkdir("/work/out", { parents: true });
        const big = new Uint8Array(3 * 1024 * 1024 + 7).map((_, i) => i % 251);
        const info = await files.writeFile("/work/big.bin", big, { atomic: true, permissions: 0o600 });
        assert.equal(Number(info.size), big.length);
        assert.equal(info.mode, 0o600);
        assert.deepEqual(await files.readFile("/work/big.bin"), big);
        await files.writeFile("/work/run.sh", "#!/bin/sh\necho result > /work/out/r.txt\n", { permissions: 0o755 });
        await files.writeFile("/work/run.sh", "echo appended\n", { mode: "append" });
        const ac = new AbortController();
        const changes = await files.watch("/work/out", {}, { signal: ac.signal });
        const exec = await ctr.exec({ args: ["/work/run.sh"] });
        const res = await exec.collect();
        assert.equal(res.stdout, "appended\n");
        for await (const ch of changes) {
          if (ch.type === "created" && ch.path === "/work/out/r.txt") {
            break;
          }
        }
        ac.abort();
        assert.equal(new TextDecoder().decode(await files.readFile("/work/out/r.txt")), "result\n");
        const { entries, truncated } = await files.list("/work", { recursive: true });
        assert.deepEqual(entries.map((e) => e.path), ["/work/big.bin", "/work/out", "/work/out/r.txt", "/work/run.sh"]);
        assert.equal(truncated, false);
        const part = new Uint8Array(await collectBytes(files.read("/work/big.bin", { offset: 10, length: 5 })));
        assert.deepEqual(part, big.subarray(10, 15));
        // A tar of /work/out extracted elsewhere.
        const archive = await collectBytes(files.downloadTar("/work/out"));
        assert.deepEqual(await files.uploadTar("/copy", archive), { entries: 1, bytes: 7 });
        assert.equal(new TextDecoder().decode(await files.readFile("/copy/r.txt")), "result\n");
        await files.rename("/copy/r.txt", "/copy/s.txt");
        await files.remove("/copy", { recursive: true });
        // Errors with their codes; a link to the host's file stays inside.
        await assert.rejects(files.stat("/copy"), (err: unknown) => isNotFound(err));
        await assert.rejects(files.readFile("/work"), (err: unknown) => err instanceof MagnetarError && err.code === Code.InvalidArgument);
        await assert.rejects(files.writeFile("/work/run.sh", "x", { mode: "createNew" }), (err: unknown) => err instanceof MagnetarError && err.code === Code.AlreadyExists);
        await assert.rejects(files.remove("/work"), (err: unknown) => err instanceof MagnetarError && err.code === Code.FailedPrecondition);
        await (await ctr.exec({ args: ["ln", "-s", "/proc/1/root/etc/shadow", "/work/shadow"] })).collect();
        await assert.rejects(files.readFile("/work/shadow"));
        await ctr.delete({ force: true });
      });

      test("reports errors with their codes", { timeout }, async () => {
        await assert.rejects(client.sandbox("no-such-sandbox"), (err: unknown) => {
          assert.ok(err instanceof MagnetarError);
          assert.ok(err instanceof ConnectError);
          assert.equal(err.code, Code.NotFound);
          return true;
        });
        await assert.rejects(client.createSandbox("runc", { id: "../escape" }), (err: unknown) => {
          assert.ok(err instanceof MagnetarError);
          assert.equal(err.code, Code.InvalidArgument);
          return true;
        });
        // The generated clients throw plain ConnectErrors with the same code.
        await assert.rejects(client.containerService.getContainer({ containerId: "nope" }), (err: unknown) => {
          assert.ok(err instanceof ConnectError);
          assert.equal(err.code, Code.NotFound);
          return true;
        });
        // A running sandbox is not deleted without force; stdin needs stdin: true.
        const sb = await client.createSandbox("wasm", { labels });
        const ctr = await sb.run({ image: helloWasmImage, args: ["-sleep", "60s"] });
        await assert.rejects(ctr.writeStdin("x"), (err: unknown) => {
          assert.equal((err as MagnetarError).code, Code.FailedPrecondition);
          return true;
        });
        await assert.rejects(ctr.delete(), (err: unknown) => {
          assert.equal((err as MagnetarError).code, Code.FailedPrecondition);
          return true;
        });
        await ctr.signal("SIGKILL");
        assert.notEqual((await ctr.wait()).code, 0);
        await sb.delete({ force: true });
      });

      test("streams a sandbox's events", { timeout }, async () => {
        const id = `events-${variant.name}`;
        const seen: sandboxv1.Event[] = [];
        const ac = new AbortController();
        const watching = (async () => {
          try {
            for await (const ev of client.events({ sandboxIds: [id] }, { signal: ac.signal })) {
              seen.push(ev);
              if (ev.type === EventType.SANDBOX_DELETED) {
                return;
              }
            }
          } catch (err) {
            if (!ac.signal.aborted) {
              throw err;
            }
          }
        })();
        try {
          const sb = await client.createSandbox("wasm", { id, labels });
          await (await sb.run({ image: helloWasmImage })).wait();
          await sb.delete({ force: true });
          await watching; // ends at SANDBOX_DELETED
        } finally {
          ac.abort();
          await watching.catch(() => {});
        }
        assert.ok(seen.length > 0);
        assert.ok(seen.every((ev) => ev.sandboxId === id), JSON.stringify(seen.map((ev) => ev.sandboxId)));
        assert.equal(seen.at(-1)?.type, EventType.SANDBOX_DELETED);
      });

      test("deletes a sandbox and it is gone", { timeout }, async () => {
        const sb = await client.createSandbox("runc", { labels: { ...labels, gone: "yes" } });
        const ctr = await sb.run({ image: busyboxImage, args: ["sleep", "600"] });
        const listed = await client.sandboxes({ labels: { ...labels, gone: "yes" } });
        assert.deepEqual(listed.map((s) => s.id), [sb.id]);
        assert.deepEqual((await sb.containers()).map((c) => c.id), [ctr.id]);

        await sb.delete({ force: true });
        await assert.rejects(client.sandbox(sb.id), (err: unknown) => isNotFound(err));
        await assert.rejects(client.container(ctr.id), (err: unknown) => isNotFound(err));
        assert.deepEqual(await client.sandboxes({ labels: { ...labels, gone: "yes" } }), []);
        await assert.rejects(client.containers({ sandboxId: sb.id }), (err: unknown) => isNotFound(err));
      });
    });
  }

  for (const scheme of ["http", "https"] as const) {
    test(`dials an ${scheme}:// URL over Connect (HTTP/2 and 1.1) and gRPC`, { timeout }, async () => {
      const fwd = await forwarder(daemon.socket, scheme === "https");
      const ca = fs.readFileSync(path.join(testdata, "cert.pem"));
      try {
        const variants: DialOptions[] = [
          { protocol: "connect" },
          { protocol: "grpc" },
          { protocol: "connect", httpVersion: "1.1" },
        ];
        for (const v of variants) {
          const opts: DialOptions = scheme === "https" ? { ...v, tls: { ca } } : { ...v, insecure: true };
          const name = `${scheme}-${v.protocol}-${v.httpVersion ?? "2"}`;
          const c = dial(fwd.url, opts);
          try {
            const kinds = (await c.kinds()).map((k) => k.name);
            assert.ok(kinds.includes("wasm"), kinds.join(", "));
            const sb = await c.createSandbox("wasm", { labels: { "magnetar.test/variant": name } });
            const res = await (await sb.run({ image: helloWasmImage, args: ["via", name] })).collect();
            assert.match(res.stdout, new RegExp(`^args: via ${name}$`, "m"));
            assert.equal(res.code, 0);
            await sb.delete({ force: true });
            await assert.rejects(c.sandbox(sb.id), (err: unknown) => isNotFound(err));
          } finally {
            c.close();
          }
        }
        if (scheme === "https") {
          // Without the test CA the server's certificate is not trusted.
          const c = dial(fwd.url);
          try {
            await assert.rejects(c.kinds(), (err: unknown) => err instanceof MagnetarError);
          } finally {
            c.close();
          }
        }
      } finally {
        await fwd.close();
      }
    });
  }

  test("a remote sandboxer: TLS, tokens and tenants", { timeout }, async () => {
    const protocols: DialOptions[] = [{ protocol: "connect" }, { protocol: "grpc" }, { protocol: "connect", httpVersion: "1.1" }];
    for (const v of protocols) {
      const name = `remote-${v.protocol}-${v.httpVersion ?? "2"}`;
      const admin = dial(daemon.remoteUrl, { ...v, caFile: daemon.caFile, token: daemon.tokens.admin });
      const a = dial(daemon.remoteUrl, { ...v, caFile: daemon.caFile, token: daemon.tokens.a });
      const b = dial(daemon.remoteUrl, { ...v, caFile: daemon.caFile, token: daemon.tokens.b });
      const anonymous = dial(daemon.remoteUrl, { ...v, caFile: daemon.caFile });
      const untrusting = dial(daemon.remoteUrl, { ...v, token: daemon.tokens.a });
      try {
        // The admin token runs a container from an image of the host.
        const sb = await admin.createSandbox("wasm", { labels: { "magnetar.test/variant": name } });
        const res = await (await sb.run({ image: helloWasmImage, args: ["via", name] })).collect();
        assert.match(res.stdout, new RegExp(`^args: via ${name}$`, "m"));
        await sb.delete({ force: true });

        // Without a token, or without the CA: refused.
        await assert.rejects(anonymous.kinds(), (err: unknown) => err instanceof MagnetarError && err.code === Code.Unauthenticated);
        await assert.rejects(untrusting.kinds(), (err: unknown) => err instanceof MagnetarError);

        // Tenant B's sandbox does not exist for tenant A.
        const sbB = await b.createSandbox("wasm", { labels: { "magnetar.test/variant": name } });
        const sbA = await a.createSandbox("wasm", { labels: { "magnetar.test/variant": name } });
        await assert.rejects(a.sandbox(sbB.id), (err: unknown) => isNotFound(err));
        assert.deepEqual((await a.sandboxes()).map((s) => s.id), [sbA.id]);
        assert.deepEqual((await a.images()).map((i) => i.name), []);
        assert.equal(sbA.info.labels["magnetar.io/tenant"], "a");
        await sbA.delete({ force: true });
        await sbB.delete({ force: true });
      } finally {
        for (const c of [admin, a, b, anonymous, untrusting]) {
          c.close();
        }
      }
    }
  });

  for (const protocol of ["connect", "grpc"] as const)
  test(`output, event and usage streams and calls survive a kill -9 of the worker (${protocol})`, { timeout }, async () => {
    const client = dial(daemon.socket, { protocol });
    try {
      await using sb = await client.createSandbox("runc", { labels: { "magnetar.test/restart": "ts" } });
      const events: sandboxv1.Event[] = [];
      const ac = new AbortController();
      const watching = (async () => {
        try {
          for await (const ev of client.events({ sandboxIds: [sb.id], after: 0n }, { signal: ac.signal })) {
            events.push(ev);
            if (ev.type === EventType.PROCESS_EXITED) {
              return;
            }
          }
        } catch (err) {
          if (!ac.signal.aborted) {
            throw err;
          }
        }
      })();
      // Usage samples every 100 ms, across the restart.
      let samples = 0;
      let mark = 0;
      const sampling = (async () => {
        try {
          for await (const _ of sb.watchUsage(100, { signal: ac.signal })) {
            samples++;
          }
        } catch (err) {
          if (!ac.signal.aborted) {
            throw err;
          }
        }
      })();
      const ctr = await sb.run({
        image: busyboxImage,
        args: ["sh", "-c", "trap 'exit 7' TERM; i=0; while :; do echo $i; i=$((i+1)); sleep 0.02; done"],
      });
      let data = "";
      let next = 0;
      let phase = 0;
      let usageMark = 0;
      for await (const chunk of ctr.output()) {
        assert.equal(chunk.offset, next, "a chunk out of place");
        next += chunk.data.length;
        data += new TextDecoder().decode(chunk.data);
        const lines = data.split("\n").length - 1;
        // 1500 lines: 30 s or more of output.
        assert.ok(phase !== 1 || lines < mark + 1500, `usage samples stopped at ${samples} after the restart`);
        if (phase === 0 && lines >= 20) {
          const old = daemon.workerPid();
          assert.ok(old > 0, "no worker");
          process.kill(old, "SIGKILL");
          // A call that changes nothing is retried through the gap.
          assert.equal((await client.sandbox(sb.id)).id, sb.id);
          await daemon.newWorker(old);
          phase = 1;
          mark = lines;
          usageMark = samples;
        } else if (phase === 1 && lines >= mark + 20 && samples >= usageMark + 3) {
          await ctr.signal("SIGTERM");
          phase = 2;
        }
      }
      assert.equal(phase, 2);
      assert.equal((await ctr.wait()).code, 7);
      const got = data.split("\n").slice(0, -1);
      assert.deepEqual(got, got.map((_, i) => String(i)), "output lost or repeated across the restart");
      await watching;
      const seqs = events.map((e) => e.sequence);
      assert.deepEqual(seqs, [...new Set(seqs)].sort((a, b) => (a < b ? -1 : 1)), "events out of order or repeated");
      assert.equal(events.at(-1)?.type, EventType.PROCESS_EXITED);
      assert.equal(events.at(-1)?.exitStatus, 7);
      ac.abort();
      await sampling;
      await ctr.delete();
    } finally {
      client.close();
    }
  });

  test("the README's example runs", { timeout }, async () => {
    // The example imports "@magnetar-io/client": a file inside this package
    // resolves that to the package itself (dist/, built by npm test).
    const pkg = path.resolve(testdata, "..", "..");
    const readme = fs.readFileSync(path.join(pkg, "README.md"), "utf8");
    const m = /`example\.mjs`:\n\n```js\n([\s\S]*?)```/.exec(readme);
    assert.ok(m, "no example.mjs block in README.md");
    const file = path.join(pkg, "build-test", "readme-example.mjs");
    fs.writeFileSync(file, m[1]);
    const { stdout } = await promisify(execFile)(process.execPath, [file], {
      env: { ...process.env, MAGNETAR_ADDRESS: `unix://${daemon.socket}` },
    });
    assert.match(stdout, /^wasm available$/m);
    assert.match(stdout, /^args: from typescript$/m);
    assert.match(stdout, /^SHOUT THIS$/m);
    assert.match(stdout, /^exit code 0$/m);
    assert.match(stdout, /^no such sandbox$/m);
  });

  test("leaves no sandbox behind", { timeout }, async () => {
    const c = dial(daemon.socket);
    try {
      assert.deepEqual((await c.sandboxes()).map((s) => s.id), []);
    } finally {
      c.close();
    }
  });
});

async function collectBytes(it: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: number[] = [];
  for await (const p of it) {
    parts.push(...p);
  }
  return new Uint8Array(parts);
}
