// Unit tests of address handling: no sandboxer needed.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import { Code, MagnetarError, dial, dialTransport, isInvalidArgument } from "../src/index.js";

function throwsCode(fn: () => unknown, code: Code, message?: RegExp) {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof MagnetarError, String(err));
    assert.equal(err.code, code);
    if (message) {
      assert.match(err.rawMessage, message);
    }
    return true;
  });
}

test("refuses bad addresses", () => {
  throwsCode(() => dial(""), Code.InvalidArgument, /empty/);
  throwsCode(() => dial("unix://relative.sock"), Code.InvalidArgument, /absolute/);
  throwsCode(() => dial("ftp://host:21"), Code.InvalidArgument, /unsupported scheme "ftp"/);
  throwsCode(() => dial("http://127.0.0.1:1"), Code.InvalidArgument, /insecure/);
  throwsCode(() => dial("not a url"), Code.InvalidArgument);
  throwsCode(() => dial("/x.sock", { protocol: "ttrpc" as "grpc" }), Code.InvalidArgument, /protocol/);
  throwsCode(() => dial("/x.sock", { token: "t" }), Code.InvalidArgument, /tokens are for remote sandboxers/);
  throwsCode(() => dial("http://127.0.0.1:1", { insecure: true, caFile: "/ca.pem" }), Code.InvalidArgument, /TLS needs an https/);
  throwsCode(() => dial("https://127.0.0.1:1", { token: "a\nb" }), Code.InvalidArgument, /line break/);
  throwsCode(() => dial("https://127.0.0.1:1", { caFile: "/nonexistent/ca.pem" }), Code.InvalidArgument, /CA file/);
});

test("reports a missing socket as Unavailable and a non-socket as InvalidArgument", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mgts-unit-"));
  try {
    throwsCode(() => dial(`unix://${dir}/api.sock`), Code.Unavailable, /is magnetar-sandboxer running\?/);
    fs.writeFileSync(path.join(dir, "file"), "");
    throwsCode(() => dial(path.join(dir, "file")), Code.InvalidArgument, /not a unix socket/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("accepts unix sockets, https and insecure http", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mgts-unit-"));
  const sock = path.join(dir, "api.sock");
  const srv = net.createServer((c) => c.destroy());
  await new Promise<void>((resolve) => srv.listen(sock, resolve));
  try {
    for (const addr of [sock, `unix://${sock}`]) {
      for (const protocol of ["connect", "grpc"] as const) {
        dialTransport(addr, { protocol }).close();
      }
    }
    dialTransport("https://magnetar.example:8443").close();
    dialTransport("http://127.0.0.1:1", { insecure: true, httpVersion: "1.1" }).close();
  } finally {
    await new Promise((resolve) => srv.close(resolve));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a refused connection is Unavailable", async () => {
  // Port 1 on loopback: nothing listens there.
  const c = dial("http://127.0.0.1:1", { insecure: true });
  try {
    await assert.rejects(c.kinds(), (err: unknown) => {
      assert.ok(err instanceof MagnetarError);
      assert.equal(err.code, Code.Unavailable);
      assert.ok(!isInvalidArgument(err));
      return true;
    });
  } finally {
    c.close();
  }
});

test("MagnetarError is a ConnectError and keeps its code through ConnectError.from", async () => {
  const { ConnectError } = await import("../src/index.js");
  const err = new MagnetarError("gone", Code.NotFound);
  assert.ok(err instanceof ConnectError);
  assert.ok(err instanceof MagnetarError);
  assert.ok(!(new ConnectError("plain", Code.NotFound) instanceof MagnetarError));
  assert.equal(ConnectError.from(err), err);
  const wrapped = MagnetarError.wrap(new ConnectError("plain", Code.AlreadyExists));
  assert.ok(wrapped instanceof MagnetarError);
  assert.equal(wrapped.code, Code.AlreadyExists);
  assert.equal(wrapped.rawMessage, "plain");
  assert.equal(MagnetarError.wrap(new Error("boom")).code, Code.Unknown);
});
