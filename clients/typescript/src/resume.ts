// Riding out restarts of the sandboxer: retries of calls that change
// nothing, and output and event streams that resume where they broke off.
//
// While the sandboxer's worker restarts (a crash, a live upgrade), its API
// socket stays open (the supervisor holds it): new connections wait, calls
// in flight fail with Unavailable or end in the middle of a stream. The
// helpers here retry with a backoff from 50 ms doubling up to 1 s, for at
// most the client's retry timeout per outage, and resume AttachOutput from
// the offset after the last byte received, WatchEvents after the last
// sequence number received and WatchSandboxUsage with the next sample.
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { AttachOutputRequestSchema, AttachOutputResponse } from "./gen/magnetar/container/v1/container_pb.js";
import type {
  Event,
  SandboxUsage,
  WatchEventsRequestSchema,
  WatchEventsResponse,
  WatchSandboxUsageResponse,
} from "./gen/magnetar/sandbox/v1/sandbox_pb.js";

type AttachOutputRequest = MessageInitShape<typeof AttachOutputRequestSchema>;
type WatchEventsRequest = MessageInitShape<typeof WatchEventsRequestSchema>;

/** How long a client keeps retrying, or resuming a stream, per outage (ms). */
export const DEFAULT_RETRY_TIMEOUT_MS = 30_000;

/** WatchEvents' response header: the sequence number the stream starts after. */
export const EVENT_SEQUENCE_HEADER = "magnetar-event-sequence";

const FIRST_MS = 50;
const MAX_MS = 1000;

// Calls without side-effect marking in the API whose repetition changes nothing.
// The same list as the Go SDK's (sdk/retry.go).
const IDEMPOTENT = new Set([
  "magnetar.container.v1.ContainerService.WaitProcess",
  "magnetar.container.v1.ContainerService.CloseStdin",
  "magnetar.container.v1.ContainerService.ResizePty",
  // Sets a lifetime counted from the call: again is the same.
  "magnetar.sandbox.v1.SandboxService.SetSandboxTimeout",
  // Pausing a paused sandbox, or resuming a running one, changes nothing.
  "magnetar.sandbox.v1.SandboxService.PauseSandbox",
  "magnetar.sandbox.v1.SandboxService.ResumeSandbox",
]);

// Errors of the connection itself (the sandboxer's worker died under it),
// which Node's HTTP/2 client reports and Connect-ES wraps as Aborted or
// Unavailable: the call may be made again.
const BROKEN_CONNECTION = new Set(["ECONNRESET", "EPIPE", "ECONNREFUSED", "ECONNABORTED"]);

function brokenConnection(err: unknown): boolean {
  let cause: unknown = err;
  for (let i = 0; i < 4 && cause !== undefined && cause !== null; i++) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === "string" && BROKEN_CONNECTION.has(code)) {
      return true;
    }
    cause = (cause as { cause?: unknown }).cause;
  }
  return false;
}

/**
 * Whether err means the sandboxer was unavailable: Unavailable, a connection
 * reset under the call (Node reports ECONNRESET, which Connect-ES makes
 * Aborted), and for a stream (whose calls change nothing) a connection that
 * broke in the middle of a response, which the transport reports as
 * Internal or Unknown.
 */
export function transient(err: unknown, stream = false): boolean {
  const ce = ConnectError.from(err);
  return (
    ce.code === Code.Unavailable ||
    brokenConnection(ce) ||
    (stream && (ce.code === Code.Internal || ce.code === Code.Unknown))
  );
}

/**
 * transient for a stream: also Canceled that the caller did not ask for
 * (signal not aborted), which is how an HTTP/2 stream reset with CANCEL
 * arrives when the sandboxer's worker dies under it.
 */
export function streamTransient(err: unknown, signal?: AbortSignal): boolean {
  return transient(err, true) || (ConnectError.from(err).code === Code.Canceled && signal?.aborted !== true);
}

/** Paces the attempts of one outage within budgetMs. */
export class Backoff {
  #start: number | undefined;
  #delay = FIRST_MS;

  constructor(
    readonly budgetMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** The pause before the next attempt (ms), or undefined once the budget is spent. */
  next(): number | undefined {
    if (this.budgetMs <= 0) {
      return undefined;
    }
    const now = this.now();
    if (this.#start === undefined) {
      this.#start = now;
      this.#delay = FIRST_MS;
    }
    if (now + this.#delay - this.#start > this.budgetMs) {
      return undefined;
    }
    const d = this.#delay;
    this.#delay = Math.min(2 * this.#delay, MAX_MS);
    return d;
  }

  /** Progress was made: the next failure starts a new outage. */
  reset(): void {
    this.#start = undefined;
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * An interceptor that retries the unary calls that change nothing (those
 * the API marks free of side effects, and WaitProcess, CloseStdin,
 * ResizePty, SetSandboxTimeout, PauseSandbox, ResumeSandbox) while they fail
 * with Unavailable, a reset connection or a cancel the caller did not ask
 * for, within budgetMs per call.
 */
export function retryInterceptor(budgetMs: number): Interceptor {
  return (next) => async (req) => {
    if (req.stream || budgetMs <= 0) {
      return next(req);
    }
    const m = req.method;
    if (m.idempotency === MethodOptions_IdempotencyLevel.IDEMPOTENCY_UNKNOWN && !IDEMPOTENT.has(`${m.parent.typeName}.${m.name}`)) {
      return next(req);
    }
    const b = new Backoff(budgetMs);
    for (;;) {
      try {
        return await next(req);
      } catch (err) {
        // A call that changes nothing may also be made again after the
        // transport canceled it (an HTTP/2 reset with CANCEL when the
        // worker died), unless the caller canceled it.
        const again = transient(err) || (ConnectError.from(err).code === Code.Canceled && !req.signal.aborted);
        const d = again ? b.next() : undefined;
        if (d === undefined) {
          throw err;
        }
        await sleep(d, req.signal);
      }
    }
  };
}

/** Opens one AttachOutput stream. */
export type AttachFn = (req: AttachOutputRequest) => AsyncIterable<AttachOutputResponse>;

/** A chunk of output with its offset, or the exit. */
export type OutputItem =
  | { kind: "output"; stream: number; data: Uint8Array; offset: number }
  | { kind: "exit"; response: AttachOutputResponse };

/**
 * Yields a process's output from startOffset (the oldest byte kept if
 * undefined) until its exit (the last item), opening the stream again from
 * the next offset when it breaks while the sandboxer is unavailable. With
 * follow false it yields the output there was when the call arrived (and
 * the exit if the process had exited), then ends.
 */
export async function* followOutput(
  attach: AttachFn,
  containerId: string,
  execId: string,
  startOffset: number | undefined,
  budgetMs: number,
  signal?: AbortSignal,
  follow = true,
): AsyncGenerator<OutputItem, void, undefined> {
  let offset = startOffset;
  const b = new Backoff(budgetMs);
  for (;;) {
    try {
      const req: AttachOutputRequest = { containerId, execId };
      if (offset !== undefined) {
        req.startOffset = BigInt(offset);
      }
      if (!follow) {
        req.follow = false;
      }
      for await (const res of attach(req)) {
        b.reset();
        if (res.payload.case === "output") {
          const c = res.payload.value;
          const at = Number(c.offset);
          offset = at + c.data.length;
          yield { kind: "output", stream: c.stream, data: c.data, offset: at };
        } else if (res.payload.case === "exit") {
          yield { kind: "exit", response: res };
          return;
        }
      }
      if (!follow) {
        return;
      }
      throw new ConnectError("output stream ended without an exit status", Code.Unavailable);
    } catch (err) {
      const d = streamTransient(err, signal) ? b.next() : undefined;
      if (d === undefined) {
        throw err;
      }
      await sleep(d, signal);
    }
  }
}

/** Opens one WatchEvents stream; onHeader sees its response headers. */
export type WatchFn = (req: WatchEventsRequest, onHeader: (h: Headers) => void) => AsyncIterable<WatchEventsResponse>;

/**
 * Yields events (after sequence `after` if set, live ones otherwise),
 * opening the stream again after the last one seen when it breaks while the
 * sandboxer is unavailable.
 */
export async function* watchEvents(
  watch: WatchFn,
  filter: { sandboxIds?: string[]; types?: number[] },
  after: bigint | undefined,
  budgetMs: number,
  signal?: AbortSignal,
): AsyncGenerator<Event, void, undefined> {
  const b = new Backoff(budgetMs);
  const onHeader = (h: Headers) => {
    // A live stream starts after the newest event: resume from there
    // should it break before its first event.
    const v = h.get(EVENT_SEQUENCE_HEADER);
    if (after === undefined && v !== null && /^[0-9]+$/.test(v)) {
      after = BigInt(v);
    }
  };
  for (;;) {
    try {
      const req: WatchEventsRequest = { sandboxIds: filter.sandboxIds ?? [], types: filter.types ?? [] };
      if (after !== undefined) {
        req.afterSequence = after;
      }
      for await (const res of watch(req, onHeader)) {
        b.reset();
        const ev = res.event;
        if (ev === undefined || (after !== undefined && ev.sequence <= after)) {
          continue;
        }
        after = ev.sequence;
        yield ev;
      }
      throw new ConnectError("event stream ended", Code.Unavailable);
    } catch (err) {
      const d = streamTransient(err, signal) ? b.next() : undefined;
      if (d === undefined) {
        throw err;
      }
      await sleep(d, signal);
    }
  }
}

/** Opens one WatchSandboxUsage stream. */
export type WatchUsageFn = () => AsyncIterable<WatchSandboxUsageResponse>;

/**
 * Yields a sandbox's usage samples, opening the stream again (from the next
 * sample) when it breaks while the sandboxer is unavailable. The server
 * ends the stream only with an error (NotFound once the sandbox is gone).
 */
export async function* watchUsage(
  watch: WatchUsageFn,
  budgetMs: number,
  signal?: AbortSignal,
): AsyncGenerator<SandboxUsage, void, undefined> {
  const b = new Backoff(budgetMs);
  for (;;) {
    try {
      for await (const res of watch()) {
        b.reset();
        if (res.usage !== undefined) {
          yield res.usage;
        }
      }
      throw new ConnectError("usage stream ended", Code.Unavailable);
    } catch (err) {
      const d = streamTransient(err, signal) ? b.next() : undefined;
      if (d === undefined) {
        throw err;
      }
      await sleep(d, signal);
    }
  }
}
