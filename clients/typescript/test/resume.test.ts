// Unit tests of the retries and stream resumption (src/resume.ts): no
// sandboxer needed.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { Backoff, retryInterceptor } from "../src/index.js";
import { followOutput, watchEvents } from "../src/resume.js";
import {
  AttachOutputResponseSchema,
  OutputStream,
  type AttachOutputResponse,
} from "../src/gen/magnetar/container/v1/container_pb.js";
import {
  GetSandboxResponseSchema,
  PauseSandboxResponseSchema,
  SandboxService,
  WatchEventsResponseSchema,
  type WatchEventsResponse,
} from "../src/gen/magnetar/sandbox/v1/sandbox_pb.js";

const unavailable = () => new ConnectError("worker restarting", Code.Unavailable);

function chunk(data: string, offset: number): AttachOutputResponse {
  return create(AttachOutputResponseSchema, {
    payload: { case: "output", value: { stream: OutputStream.STDOUT, data: new TextEncoder().encode(data), offset: BigInt(offset) } },
  });
}

test("backoff doubles and is bounded", () => {
  let now = 0;
  const b = new Backoff(1000, () => now);
  const delays: number[] = [];
  for (let d = b.next(); d !== undefined; d = b.next()) {
    delays.push(d);
    now += d;
  }
  assert.deepEqual(delays, [50, 100, 200, 400]);
  assert.equal(new Backoff(0).next(), undefined);
});

test("retries only calls that change nothing, on Unavailable", async () => {
  let gets = 0;
  let creates = 0;
  let pauses = 0;
  const transport = createRouterTransport(
    ({ service }) => {
      service(SandboxService, {
        getSandbox() {
          gets++;
          if (gets < 3) {
            throw unavailable();
          }
          return create(GetSandboxResponseSchema, { sandbox: { id: "sb" } });
        },
        createSandbox() {
          creates++;
          throw unavailable();
        },
        pauseSandbox() {
          pauses++;
          if (pauses < 2) {
            throw unavailable();
          }
          return create(PauseSandboxResponseSchema, { sandbox: { id: "sb" } });
        },
      });
    },
    { transport: { interceptors: [retryInterceptor(10_000)] } },
  );
  const c = createClient(SandboxService, transport);
  const res = await c.getSandbox({ sandboxId: "sb" });
  assert.equal(res.sandbox?.id, "sb");
  assert.equal(gets, 3);
  await assert.rejects(c.createSandbox({ kind: "runc" }), (e: unknown) => ConnectError.from(e).code === Code.Unavailable);
  assert.equal(creates, 1);
  // Without side-effect marking in the API, but the same when repeated.
  assert.equal((await c.pauseSandbox({ sandboxId: "sb" })).sandbox?.id, "sb");
  assert.equal(pauses, 2);
});

test("output resumes from the next offset", async () => {
  const requests: { startOffset?: bigint }[] = [];
  async function* attach(req: { startOffset?: bigint }): AsyncIterable<AttachOutputResponse> {
    requests.push(req);
    if (requests.length === 1) {
      yield chunk("ab", 0);
      yield chunk("cd", 2);
      throw unavailable();
    }
    if (requests.length === 2) {
      throw new ConnectError("incomplete envelope", Code.Internal); // a broken connection
    }
    yield chunk("ef", 4);
    yield create(AttachOutputResponseSchema, { payload: { case: "exit", value: { exitStatus: 7 } } });
  }
  let text = "";
  const offsets: number[] = [];
  let exit: number | undefined;
  for await (const item of followOutput(attach, "c", "", undefined, 10_000)) {
    if (item.kind === "output") {
      text += new TextDecoder().decode(item.data);
      offsets.push(item.offset);
    } else if (item.response.payload.case === "exit") {
      exit = item.response.payload.value.exitStatus;
    }
  }
  assert.equal(text, "abcdef");
  assert.deepEqual(offsets, [0, 2, 4]);
  assert.equal(exit, 7);
  assert.deepEqual(
    requests.map((r) => r.startOffset),
    [undefined, 4n, 4n],
  );
});

test("output does not resume other errors", async () => {
  // eslint-disable-next-line require-yield
  async function* attach(): AsyncIterable<AttachOutputResponse> {
    throw new ConnectError("no longer kept", Code.OutOfRange);
  }
  await assert.rejects(
    (async () => {
      for await (const _ of followOutput(attach, "c", "", 3, 10_000)) {
        // nothing
      }
    })(),
    (e: unknown) => ConnectError.from(e).code === Code.OutOfRange,
  );
});

test("events resume after the header's sequence, then after the last seen", async () => {
  const requests: { afterSequence?: bigint }[] = [];
  async function* watch(req: { afterSequence?: bigint }, onHeader: (h: Headers) => void): AsyncIterable<WatchEventsResponse> {
    requests.push(req);
    const after = req.afterSequence ?? 10n;
    onHeader(new Headers({ "magnetar-event-sequence": String(after) }));
    for (let seq = after + 1n, sent = 0; seq <= 14n; seq++, sent++) {
      if ((requests.length === 1 && sent === 0) || (requests.length === 2 && sent === 1)) {
        throw unavailable();
      }
      yield create(WatchEventsResponseSchema, { event: { sandboxId: "sb", sequence: seq } });
    }
  }
  const seqs: bigint[] = [];
  for await (const ev of watchEvents(watch, { sandboxIds: ["sb"] }, undefined, 10_000)) {
    seqs.push(ev.sequence);
    if (ev.sequence === 14n) {
      break;
    }
  }
  assert.deepEqual(seqs, [11n, 12n, 13n, 14n]);
  assert.deepEqual(
    requests.map((r) => r.afterSequence),
    [undefined, 10n, 11n],
  );
});

test("a connection reset under a call is transient, other Aborted errors are not", async () => {
  const { transient } = await import("../src/resume.js");
  const reset = Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" });
  assert.equal(transient(new ConnectError("read ECONNRESET", Code.Aborted, undefined, undefined, reset)), true);
  assert.equal(transient(new ConnectError("conflict", Code.Aborted)), false);
  assert.equal(transient(new ConnectError("boom", Code.Internal)), false);
  assert.equal(transient(new ConnectError("boom", Code.Internal), true), true);
});

test("a stream canceled by the transport resumes, one canceled by the caller does not", async () => {
  const { streamTransient } = await import("../src/resume.js");
  const reset = new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled);
  assert.equal(streamTransient(reset), true);
  assert.equal(streamTransient(reset, new AbortController().signal), true);
  const ac = new AbortController();
  ac.abort();
  assert.equal(streamTransient(reset, ac.signal), false);
  assert.equal(streamTransient(new ConnectError("gone", Code.NotFound)), false);
});
