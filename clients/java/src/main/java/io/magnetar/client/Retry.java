package io.magnetar.client;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.function.LongSupplier;
import java.util.function.Supplier;

/**
 * Riding out restarts of the sandboxer. While its worker restarts (a crash,
 * a live upgrade), the API socket stays open (the supervisor holds it): new
 * connections wait, calls in flight fail with {@code UNAVAILABLE} or end in
 * the middle of a stream. Calls that change nothing are retried, and output
 * and event streams resumed, with a backoff from 50 ms doubling up to 1 s,
 * for at most the client's retry timeout per outage.
 */
final class Retry {
  private Retry() {}

  /** The default retry timeout of a client. */
  static final Duration DEFAULT_TIMEOUT = Duration.ofSeconds(30);

  private static final long FIRST_NANOS = Duration.ofMillis(50).toNanos();
  private static final long MAX_NANOS = Duration.ofSeconds(1).toNanos();

  /**
   * Whether a call failed because the sandboxer was unavailable:
   * UNAVAILABLE, and for a stream (whose calls change nothing) a connection
   * that broke in the middle of a response (INTERNAL or UNKNOWN).
   */
  static boolean isTransient(Status.Code code, boolean stream) {
    return code == Status.Code.UNAVAILABLE
        || (stream && (code == Status.Code.INTERNAL || code == Status.Code.UNKNOWN));
  }

  /**
   * Whether a call failed because its connection broke under it (the
   * sandboxer's worker died): grpc-java reports that as UNKNOWN or
   * INTERNAL with an I/O exception (ClosedChannelException, "channel
   * closed") as the cause, never from the server.
   */
  static boolean brokenConnection(StatusRuntimeException e) {
    for (Throwable c = e.getStatus().getCause(); c != null; c = c.getCause()) {
      if (c instanceof java.io.IOException) {
        return true;
      }
    }
    return false;
  }

  /** Paces the attempts of one outage within a budget. */
  static final class Backoff {
    private final long budgetNanos;
    private final LongSupplier clock;
    private long start = -1;
    private long delay = FIRST_NANOS;

    Backoff(Duration budget) {
      this(budget, System::nanoTime);
    }

    Backoff(Duration budget, LongSupplier clock) {
      this.budgetNanos = budget.toNanos();
      this.clock = clock;
    }

    /** The pause before the next attempt in nanoseconds, or -1 once the budget is spent. */
    long next() {
      if (budgetNanos <= 0) {
        return -1;
      }
      long now = clock.getAsLong();
      if (start < 0) {
        start = now;
        delay = FIRST_NANOS;
      }
      if (now + delay - start > budgetNanos) {
        return -1;
      }
      long d = delay;
      delay = Math.min(2 * delay, MAX_NANOS);
      return d;
    }

    /** Progress was made: the next failure starts a new outage. */
    void reset() {
      start = -1;
    }

    /** Sleeps before the next attempt after e, or rethrows e. */
    void pause(StatusRuntimeException e, boolean stream) {
      long d = isTransient(e.getStatus().getCode(), stream) || brokenConnection(e) ? next() : -1;
      if (d < 0) {
        throw e;
      }
      try {
        Thread.sleep(d / 1_000_000, (int) (d % 1_000_000));
      } catch (InterruptedException ie) {
        Thread.currentThread().interrupt();
        throw e;
      }
    }
  }

  /** Makes call (one that changes nothing) until it does not fail with UNAVAILABLE or the budget is spent. */
  static <T> T call(Duration budget, Supplier<T> call) {
    Backoff b = new Backoff(budget);
    while (true) {
      try {
        return call.get();
      } catch (StatusRuntimeException e) {
        b.pause(e, false);
      }
    }
  }
}
