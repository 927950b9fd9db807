package io.magnetar.client;

import io.grpc.Status;
import io.grpc.StatusException;
import io.grpc.StatusRuntimeException;

/**
 * The error every call of {@link MagnetarClient} and its handles throws.
 *
 * <p>Its {@link #code()} is the class of the failure: Magnetar maps
 * containerd's error classes onto gRPC status codes, for example
 * {@code NOT_FOUND} for a missing sandbox, {@code INVALID_ARGUMENT} for a bad
 * ID, {@code FAILED_PRECONDITION} for deleting a running container without
 * force, {@code UNIMPLEMENTED} for a capability the kind lacks and
 * {@code UNAVAILABLE} when the sandboxer cannot be reached. Test the code,
 * never the message.
 */
public class MagnetarException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final Status.Code code;

  /** An error with the given code and message. */
  public MagnetarException(Status.Code code, String message, Throwable cause) {
    super(code + ": " + message, cause);
    this.code = code;
  }

  /** The status code of the failure. */
  public Status.Code code() {
    return code;
  }

  /** Reports whether this is a NOT_FOUND error: the object does not exist. */
  public boolean isNotFound() {
    return code == Status.Code.NOT_FOUND;
  }

  /** Converts any throwable into a MagnetarException, keeping its status code. */
  public static MagnetarException wrap(Throwable t) {
    if (t instanceof MagnetarException m) {
      return m;
    }
    Status s;
    if (t instanceof StatusRuntimeException e) {
      s = e.getStatus();
    } else if (t instanceof StatusException e) {
      s = e.getStatus();
    } else {
      s = Status.fromThrowable(t);
    }
    String msg = s.getDescription() != null ? s.getDescription() : String.valueOf(t.getMessage());
    return new MagnetarException(s.getCode(), msg, t);
  }

  static MagnetarException invalidArgument(String message) {
    return new MagnetarException(Status.Code.INVALID_ARGUMENT, message, null);
  }
}
