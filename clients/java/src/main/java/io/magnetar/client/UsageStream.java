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

/**
 * A sandbox's usage, sampled at an interval (see {@link Sandbox#watchUsage}).
 * It does not end by itself while the sandbox exists: iterate it once and
 * close it (from any thread) to stop; the iteration then ends normally. It
 * ends with NOT_FOUND (a {@link MagnetarException}) when the sandbox is
 * deleted.
 */
public final class UsageStream implements Iterable<SandboxUsage>, AutoCloseable {
  private final ClientCall<WatchSandboxUsageRequest, WatchSandboxUsageResponse> call;
  private final Iterator<WatchSandboxUsageResponse> responses;
  private volatile boolean closed;
  private boolean iterated;

  UsageStream(MagnetarClient client, WatchSandboxUsageRequest req) {
    call = client.channel().newCall(Api.WATCH_SANDBOX_USAGE, CallOptions.DEFAULT);
    responses = ClientCalls.blockingServerStreamingCall(call, req);
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
        try {
          return responses.hasNext();
        } catch (StatusRuntimeException e) {
          if (closed && e.getStatus().getCode() == Status.Code.CANCELLED) {
            return false;
          }
          throw MagnetarException.wrap(e);
        }
      }

      @Override
      public SandboxUsage next() {
        if (!hasNext()) {
          throw new NoSuchElementException();
        }
        return responses.next().getUsage();
      }
    };
  }

  /** Cancels the stream. */
  @Override
  public void close() {
    closed = true;
    call.cancel("usage stream closed", null);
  }
}
