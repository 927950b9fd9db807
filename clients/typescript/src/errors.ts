import { Code, ConnectError } from "@connectrpc/connect";

/**
 * The error every call of {@link MagnetarClient} and its handles throws.
 *
 * It is a {@link ConnectError} (so `instanceof ConnectError` holds and
 * `findDetails` works) whose {@link ConnectError.code} is the class of the
 * failure: Magnetar maps containerd's error classes onto these codes, for
 * example `Code.NotFound` for a missing sandbox, `Code.InvalidArgument` for
 * a bad ID, `Code.FailedPrecondition` for deleting a running container
 * without `force`, `Code.Unimplemented` for a capability the kind lacks and
 * `Code.Unavailable` when the sandboxer cannot be reached. Test the code,
 * never the message.
 *
 * Its `name` stays "ConnectError": Connect's own `instanceof ConnectError`
 * check (which also recognizes errors of other copies of the library) goes
 * by that name, and `ConnectError.from` must keep the code.
 */
export class MagnetarError extends ConnectError {
  constructor(message: string, code: Code, cause?: unknown, metadata?: Headers) {
    super(message, code, metadata, undefined, cause);
    Object.setPrototypeOf(this, new.target.prototype);
  }

  /**
   * `err instanceof MagnetarError` is the ordinary prototype check (the
   * inherited one of ConnectError would accept any ConnectError).
   */
  static override [Symbol.hasInstance](v: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(this, v);
  }

  /** Converts any thrown value into a MagnetarError, keeping its code. */
  static wrap(err: unknown): MagnetarError {
    if (err instanceof MagnetarError) {
      return err;
    }
    const ce = ConnectError.from(err);
    const wrapped = new MagnetarError(ce.rawMessage, ce.code, err, ce.metadata);
    // Keep the error details (google.rpc.Status details) of the server.
    wrapped.details.push(...ce.details);
    return wrapped;
  }
}

/** Reports whether err carries the given code (a MagnetarError or ConnectError). */
export function hasCode(err: unknown, code: Code): boolean {
  return err instanceof ConnectError && err.code === code;
}

/** Reports whether err is a NotFound error: the object does not exist. */
export function isNotFound(err: unknown): boolean {
  return hasCode(err, Code.NotFound);
}

/** Reports whether err is an InvalidArgument error: the request was malformed. */
export function isInvalidArgument(err: unknown): boolean {
  return hasCode(err, Code.InvalidArgument);
}

/** Reports whether err is an AlreadyExists error, for example a taken ID. */
export function isAlreadyExists(err: unknown): boolean {
  return hasCode(err, Code.AlreadyExists);
}

/** Reports whether err is a FailedPrecondition error: the object's state forbids the call. */
export function isFailedPrecondition(err: unknown): boolean {
  return hasCode(err, Code.FailedPrecondition);
}

/** Reports whether err is an Unavailable error: the sandboxer could not be reached. */
export function isUnavailable(err: unknown): boolean {
  return hasCode(err, Code.Unavailable);
}

/** Runs a call and converts its failure into a MagnetarError. */
export async function wrapped<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    throw MagnetarError.wrap(err);
  }
}

/** Throws an InvalidArgument MagnetarError raised by the client itself. */
export function invalidArgument(message: string): never {
  throw new MagnetarError(message, Code.InvalidArgument);
}
