/**
 * @magnetar-io/client: the TypeScript client of Magnetar's API.
 *
 * `dial(address)` connects to a `magnetar-sandboxer`; the handles
 * ({@link Sandbox}, {@link Container}, {@link Process}) make the common
 * paths short, and the generated Connect-ES clients and messages (the
 * `sandboxv1`, `containerv1`, `imagev1` and `typesv1` namespaces) cover the
 * whole API.
 *
 * @packageDocumentation
 */
export {
  MagnetarClient,
  Sandbox,
  Container,
  Process,
  dial,
  type ContainerFilter,
  type ContainerOptions,
  type ExecOptions,
  type ExitStatus,
  type ImageProgress,
  type MountOptions,
  type OutputChunk,
  type ProcessOptions,
  type ProcessResult,
  type Resources,
  type SandboxFilter,
  type SandboxOptions,
  type StreamName,
} from "./client.js";
export { PortConnection } from "./ports.js";
export { Files, FileType, type FileChange, type FileContent, type FileInfo, type WriteFileOptions } from "./files.js";
export { Backoff, DEFAULT_RETRY_TIMEOUT_MS, retryInterceptor } from "./resume.js";
export { DEFAULT_ADDRESS, dialTransport, type DialOptions, type DialedTransport } from "./dial.js";
export {
  MagnetarError,
  hasCode,
  isAlreadyExists,
  isFailedPrecondition,
  isInvalidArgument,
  isNotFound,
  isUnavailable,
} from "./errors.js";
export { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
export * as sandboxv1 from "./gen/magnetar/sandbox/v1/sandbox_pb.js";
export * as containerv1 from "./gen/magnetar/container/v1/container_pb.js";
export * as imagev1 from "./gen/magnetar/image/v1/image_pb.js";
export * as filev1 from "./gen/magnetar/file/v1/file_pb.js";
export * as typesv1 from "./gen/magnetar/types/v1/types_pb.js";
export { SandboxState, EventType } from "./gen/magnetar/sandbox/v1/sandbox_pb.js";
export { ContainerState } from "./gen/magnetar/container/v1/container_pb.js";
