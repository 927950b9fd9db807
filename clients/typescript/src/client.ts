import * as os from "node:os";
import * as path from "node:path";
import type { Writable } from "node:stream";
import { durationFromMs, timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, createClient, type CallOptions, type Client, type Transport } from "@connectrpc/connect";
import {
  ContainerService,
  OutputStream,
  type Container as ContainerMessage,
  type ContainerStatsResponse,
  type MountSchema,
  type ProcessSpecSchema,
} from "./gen/magnetar/container/v1/container_pb.js";
import { FileService } from "./gen/magnetar/file/v1/file_pb.js";
import { Files } from "./files.js";
import { PortConnection, dialPort } from "./ports.js";
import {
  ImageService,
  type Image,
  type Progress,
} from "./gen/magnetar/image/v1/image_pb.js";
import {
  NetworkMode,
  SandboxService,
  type EgressPolicySchema,
  type Event,
  type EventType,
  type Kind,
  type Sandbox as SandboxMessage,
  type SandboxState,
  type SandboxUsage,
} from "./gen/magnetar/sandbox/v1/sandbox_pb.js";
import type { ResourcesSchema } from "./gen/magnetar/types/v1/types_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { dialTransport, type DialOptions } from "./dial.js";
import { MagnetarError, invalidArgument, wrapped } from "./errors.js";
import { DEFAULT_RETRY_TIMEOUT_MS, followOutput, watchEvents, watchUsage } from "./resume.js";

/** Resource limits (cgroup) of a sandbox or container, as in the API. */
export type Resources = MessageInitShape<typeof ResourcesSchema>;

/** Filters of {@link MagnetarClient.sandboxes}. */
export interface SandboxFilter {
  /** Keep sandboxes that have all these labels with these values. */
  labels?: Record<string, string>;
  /** Keep sandboxes of one of these kinds. */
  kinds?: string[];
  /** Keep sandboxes in one of these states. */
  states?: SandboxState[];
}

/** Filters of {@link MagnetarClient.containers}. */
export interface ContainerFilter {
  /** Keep the containers of this sandbox. */
  sandboxId?: string;
  /** Keep containers that have all these labels with these values. */
  labels?: Record<string, string>;
}

/** Options of {@link MagnetarClient.createSandbox}. */
export interface SandboxOptions {
  /** The sandbox's ID. Default: the server chooses one. */
  id?: string;
  /** Labels, for {@link SandboxFilter.labels}. */
  labels?: Record<string, string>;
  /** Annotations passed to the backend and to the OCI spec. */
  annotations?: Record<string, string>;
  /** The host name inside the sandbox. Default: the sandbox's ID. */
  hostname?: string;
  /** The network: "none" (default: loopback only), "host", or the path of a network namespace. */
  network?: "none" | "host" | { netnsPath: string };
  /** Resolver configuration inside the sandbox. */
  dns?: { servers?: string[]; searches?: string[]; options?: string[] };
  /** Limits for the whole sandbox. Default: none. */
  resources?: Resources;
  /** The parent cgroup of the sandbox. */
  cgroupParent?: string;
  /**
   * The sandbox's lifetime from its creation, in milliseconds: at its end
   * the sandboxer stops and deletes it (event SANDBOX_EXPIRED, reason
   * "deadline"). Default: none.
   */
  timeoutMs?: number;
  /**
   * How long the sandbox may stay idle (no call about it, no process in
   * it), in milliseconds, before it is stopped and deleted (reason "idle").
   * Default: none.
   */
  idleTimeoutMs?: number;
}

function optDuration(ms: number | undefined): ReturnType<typeof durationFromMs> | undefined {
  if (ms === undefined) {
    return undefined;
  }
  if (!Number.isFinite(ms) || ms < 0) {
    invalidArgument(`duration must be a non-negative number of milliseconds, got ${ms}`);
  }
  return durationFromMs(ms);
}

/** A file system mounted into a container. */
export interface MountOptions {
  /** The host path (bind) or the source of the file system. */
  source: string;
  /** The absolute path in the container. */
  destination: string;
  /** The file system type; default "bind". */
  type?: string;
  /** Mount options ("rbind", "ro"...). */
  options?: string[];
  /** Mount it read-only. */
  readonly?: boolean;
}

/** The process of a container or of an exec. */
export interface ProcessOptions {
  /** Arguments: with an image they replace its command. */
  args?: string[];
  /** Replaces the image's entrypoint (and drops its command). */
  entrypoint?: string[];
  /** Environment, added to the image's: "KEY=value" strings or a record. */
  env?: string[] | Record<string, string>;
  /** Working directory, absolute. Default: the image's, or "/". */
  cwd?: string;
  /** Run as this user. Default: the image's user, or root. */
  user?: { uid: number; gid: number; additionalGids?: number[] };
  /** Keep standard input open, to be written with writeStdin. Default: the process reads end of file. */
  stdin?: boolean;
  /** Give the process a terminal (standard error is then merged into it). */
  tty?: boolean;
}

/** Options of {@link Sandbox.run} and {@link Sandbox.createContainer}. */
export interface ContainerOptions extends ProcessOptions {
  /** The image whose root file system and process defaults the container takes. */
  image?: string;
  /** Or a directory of the sandboxer's host used as the root file system. */
  rootfs?: string;
  /** The container's ID. Default: the server chooses one. */
  id?: string;
  /** Labels, for {@link ContainerFilter.labels}. */
  labels?: Record<string, string>;
  /** Annotations passed to the runtime. */
  annotations?: Record<string, string>;
  /** Extra mounts. */
  mounts?: MountOptions[];
  /** Limits for this container. */
  resources?: Resources;
  /** Mount the root file system read-only. */
  readonlyRootfs?: boolean;
}

/** Options of {@link Container.exec}. */
export interface ExecOptions extends ProcessOptions {
  /** The process's exec ID, unique in the container. Default: generated. */
  execId?: string;
}

/** Which output stream a chunk belongs to. */
export type StreamName = "stdout" | "stderr";

/** A chunk of a process's output, as {@link Process.output} yields it. */
export interface OutputChunk {
  /** "stdout" or "stderr". */
  stream: StreamName;
  /** The bytes, as the process wrote them. */
  data: Uint8Array;
  /**
   * Where data starts in the process's output (bytes of both streams
   * before it); `output({ startOffset: offset + data.length })` goes on
   * after it.
   */
  offset: number;
}

/** How a process ended. */
export interface ExitStatus {
  /** The exit code (128 + signal number if a signal killed it). */
  code: number;
  /** When it exited, if known. */
  exitedAt?: Date;
}

/** A process's whole output and exit status, as {@link Process.collect} returns it. */
export interface ProcessResult extends ExitStatus {
  /** Standard output, decoded as UTF-8. */
  stdout: string;
  /** Standard error, decoded as UTF-8. */
  stderr: string;
}

/** Image import or pull progress. */
export type ImageProgress = Progress;

function dateOf(ts: Timestamp | undefined): Date | undefined {
  return ts === undefined ? undefined : timestampDate(ts);
}

function envList(env: ProcessOptions["env"]): string[] {
  if (env === undefined) {
    return [];
  }
  return Array.isArray(env) ? env : Object.entries(env).map(([k, v]) => `${k}=${v}`);
}

function processSpec(o: ProcessOptions): MessageInitShape<typeof ProcessSpecSchema> {
  return {
    args: o.args ?? [],
    entrypoint: o.entrypoint ?? [],
    env: envList(o.env),
    cwd: o.cwd ?? "",
    user: o.user === undefined ? undefined : { uid: o.user.uid, gid: o.user.gid, additionalGids: o.user.additionalGids ?? [] },
    openStdin: o.stdin ?? false,
    terminal: o.tty ?? false,
  };
}

function signalNumber(sig: number | NodeJS.Signals): number {
  if (typeof sig === "number") {
    return sig;
  }
  const n = os.constants.signals[sig];
  if (n === undefined) {
    invalidArgument(`unknown signal ${sig}`);
  }
  return n;
}

/**
 * A client of Magnetar's API. Make one with {@link dial} (a running
 * `magnetar-sandboxer`) or from any Connect transport. The generated service
 * clients are available as {@link MagnetarClient.sandboxService} and friends
 * for everything the handles do not cover. Every method throws
 * {@link MagnetarError}.
 *
 * Closing the client closes its connections; sandboxes keep running (the
 * daemon owns them).
 */
export class MagnetarClient implements AsyncDisposable {
  /** The generated client of magnetar.sandbox.v1.SandboxService. */
  readonly sandboxService: Client<typeof SandboxService>;
  /** The generated client of magnetar.container.v1.ContainerService. */
  readonly containerService: Client<typeof ContainerService>;
  /** The generated client of magnetar.image.v1.ImageService. */
  readonly imageService: Client<typeof ImageService>;
  /** The generated client of magnetar.file.v1.FileService. */
  readonly fileService: Client<typeof FileService>;
  /**
   * How long (ms) output and event streams are resumed while the sandboxer
   * is unavailable (it restarts); 0: not at all. {@link dial} also retries
   * the calls that change nothing for as long (see DialOptions.retryTimeoutMs).
   */
  readonly retryTimeoutMs: number;
  /**
   * Whether the transport streams both ways (HTTP/2): false for Connect
   * over HTTP/1.1, where {@link Sandbox.dialPort} is refused.
   */
  readonly bidiStreams: boolean;
  readonly #close: () => void;
  readonly #closed = new AbortController();

  /**
   * Wraps a transport. close, if given, is called by {@link close}; use
   * {@link dial} to get one made for an address. retryTimeoutMs bounds the
   * resumption of streams (default 0 here: none; {@link dial} passes its own).
   * bidiStreams says whether transport can stream both ways (HTTP/2).
   */
  constructor(transport: Transport, close: () => void = () => {}, retryTimeoutMs = 0, bidiStreams = true) {
    this.sandboxService = createClient(SandboxService, transport);
    this.containerService = createClient(ContainerService, transport);
    this.imageService = createClient(ImageService, transport);
    this.fileService = createClient(FileService, transport);
    this.#close = close;
    this.retryTimeoutMs = retryTimeoutMs;
    this.bidiStreams = bidiStreams;
  }

  /** Closes the client's connections. Calls in flight fail. */
  close(): void {
    this.#closed.abort();
    this.#close();
  }

  /**
   * @internal A signal for stream resumption: aborted by the caller's
   * signal or by {@link close} (a stream is not resumed then).
   */
  streamSignal(signal?: AbortSignal): AbortSignal {
    return signal === undefined ? this.#closed.signal : AbortSignal.any([signal, this.#closed.signal]);
  }

  /** Closes the client (for `await using`). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  /** The files of a container's root file system (see {@link Files}). */
  files(containerId: string): Files {
    return new Files(this.fileService, containerId);
  }

  /** Lists the sandbox kinds of the sandboxer, available or not. */
  async kinds(options?: CallOptions): Promise<Kind[]> {
    const res = await wrapped(this.sandboxService.listKinds({}, options));
    return res.kinds;
  }

  /**
   * Creates a sandbox of the given kind ("runc", "wasm", "vm"...; see
   * {@link kinds}) and starts it, so that it is ready for containers. If
   * starting fails, the sandbox is deleted again.
   */
  async createSandbox(kind: string, opts: SandboxOptions = {}, options?: CallOptions): Promise<Sandbox> {
    if (kind === "") {
      invalidArgument("sandbox kind is required");
    }
    let network: { mode: NetworkMode; netnsPath?: string } | undefined;
    if (opts.network === "none") {
      network = { mode: NetworkMode.NONE };
    } else if (opts.network === "host") {
      network = { mode: NetworkMode.HOST };
    } else if (opts.network !== undefined) {
      network = { mode: NetworkMode.NETNS, netnsPath: opts.network.netnsPath };
    }
    const created = await wrapped(
      this.sandboxService.createSandbox(
        {
          sandboxId: opts.id ?? "",
          kind,
          labels: opts.labels ?? {},
          annotations: opts.annotations ?? {},
          hostname: opts.hostname ?? "",
          dns: opts.dns === undefined ? undefined : { servers: opts.dns.servers ?? [], searches: opts.dns.searches ?? [], options: opts.dns.options ?? [] },
          network,
          resources: opts.resources,
          cgroupParent: opts.cgroupParent ?? "",
          timeout: optDuration(opts.timeoutMs),
          idleTimeout: optDuration(opts.idleTimeoutMs),
        },
        options,
      ),
    );
    const id = created.sandbox?.id ?? "";
    try {
      const started = await this.sandboxService.startSandbox({ sandboxId: id }, options);
      return new Sandbox(this, started.sandbox ?? created.sandbox!);
    } catch (err) {
      // Clean up without the caller's signal: it may be what failed.
      await this.sandboxService.deleteSandbox({ sandboxId: id, force: true }, { timeoutMs: 60_000 }).catch(() => {});
      throw MagnetarError.wrap(err);
    }
  }

  /** Returns the sandbox with the given ID (Code.NotFound if there is none). */
  async sandbox(id: string, options?: CallOptions): Promise<Sandbox> {
    const res = await wrapped(this.sandboxService.getSandbox({ sandboxId: id }, options));
    return new Sandbox(this, res.sandbox!);
  }

  /** Lists the sandboxes that match every filter. */
  async sandboxes(filter: SandboxFilter = {}, options?: CallOptions): Promise<Sandbox[]> {
    const res = await wrapped(
      this.sandboxService.listSandboxes(
        { labels: filter.labels ?? {}, kinds: filter.kinds ?? [], states: filter.states ?? [] },
        options,
      ),
    );
    return res.sandboxes.map((s) => new Sandbox(this, s));
  }

  /** Returns the container with the given ID (Code.NotFound if there is none). */
  async container(id: string, options?: CallOptions): Promise<Container> {
    const res = await wrapped(this.containerService.getContainer({ containerId: id }, options));
    return new Container(this, res.container!);
  }

  /** Lists the containers that match every filter. */
  async containers(filter: ContainerFilter = {}, options?: CallOptions): Promise<Container[]> {
    const res = await wrapped(
      this.containerService.listContainers({ sandboxId: filter.sandboxId ?? "", labels: filter.labels ?? {} }, options),
    );
    return res.containers.map((c) => new Container(this, c));
  }

  /**
   * Streams the sandboxer's events (sandboxes, containers, processes) until
   * the call is aborted (options.signal) or the server ends it: with
   * filter.after (an {@link Event.sequence}; 0n for every event kept), first
   * the events the sandboxer kept after it, otherwise only new ones. Across
   * a restart of the sandboxer the stream resumes after the last event
   * received, losing and repeating none (within
   * {@link MagnetarClient.retryTimeoutMs}).
   */
  async *events(
    filter: { sandboxIds?: string[]; types?: EventType[]; after?: bigint } = {},
    options?: CallOptions,
  ): AsyncGenerator<Event, void, undefined> {
    try {
      yield* watchEvents(
        (req, onHeader) =>
          this.sandboxService.watchEvents(req, {
            ...options,
            onHeader: (h) => {
              onHeader(h);
              options?.onHeader?.(h);
            },
          }),
        filter,
        filter.after,
        this.retryTimeoutMs,
        this.streamSignal(options?.signal),
      );
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
  }

  /**
   * Imports the images of an OCI archive (a path on the sandboxer's host;
   * a relative path is made absolute here) and unpacks them. Returns the
   * imported images; onProgress sees the progress messages.
   */
  async importImage(
    archive: string,
    onProgress?: (p: ImageProgress) => void,
    options?: CallOptions,
  ): Promise<Image[]> {
    const images: Image[] = [];
    try {
      for await (const res of this.imageService.importImage({ path: path.resolve(archive), unpack: true }, options)) {
        if (res.payload.case === "progress") {
          onProgress?.(res.payload.value);
        } else if (res.payload.case === "images") {
          images.push(...res.payload.value.images);
        }
      }
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
    return images;
  }

  /** Pulls an image from a registry and unpacks it. */
  async pullImage(
    ref: string,
    onProgress?: (p: ImageProgress) => void,
    options?: CallOptions & { insecure?: boolean },
  ): Promise<Image> {
    let image: Image | undefined;
    try {
      for await (const res of this.imageService.pullImage({ ref, unpack: true, insecure: options?.insecure ?? false }, options)) {
        if (res.payload.case === "progress") {
          onProgress?.(res.payload.value);
        } else if (res.payload.case === "image") {
          image = res.payload.value;
        }
      }
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
    if (image === undefined) {
      throw new MagnetarError(`pull ${ref}: the server sent no image`, Code.Internal);
    }
    return image;
  }

  /** Lists the images of the sandboxer's store. */
  async images(options?: CallOptions): Promise<Image[]> {
    return (await wrapped(this.imageService.listImages({}, options))).images;
  }

  /** Returns an image by reference or digest. */
  async image(ref: string, options?: CallOptions): Promise<Image> {
    return (await wrapped(this.imageService.getImage({ ref }, options))).image!;
  }

  /** Removes an image (Code.FailedPrecondition while a container uses it). */
  async removeImage(ref: string, options?: CallOptions): Promise<void> {
    await wrapped(this.imageService.removeImage({ ref }, options));
  }
}

/**
 * Connects to the sandboxer API at address (see {@link dialTransport} for
 * the forms: `unix:///run/magnetar/api.sock`, an absolute socket path,
 * `https://host:port`, or `http://host:port` with `insecure`).
 */
export function dial(address: string, options?: DialOptions): MagnetarClient {
  const { transport, close } = dialTransport(address, options);
  const http1 = (options?.protocol ?? "connect") === "connect" && options?.httpVersion === "1.1";
  return new MagnetarClient(transport, close, options?.retryTimeoutMs ?? DEFAULT_RETRY_TIMEOUT_MS, !http1);
}

/**
 * A sandbox: a snapshot ({@link info}, taken when it was returned; see
 * {@link refresh}) and the calls on it. `await using sb = await
 * client.createSandbox(...)` deletes it (forced) at the end of the scope.
 */
export class Sandbox implements AsyncDisposable {
  readonly #client: MagnetarClient;
  /** The snapshot of the sandbox. */
  info: SandboxMessage;

  /** Wraps a sandbox message of client's sandboxer. */
  constructor(client: MagnetarClient, info: SandboxMessage) {
    this.#client = client;
    this.info = info;
  }

  /** The sandbox's ID. */
  get id(): string {
    return this.info.id;
  }

  /** The sandbox's kind. */
  get kind(): string {
    return this.info.kind;
  }

  /** The sandbox's state when the snapshot was taken. */
  get state(): SandboxState {
    return this.info.state;
  }

  /** Updates the snapshot from the sandboxer. */
  async refresh(options?: CallOptions): Promise<this> {
    const res = await wrapped(this.#client.sandboxService.getSandbox({ sandboxId: this.id }, options));
    this.info = res.sandbox!;
    return this;
  }

  /**
   * Stops every container of the sandbox, then the sandbox. timeoutMs is
   * how long processes get after SIGTERM before SIGKILL.
   */
  async stop(opts: { timeoutMs?: number } = {}, options?: CallOptions): Promise<void> {
    const res = await wrapped(
      this.#client.sandboxService.stopSandbox(
        { sandboxId: this.id, timeout: opts.timeoutMs === undefined ? undefined : durationFromMs(opts.timeoutMs) },
        options,
      ),
    );
    if (res.sandbox !== undefined) {
      this.info = res.sandbox;
    }
  }

  /**
   * Removes the sandbox and everything it holds. Without force the sandbox
   * must be stopped first (Code.FailedPrecondition otherwise).
   */
  async delete(opts: { force?: boolean } = {}, options?: CallOptions): Promise<void> {
    await wrapped(this.#client.sandboxService.deleteSandbox({ sandboxId: this.id, force: opts.force ?? false }, options));
  }

  /**
   * Replaces the sandbox's lifetime, counted from now: it ends after
   * timeoutMs and after idleTimeoutMs of idleness. Both are replaced: an
   * omitted or zero one is removed. The snapshot shows the new expiresAt
   * and idleTimeout.
   */
  async setTimeout(opts: { timeoutMs?: number; idleTimeoutMs?: number } = {}, options?: CallOptions): Promise<this> {
    const res = await wrapped(
      this.#client.sandboxService.setSandboxTimeout(
        { sandboxId: this.id, timeout: optDuration(opts.timeoutMs), idleTimeout: optDuration(opts.idleTimeoutMs) },
        options,
      ),
    );
    this.info = res.sandbox!;
    return this;
  }

  /**
   * Replaces the egress policy of a sandbox on a bridge network, at once and
   * while it runs (UpdateNetworkPolicy); an empty policy allows everything.
   * The snapshot shows the new policy in network.egress.
   */
  async updateNetworkPolicy(egress: MessageInitShape<typeof EgressPolicySchema>, options?: CallOptions): Promise<this> {
    const res = await wrapped(this.#client.sandboxService.updateNetworkPolicy({ sandboxId: this.id, egress }, options));
    this.info = res.sandbox!;
    return this;
  }

  /** Freezes the sandbox's running containers (state PAUSED): they use no CPU until {@link resume}. */
  async pause(options?: CallOptions): Promise<this> {
    const res = await wrapped(this.#client.sandboxService.pauseSandbox({ sandboxId: this.id }, options));
    this.info = res.sandbox!;
    return this;
  }

  /** Thaws the containers {@link pause} froze (state READY). */
  async resume(options?: CallOptions): Promise<this> {
    const res = await wrapped(this.#client.sandboxService.resumeSandbox({ sandboxId: this.id }, options));
    this.info = res.sandbox!;
    return this;
  }

  /** What the sandbox uses now: CPU time, memory, pids, disk and network bytes. */
  async usage(options?: CallOptions): Promise<SandboxUsage> {
    const res = await wrapped(this.#client.sandboxService.getSandboxUsage({ sandboxId: this.id }, options));
    return res.usage!;
  }

  /**
   * Yields the sandbox's usage every intervalMs (at least 100) until the
   * caller stops (break, or options.signal) or the sandbox is gone (an error
   * with Code.NotFound). Across a restart of the sandboxer the stream is
   * opened again and goes on with the next sample (within
   * {@link MagnetarClient.retryTimeoutMs}).
   */
  async *watchUsage(intervalMs = 1000, options?: CallOptions): AsyncGenerator<SandboxUsage, void, undefined> {
    const interval = optDuration(intervalMs);
    try {
      yield* watchUsage(
        () => this.#client.sandboxService.watchSandboxUsage({ sandboxId: this.id, interval }, options),
        this.#client.retryTimeoutMs,
        this.#client.streamSignal(options?.signal),
      );
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
  }

  /**
   * Connects to TCP port (1 to 65535) on the sandbox's loopback (a server
   * that a process in the sandbox runs) through the sandboxer, and resolves
   * with the connection once made: a Node.js Duplex stream
   * ({@link PortConnection}; `end()` half-closes, the process then reads end
   * of file). Nothing listening on the port rejects with Code.Unavailable.
   * Needs HTTP/2: gRPC or Connect over HTTP/2 (the default), not
   * `httpVersion: "1.1"`. options.signal and timeoutMs bound the dialing
   * only; connections are independent, open as many as needed.
   */
  async dialPort(port: number, options?: CallOptions): Promise<PortConnection> {
    if (!this.#client.bidiStreams) {
      throw new MagnetarError(
        'DialPort streams both ways, which needs HTTP/2: dial with protocol "grpc" or Connect over HTTP/2 (not httpVersion "1.1")',
        Code.Unimplemented,
      );
    }
    return dialPort(this.#client.sandboxService, this.id, port, options);
  }

  /** Deletes the sandbox (forced), ignoring that it is already gone. */
  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.delete({ force: true });
    } catch (err) {
      if (!(err instanceof MagnetarError && err.code === Code.NotFound)) {
        throw err;
      }
    }
  }

  /** Creates a container in the sandbox without starting it. */
  async createContainer(opts: ContainerOptions, options?: CallOptions): Promise<Container> {
    if ((opts.image === undefined) === (opts.rootfs === undefined)) {
      invalidArgument("a container needs exactly one of image and rootfs");
    }
    const mounts: MessageInitShape<typeof MountSchema>[] = (opts.mounts ?? []).map((m) => ({
      source: m.source,
      destination: m.destination,
      type: m.type ?? "bind",
      options: m.options ?? [],
      readonly: m.readonly ?? false,
    }));
    const res = await wrapped(
      this.#client.containerService.createContainer(
        {
          sandboxId: this.id,
          containerId: opts.id ?? "",
          source:
            opts.image !== undefined
              ? { case: "image", value: opts.image }
              : { case: "rootfsPath", value: opts.rootfs! },
          process: processSpec(opts),
          mounts,
          resources: opts.resources,
          labels: opts.labels ?? {},
          annotations: opts.annotations ?? {},
          readonlyRootfs: opts.readonlyRootfs ?? false,
        },
        options,
      ),
    );
    return new Container(this.#client, res.container!);
  }

  /**
   * Creates a container and starts it. If starting fails, the container is
   * deleted again. Its output is kept from the start: iterate
   * {@link Process.output} at any time afterwards.
   */
  async run(opts: ContainerOptions, options?: CallOptions): Promise<Container> {
    const c = await this.createContainer(opts, options);
    try {
      await c.start(options);
    } catch (err) {
      await c.delete({ force: true }, { timeoutMs: 60_000 }).catch(() => {});
      throw err;
    }
    return c;
  }

  /** Lists the containers of the sandbox. */
  async containers(options?: CallOptions): Promise<Container[]> {
    return this.#client.containers({ sandboxId: this.id }, options);
  }
}

/**
 * A process of a container: its main process (exec ID "") or an exec.
 * Output is kept by the sandboxer from the moment the process is created,
 * so attaching late loses nothing.
 */
export class Process {
  /** The client the process was reached through. */
  protected readonly client: MagnetarClient;
  /** The container's ID. */
  readonly containerId: string;
  /** The exec ID; "" for the container's main process. */
  readonly execId: string;

  /** Refers to the process execId of container containerId. */
  constructor(client: MagnetarClient, containerId: string, execId: string) {
    this.client = client;
    this.containerId = containerId;
    this.execId = execId;
  }

  /**
   * Yields the process's output from startOffset (see
   * {@link OutputChunk.offset}) or from the oldest byte the sandboxer kept
   * (on disk, the newest 1 MiB or so, since the process was created), then
   * ends when the process has exited (then {@link wait} returns at once).
   * Across a restart of the sandboxer the stream resumes from the next
   * offset (within {@link MagnetarClient.retryTimeoutMs}). Abort with
   * options.signal.
   *
   * With options.follow false it does not wait for more: it yields the
   * output there was when the call reached the sandboxer and ends, returning
   * the exit status only if the process had exited (`magnetar logs`
   * without -f).
   */
  async *output(
    options?: CallOptions & { startOffset?: number; follow?: boolean },
  ): AsyncGenerator<OutputChunk, ExitStatus | undefined, undefined> {
    try {
      for await (const item of followOutput(
        (req) => this.client.containerService.attachOutput(req, options),
        this.containerId,
        this.execId,
        options?.startOffset,
        this.client.retryTimeoutMs,
        this.client.streamSignal(options?.signal),
        options?.follow ?? true,
      )) {
        if (item.kind === "output") {
          yield { stream: item.stream === OutputStream.STDERR ? "stderr" : "stdout", data: item.data, offset: item.offset };
        } else if (item.response.payload.case === "exit") {
          const ex = item.response.payload.value;
          return { code: ex.exitStatus, exitedAt: dateOf(ex.exitedAt) };
        }
      }
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
    return undefined;
  }

  /** Waits for the process to exit and returns how it ended. */
  async wait(options?: CallOptions): Promise<ExitStatus> {
    const res = await wrapped(
      this.client.containerService.waitProcess({ containerId: this.containerId, execId: this.execId }, options),
    );
    return { code: res.exitStatus, exitedAt: dateOf(res.exitedAt) };
  }

  /**
   * Copies the output to stdout and stderr (streams of this process, for
   * example `process.stdout`) until the process exits; returns how it
   * ended.
   */
  async attach(sinks: { stdout?: Writable; stderr?: Writable }, options?: CallOptions): Promise<ExitStatus> {
    const it = this.output(options);
    for (;;) {
      const r = await it.next();
      if (r.done) {
        return r.value ?? (await this.wait(options));
      }
      const sink = r.value.stream === "stderr" ? sinks.stderr : sinks.stdout;
      if (sink !== undefined && !sink.write(r.value.data)) {
        await new Promise<void>((resolve) => sink.once("drain", resolve));
      }
    }
  }

  /** Waits for the process to exit; returns its whole output and exit status. */
  async collect(options?: CallOptions): Promise<ProcessResult> {
    const out: Uint8Array[] = [];
    const errs: Uint8Array[] = [];
    const it = this.output(options);
    for (;;) {
      const r = await it.next();
      if (r.done) {
        const st = r.value ?? (await this.wait(options));
        return {
          ...st,
          stdout: Buffer.concat(out).toString("utf8"),
          stderr: Buffer.concat(errs).toString("utf8"),
        };
      }
      (r.value.stream === "stderr" ? errs : out).push(r.value.data);
    }
  }

  /**
   * Writes to the process's standard input (the process must have been
   * made with `stdin: true`). Strings are sent as UTF-8. With eof, the
   * input is closed after the data. Returns the number of bytes written.
   */
  async writeStdin(data: string | Uint8Array, opts: { eof?: boolean } = {}, options?: CallOptions): Promise<number> {
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
    const res = await wrapped(
      this.client.containerService.writeStdin(
        { containerId: this.containerId, execId: this.execId, data: bytes, eof: opts.eof ?? false },
        options,
      ),
    );
    return Number(res.bytesWritten);
  }

  /** Closes the process's standard input: it reads end of file. */
  async closeStdin(options?: CallOptions): Promise<void> {
    await wrapped(this.client.containerService.closeStdin({ containerId: this.containerId, execId: this.execId }, options));
  }

  /** Sends a signal ("SIGTERM", or a number) to the process. */
  async signal(sig: number | NodeJS.Signals, options?: CallOptions): Promise<void> {
    await wrapped(
      this.client.containerService.signalProcess(
        { containerId: this.containerId, execId: this.execId, signal: signalNumber(sig) },
        options,
      ),
    );
  }

  /** Changes the size of the process's terminal. */
  async resize(width: number, height: number, options?: CallOptions): Promise<void> {
    await wrapped(
      this.client.containerService.resizePty(
        { containerId: this.containerId, execId: this.execId, size: { width, height } },
        options,
      ),
    );
  }
}

/**
 * A container: its main process ({@link Process}), a snapshot
 * ({@link info}; see {@link refresh}) and the calls on it.
 */
export class Container extends Process {
  /** The snapshot of the container. */
  info: ContainerMessage;

  /** Wraps a container message of client's sandboxer. */
  constructor(client: MagnetarClient, info: ContainerMessage) {
    super(client, info.id, "");
    this.info = info;
  }

  /** The container's ID. */
  get id(): string {
    return this.info.id;
  }

  /** The ID of the container's sandbox. */
  get sandboxId(): string {
    return this.info.sandboxId;
  }

  /** The container's files (see {@link Files}). */
  files(): Files {
    return this.client.files(this.id);
  }

  /** Starts the container's process; returns its host PID. */
  async start(options?: CallOptions): Promise<number> {
    const res = await wrapped(this.client.containerService.startContainer({ containerId: this.id }, options));
    return res.pid;
  }

  /** Updates the snapshot from the sandboxer. */
  async refresh(options?: CallOptions): Promise<this> {
    this.info = (await wrapped(this.client.containerService.getContainer({ containerId: this.id }, options))).container!;
    return this;
  }

  /** Starts another process in the container. */
  async exec(opts: ExecOptions, options?: CallOptions): Promise<Process> {
    const res = await wrapped(
      this.client.containerService.execProcess(
        { containerId: this.id, execId: opts.execId ?? "", process: processSpec(opts) },
        options,
      ),
    );
    return new Process(this.client, this.id, res.execId);
  }

  /** Returns the container's resource usage. */
  async stats(options?: CallOptions): Promise<ContainerStatsResponse> {
    return wrapped(this.client.containerService.containerStats({ containerId: this.id }, options));
  }

  /** Changes the container's resource limits. */
  async updateResources(resources: Resources, options?: CallOptions): Promise<void> {
    await wrapped(this.client.containerService.updateContainerResources({ containerId: this.id, resources }, options));
  }

  /**
   * Removes the container. Without force it must have exited
   * (Code.FailedPrecondition otherwise). Returns how its process ended.
   */
  async delete(opts: { force?: boolean } = {}, options?: CallOptions): Promise<ExitStatus> {
    const res = await wrapped(
      this.client.containerService.deleteContainer({ containerId: this.id, force: opts.force ?? false }, options),
    );
    return { code: res.exitStatus, exitedAt: dateOf(res.exitedAt) };
  }
}

