package io.magnetar.client;

import io.grpc.CallOptions;
import io.grpc.ClientCall;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCalls;
import io.magnetar.sandbox.v1.SandboxUsage;
import io.magnetar.sandbox.v1.WatchSandboxUsageRequest;
import io.magnetar.sandbox.v1.WatchSandboxUsageResponse;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.function.Supplier;

/**
 * A sandbox's usage, sampled at an interval (see {@link Sandbox#watchUsage}).
 * It does not end by itself while the sandbox exists: iterate it once and
 * close it (from any thread) to stop; the iteration then ends normally. It
 * ends with NOT_FOUND (a {@link MagnetarException}) when the sandbox is
 * deleted. While the sandboxer restarts, the stream is opened again (see
 * {@link MagnetarClient#withRetryTimeout}) and goes on with the next sample.
 */
public final class UsageStream implements Iterable<SandboxUsage>, AutoCloseable {
  /** One WatchSandboxUsage call: its responses and how to cancel it. */
  record Call(Iterator<WatchSandboxUsageResponse> responses, Runnable cancel) {}

  private final Supplier<Call> open;
  private final Retry.Backoff backoff;
  private volatile Call call;
  private volatile boolean closed;
  private SandboxUsage next;
  private boolean iterated;

  UsageStream(MagnetarClient client, WatchSandboxUsageRequest req) {
    this(() -> {
      ClientCall<WatchSandboxUsageRequest, WatchSandboxUsageResponse> c =
          client.channel().newCall(Api.WATCH_SANDBOX_USAGE, CallOptions.DEFAULT);
      return new Call(ClientCalls.blockingServerStreamingCall(c, req), () -> c.cancel("usage stream closed", null));
    }, new Retry.Backoff(client.retryTimeout()));
  }

  UsageStream(Supplier<Call> open, Retry.Backoff backoff) {
    this.open = open;
    this.backoff = backoff;
  }

  /** Reads the next sample into next; false once closed. */
  private boolean advance() {
    while (next == null && !closed) {
      try {
        Call c = call;
        if (c == null) {
          c = open.get();
          call = c;
          if (closed) {
            c.cancel().run();
          }
        }
        if (!c.responses().hasNext()) {
          // The server ends the stream only with an error (NOT_FOUND).
          call = null;
          throw new StatusRuntimeException(Status.UNAVAILABLE.withDescription("usage stream ended"));
        }
        next = c.responses().next().getUsage();
        backoff.reset();
      } catch (StatusRuntimeException e) {
        call = null;
        if (closed && e.getStatus().getCode() == Status.Code.CANCELLED) {
          return false;
        }
        try {
          backoff.pause(e, true);
        } catch (StatusRuntimeException failed) {
          throw MagnetarException.wrap(failed);
        }
      }
    }
    return next != null;
  }

  @Override
  public Iterator<SandboxUsage> iterator() {
    if (iterated) {
      throw new IllegalStateException("a UsageStream is iterated once");
    }
    iterated = true;
    return new Iterator<>() {
      @Override
      public boolean hasNext() {
        return advance();
      }

      @Override
      public SandboxUsage next() {
        if (!hasNext()) {
          throw new NoSuchElementException();
        }
        SandboxUsage u = next;
        next = null;
        return u;
      }
    };
  }

  /** Cancels the stream. */
  @Override
  public void close() {
    closed = true;
    Call c = call;
    if (c != null) {
      c.cancel().run();
    }
  }
}
