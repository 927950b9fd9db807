package io.magnetar.client;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptors;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.MetadataUtils;
import io.magnetar.sandbox.v1.Event;
import io.magnetar.sandbox.v1.WatchEventsRequest;
import io.magnetar.sandbox.v1.WatchEventsResponse;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Function;

/**
 * A stream of sandbox and container events. It does not end by itself:
 * iterate it once and close it (from any thread) to stop; the iteration then
 * ends normally. Iteration throws {@link MagnetarException} on errors. While
 * the sandboxer restarts, the stream is opened again after the last event
 * received (see {@link MagnetarClient#withRetryTimeout}), so no event is lost
 * or repeated.
 */
public final class Events implements Iterable<Event>, AutoCloseable {
  /** WatchEvents' response header: the sequence number the stream starts after. */
  static final Metadata.Key<String> SEQUENCE_HEADER =
      Metadata.Key.of("magnetar-event-sequence", Metadata.ASCII_STRING_MARSHALLER);

  /** Opens one WatchEvents call. */
  interface Opener extends Function<WatchEventsRequest, Call> {}

  /** One WatchEvents call: its responses, its response headers once known, and how to cancel it. */
  record Call(Iterator<WatchEventsResponse> responses, AtomicReference<Metadata> headers, Runnable cancel) {}

  private final Opener open;
  private final WatchEventsRequest base;
  private final Retry.Backoff backoff;
  private Long after;
  private volatile Call call;
  private Event next;
  private volatile boolean closed;
  private boolean iterated;

  Events(MagnetarClient client, WatchEventsRequest req) {
    this(req2 -> {
      AtomicReference<Metadata> headers = new AtomicReference<>();
      Channel ch = ClientInterceptors.intercept(client.channel(),
          MetadataUtils.newCaptureMetadataInterceptor(headers, new AtomicReference<>()));
      ClientCall<WatchEventsRequest, WatchEventsResponse> c = ch.newCall(Api.WATCH_EVENTS, CallOptions.DEFAULT);
      return new Call(ClientCalls.blockingServerStreamingCall(c, req2), headers, () -> c.cancel("events closed", null));
    }, req, new Retry.Backoff(client.retryTimeout()));
  }

  Events(Opener open, WatchEventsRequest req, Retry.Backoff backoff) {
    this.open = open;
    this.base = req;
    this.backoff = backoff;
    this.after = req.hasAfterSequence() ? req.getAfterSequence() : null;
    this.call = open.apply(req);
  }

  private WatchEventsRequest request() {
    WatchEventsRequest.Builder b = base.toBuilder();
    if (after != null) {
      b.setAfterSequence(after);
    }
    return b.build();
  }

  /** A live stream starts after the newest event: resume from there should it break before its first event. */
  private void started(Call c) {
    Metadata h = c.headers().get();
    if (after == null && h != null) {
      String v = h.get(SEQUENCE_HEADER);
      if (v != null && v.matches("[0-9]+")) {
        after = Long.parseUnsignedLong(v);
      }
    }
  }

  private boolean advance() {
    while (next == null) {
      Call c = call;
      try {
        if (c == null) {
          c = open.apply(request());
          call = c;
          if (closed) {
            c.cancel().run();
          }
        }
        boolean more = c.responses().hasNext();
        started(c);
        if (!more) {
          throw new StatusRuntimeException(Status.UNAVAILABLE.withDescription("event stream ended"));
        }
        Event ev = c.responses().next().getEvent();
        backoff.reset();
        if (after != null && Long.compareUnsigned(ev.getSequence(), after) <= 0) {
          continue;
        }
        after = ev.getSequence();
        next = ev;
      } catch (StatusRuntimeException e) {
        if (c != null) {
          started(c);
        }
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
    return true;
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
        return advance();
      }

      @Override
      public Event next() {
        if (!hasNext()) {
          throw new NoSuchElementException();
        }
        Event e = next;
        next = null;
        return e;
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
