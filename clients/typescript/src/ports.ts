import { Duplex } from "node:stream";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, type CallOptions, type Client } from "@connectrpc/connect";
import {
  type DialPortRequestSchema,
  type DialPortResponse,
  SandboxService,
} from "./gen/magnetar/sandbox/v1/sandbox_pb.js";
import { MagnetarError, invalidArgument } from "./errors.js";

type Request = MessageInitShape<typeof DialPortRequestSchema>;

// The most one DialPort message carries (as the Go SDK).
const PORT_CHUNK = 32 << 10;

/**
 * The requests of a DialPort stream, pushed by the connection's writable
 * side and pulled by the transport. Each push's callback runs when the
 * transport took the message (back-pressure: one message in flight).
 */
export class RequestQueue implements AsyncIterable<Request> {
  readonly #items: { req: Request; taken: () => void }[] = [];
  #ended = false;
  #wake: (() => void) | undefined;

  push(req: Request, taken: () => void = () => {}): void {
    this.#items.push({ req, taken });
    this.#notify();
  }

  /** No more requests: the client's side of the stream closes (half-close). */
  end(): void {
    this.#ended = true;
    this.#notify();
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Request, void, undefined> {
    for (;;) {
      const item = this.#items.shift();
      if (item !== undefined) {
        yield item.req;
        item.taken();
        continue;
      }
      if (this.#ended) {
        return;
      }
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }
}

/**
 * A connection to a TCP port in a sandbox, made by {@link dialPort} (see
 * `Sandbox.dialPort`): a Node.js Duplex stream. Writes go to the process,
 * reads come from it; `end()` half-closes (the process reads end of file,
 * and may go on answering until it closes its side, which ends the
 * readable side here). `destroy()` drops the connection at once. Errors
 * of the stream are {@link MagnetarError}s.
 */
export class PortConnection extends Duplex {
  readonly #queue: RequestQueue;
  readonly #responses: AsyncIterator<DialPortResponse>;
  readonly #abort: AbortController;
  #reading = false;
  #wantMore = false;
  #localEnded = false;
  #remoteClosed = false;

  /** @internal Made by {@link dialPort}. */
  constructor(queue: RequestQueue, responses: AsyncIterator<DialPortResponse>, abort: AbortController) {
    super({ allowHalfOpen: true });
    this.#queue = queue;
    this.#responses = responses;
    this.#abort = abort;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    for (let off = 0; off < chunk.length; off += PORT_CHUNK) {
      const part = chunk.subarray(off, Math.min(chunk.length, off + PORT_CHUNK));
      const last = off + PORT_CHUNK >= chunk.length;
      this.#queue.push({ data: new Uint8Array(part) }, last ? () => callback() : undefined);
    }
    if (chunk.length === 0) {
      callback();
    }
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#localEnded = true;
    this.#queue.end();
    callback();
  }

  override _read(): void {
    this.#wantMore = true;
    if (!this.#reading) {
      this.#reading = true;
      void this.#pump();
    }
  }

  async #pump(): Promise<void> {
    try {
      for (;;) {
        const r = await this.#responses.next();
        if (r.done === true) {
          // The server ended the stream: both sides are closed.
          if (!this.#remoteClosed) {
            this.#remoteClosed = true;
            this.push(null);
          }
          return;
        }
        if (this.#remoteClosed) {
          continue; // draining until the call ends
        }
        if (r.value.data.length > 0) {
          this.#wantMore = this.push(r.value.data);
        }
        if (r.value.closed) {
          // The process closed its side: end of file here; the call goes
          // on until this side closes too.
          this.#remoteClosed = true;
          this.push(null);
          continue;
        }
        if (!this.#wantMore) {
          this.#reading = false;
          return;
        }
      }
    } catch (err) {
      if (!this.destroyed) {
        this.destroy(MagnetarError.wrap(err));
      }
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#queue.end();
    if (error !== null || !(this.#localEnded && this.#remoteClosed)) {
      // Dropped before both sides closed: end the call now.
      this.#abort.abort();
    }
    callback(error);
  }
}

/**
 * Opens a DialPort stream to port (1 to 65535) of the sandbox and resolves
 * once the sandboxer connected it. Needs HTTP/2 (gRPC, or Connect over
 * HTTP/2; Connect over HTTP/1.1 cannot stream both ways).
 */
export async function dialPort(
  service: Client<typeof SandboxService>,
  sandboxId: string,
  port: number,
  options: CallOptions = {},
): Promise<PortConnection> {
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    invalidArgument(`port ${port} is not between 1 and 65535`);
  }
  // The stream lives as long as the connection: options.signal bounds
  // only the dialing, timeoutMs is not applied.
  const abort = new AbortController();
  const queue = new RequestQueue();
  queue.push({ target: { sandboxId, port } });
  const responses = service
    .dialPort(queue, { headers: options.headers, signal: abort.signal })
    [Symbol.asyncIterator]();
  const onAbort = () => abort.abort(options.signal?.reason);
  options.signal?.addEventListener("abort", onAbort, { once: true });
  let timer: NodeJS.Timeout | undefined;
  if (options.timeoutMs !== undefined) {
    timer = setTimeout(() => abort.abort(new MagnetarError("DialPort: not connected in time", Code.DeadlineExceeded)), options.timeoutMs);
  }
  try {
    // The first answer says whether the connection was made.
    const first = await responses.next();
    if (first.done === true) {
      throw new MagnetarError(`DialPort to ${sandboxId}:${port}: the stream ended before it connected`, Code.Unavailable);
    }
  } catch (err) {
    abort.abort();
    throw MagnetarError.wrap(err);
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
    clearTimeout(timer);
  }
  return new PortConnection(queue, responses, abort);
}
