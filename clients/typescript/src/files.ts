import type { CallOptions, Client } from "@connectrpc/connect";
import {
  FileEventType,
  FileService,
  FileType,
  WriteMode,
  type FileInfo,
  type WriteRequest,
  type UploadTarRequest,
} from "./gen/magnetar/file/v1/file_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { WriteRequestSchema, UploadTarRequestSchema } from "./gen/magnetar/file/v1/file_pb.js";
import { MagnetarError } from "./errors.js";

/** Content to write: bytes, a string (UTF-8) or a stream of byte chunks. */
export type FileContent = Uint8Array | string | AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

/** Options of {@link Files.writeFile}. */
export interface WriteFileOptions {
  /** What to do with an existing file: "truncate" (default), "append" or "createNew". */
  mode?: "truncate" | "append" | "createNew";
  /** Permission bits of a new file (default 0o644). */
  permissions?: number;
  /** Write a new file and rename it over the target when complete. */
  atomic?: boolean;
}

/** A change under a watched directory. */
export interface FileChange {
  /** "created", "modified" or "removed". */
  type: "created" | "modified" | "removed";
  /** Absolute path inside the container's root. */
  path: string;
  /** The path is a directory. */
  isDir: boolean;
}

const writeModes = { truncate: WriteMode.TRUNCATE, append: WriteMode.APPEND, createNew: WriteMode.CREATE_NEW } as const;
const changeTypes: Record<number, FileChange["type"]> = {
  [FileEventType.CREATED]: "created",
  [FileEventType.MODIFIED]: "modified",
  [FileEventType.REMOVED]: "removed",
};

/** Messages of at most 1 MiB. */
const CHUNK = 1 << 20;

async function* chunks(content: FileContent): AsyncIterable<Uint8Array> {
  if (typeof content === "string") {
    content = new TextEncoder().encode(content);
  }
  if (content instanceof Uint8Array) {
    for (let off = 0; off < content.length; off += CHUNK) {
      yield content.subarray(off, off + CHUNK);
    }
    return;
  }
  for await (const c of content as AsyncIterable<Uint8Array>) {
    for (let off = 0; off < c.length; off += CHUNK) {
      yield c.subarray(off, off + CHUNK);
    }
  }
}

async function* wrapStream<T>(it: AsyncIterable<T>): AsyncIterable<T> {
  try {
    yield* it;
  } catch (err) {
    throw MagnetarError.wrap(err);
  }
}

async function collect(it: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const p of it) {
    parts.push(p);
    n += p.length;
  }
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/**
 * The files of one container's root file system, through the sandboxer's
 * magnetar.file.v1.FileService: paths resolve inside the container's root
 * (no link or ".." leads outside it), while it runs and after it exited.
 * Every method throws {@link MagnetarError} (Code.NotFound,
 * Code.InvalidArgument, Code.AlreadyExists, Code.PermissionDenied,
 * Code.ResourceExhausted, Code.FailedPrecondition, Code.Unimplemented).
 */
export class Files {
  constructor(
    private readonly service: Client<typeof FileService>,
    /** The container's ID. */
    readonly containerId: string,
  ) {}

  /** Describes a path (a symbolic link is not followed). */
  async stat(path: string, options?: CallOptions): Promise<FileInfo> {
    try {
      return (await this.service.stat({ containerId: this.containerId, path }, options)).info!;
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
  }

  /** Lists a directory (recursively if asked), at most limit entries (default 1000). */
  async list(
    path: string,
    opts: { recursive?: boolean; limit?: number } = {},
    options?: CallOptions,
  ): Promise<{ entries: FileInfo[]; truncated: boolean }> {
    try {
      const res = await this.service.list(
        { containerId: this.containerId, path, recursive: opts.recursive ?? false, limit: opts.limit ?? 0 },
        options,
      );
      return { entries: res.entries, truncated: res.truncated };
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
  }

  /** Streams a regular file's bytes from offset, at most length of them (0: all). */
  read(path: string, opts: { offset?: number; length?: number } = {}, options?: CallOptions): AsyncIterable<Uint8Array> {
    const service = this.service;
    const req = { containerId: this.containerId, path, offset: BigInt(opts.offset ?? 0), length: BigInt(opts.length ?? 0) };
    return wrapStream(
      (async function* () {
        for await (const msg of service.read(req, options)) {
          yield msg.data;
        }
      })(),
    );
  }

  /** Returns a regular file's whole content. */
  async readFile(path: string, options?: CallOptions): Promise<Uint8Array> {
    return collect(this.read(path, {}, options));
  }

  /** Writes a file (streamed in messages of at most 1 MiB); returns the file written. */
  async writeFile(path: string, content: FileContent, opts: WriteFileOptions = {}, options?: CallOptions): Promise<FileInfo> {
    const header = {
      containerId: this.containerId,
      path,
      mode: writeModes[opts.mode ?? "truncate"],
      permissions: opts.permissions ?? 0,
      atomic: opts.atomic ?? false,
    };
    async function* requests(): AsyncIterable<MessageInitShape<typeof WriteRequestSchema>> {
      let first = true;
      for await (const data of chunks(content)) {
        yield first ? { header, data } : { data };
        first = false;
      }
      if (first) {
        yield { header };
      }
    }
    try {
      return (await this.service.write(requests(), options)).info!;
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
  }

  /** Creates a directory (with its parents if asked; then an existing one is fine). */
  async mkdir(path: string, opts: { parents?: boolean; permissions?: number } = {}, options?: CallOptions): Promise<void> {
    try {
      await this.service.makeDir(
        { containerId: this.containerId, path, parents: opts.parents ?? false, permissions: opts.permissions ?? 0 },
        options,
      );
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
  }

  /** Removes a path (a directory with everything under it if recursive). */
  async remove(path: string, opts: { recursive?: boolean } = {}, options?: CallOptions): Promise<void> {
    try {
      await this.service.remove({ containerId: this.containerId, path, recursive: opts.recursive ?? false }, options);
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
  }

  /** Renames a path. */
  async rename(oldPath: string, newPath: string, options?: CallOptions): Promise<void> {
    try {
      await this.service.rename({ containerId: this.containerId, oldPath, newPath }, options);
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
  }

  /**
   * Watches a directory: resolves once the watch is in place, then yields
   * the changes until the directory goes or options.signal aborts.
   */
  async watch(path: string, opts: { recursive?: boolean } = {}, options?: CallOptions): Promise<AsyncIterable<FileChange>> {
    const it = this.service
      .watch({ containerId: this.containerId, path, recursive: opts.recursive ?? false }, options)
      [Symbol.asyncIterator]();
    try {
      const first = await it.next();
      if (first.done || !first.value.started) {
        throw new MagnetarError(`watch ${path} did not start`, 14 /* Unavailable */);
      }
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
    return wrapStream(
      (async function* () {
        for (;;) {
          const { done, value } = await it.next();
          if (done) {
            return;
          }
          for (const e of value.events) {
            yield { type: changeTypes[e.type] ?? "modified", path: e.path, isDir: e.isDir };
          }
        }
      })(),
    );
  }

  /** Streams a directory (or file) as a tar archive. */
  downloadTar(path: string, options?: CallOptions): AsyncIterable<Uint8Array> {
    const service = this.service;
    const req = { containerId: this.containerId, path };
    return wrapStream(
      (async function* () {
        for await (const msg of service.downloadTar(req, options)) {
          yield msg.data;
        }
      })(),
    );
  }

  /** Extracts a tar archive into a directory; returns the entries and file bytes extracted. */
  async uploadTar(path: string, archive: FileContent, options?: CallOptions): Promise<{ entries: number; bytes: number }> {
    const header = { containerId: this.containerId, path };
    async function* requests(): AsyncIterable<MessageInitShape<typeof UploadTarRequestSchema>> {
      let first = true;
      for await (const data of chunks(archive)) {
        yield first ? { header, data } : { data };
        first = false;
      }
      if (first) {
        yield { header };
      }
    }
    try {
      const res = await this.service.uploadTar(requests(), options);
      return { entries: Number(res.entries), bytes: Number(res.bytes) };
    } catch (err) {
      throw MagnetarError.wrap(err);
    }
  }
}

export { FileType, type FileInfo, type WriteRequest, type UploadTarRequest };
