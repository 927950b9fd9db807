package io.magnetar.client;

import io.grpc.CallOptions;
import io.grpc.ClientCall;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCalls;
import io.magnetar.sandbox.v1.Event;
import io.magnetar.sandbox.v1.WatchEventsRequest;
import io.magnetar.sandbox.v1.WatchEventsResponse;
import java.util.Iterator;
import java.util.NoSuchElementException;

/**
 * A stream of sandbox and container events (one WatchEvents call). It does
 * not end by itself: iterate it once and close it (from any thread) to stop;
 * the iteration then ends normally. Iteration throws
 * {@link MagnetarException} on errors.
 */
public final class Events implements Iterable<Event>, AutoCloseable {
  private final ClientCall<WatchEventsRequest, WatchEventsResponse> call;
  private final Iterator<WatchEventsResponse> responses;
  private volatile boolean closed;
  private boolean iterated;

  Events(MagnetarClient client, WatchEventsRequest req) {
    call = client.channel().newCall(Api.WATCH_EVENTS, CallOptions.DEFAULT);
    responses = ClientCalls.blockingServerStreamingCall(call, req);
  }

  @Override
  public Iterator<Event> iterator() {
    if (iterated) {
      throw new IllegalStateException("an Events stream is iterated once");
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
      public Event next() {
        if (!hasNext()) {
          throw new NoSuchElementException();
        }
        return responses.next().getEvent();
      }
    };
  }

  /** Cancels the stream. */
  @Override
  public void close() {
    closed = true;
    call.cancel("events closed", null);
  }
}
