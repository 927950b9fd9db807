package io.magnetar.client;

import io.grpc.CallOptions;
import io.grpc.ClientCall;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCalls;
import io.magnetar.container.v1.AttachOutputRequest;
import io.magnetar.container.v1.AttachOutputResponse;
import io.magnetar.container.v1.OutputStream;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.function.Function;

/**
 * A process's output stream: iterate it once, and close it
 * (try-with-resources) to stop early. Iteration throws
 * {@link MagnetarException} on errors. While the sandboxer restarts, the
 * stream is opened again from the offset after the last chunk received (see
 * {@link MagnetarClient#withRetryTimeout}), so no byte is lost or repeated.
 * An output made by {@link Process#outputSoFar()} does not follow: it ends
 * after the output there was when the call reached the sandboxer, with an
 * {@link #exitStatus()} only if the process had exited.
 */
public final class Output implements Iterable<OutputChunk>, AutoCloseable {
  /** Opens one AttachOutput call. */
  interface Opener extends Function<AttachOutputRequest, Call> {}

  /** One AttachOutput call: its responses and how to cancel it. */
  record Call(Iterator<AttachOutputResponse> responses, Runnable cancel) {}

  private final Opener open;
  private final AttachOutputRequest base;
  private final Retry.Backoff backoff;
  private Long offset;
  private Call call;
  private OutputChunk next;
  private Integer exitStatus;
  private final boolean follow;
  private boolean ended;
  private boolean iterated;
  private volatile boolean closed;

  Output(MagnetarClient client, AttachOutputRequest req) {
    this(req2 -> {
      ClientCall<AttachOutputRequest, AttachOutputResponse> c =
          client.channel().newCall(Api.ATTACH_OUTPUT, CallOptions.DEFAULT);
      return new Call(ClientCalls.blockingServerStreamingCall(c, req2), () -> c.cancel("output closed", null));
    }, req, new Retry.Backoff(client.retryTimeout()));
  }

  Output(Opener open, AttachOutputRequest req, Retry.Backoff backoff) {
    this.open = open;
    this.base = req;
    this.backoff = backoff;
    this.offset = req.hasStartOffset() ? req.getStartOffset() : null;
    this.follow = !req.hasFollow() || req.getFollow();
  }

  /** The exit status the stream ended with, or null before its end. */
  public Integer exitStatus() {
    return exitStatus;
  }

  private AttachOutputRequest request() {
    AttachOutputRequest.Builder b = base.toBuilder();
    if (offset != null) {
      b.setStartOffset(offset);
    }
    return b.build();
  }

  /** Reads the next chunk into next; false at the end (the exit). */
  private boolean advance() {
    while (next == null && exitStatus == null && !ended) {
      try {
        if (call == null) {
          call = open.apply(request());
        }
        if (!call.responses().hasNext()) {
          call = null;
          if (!follow) {
            // All there was; the process had not exited.
            ended = true;
            break;
          }
          throw new StatusRuntimeException(Status.UNAVAILABLE.withDescription("output stream ended without an exit status"));
        }
        AttachOutputResponse res = call.responses().next();
        backoff.reset();
        if (res.hasOutput()) {
          var o = res.getOutput();
          offset = o.getOffset() + o.getData().size();
          next = new OutputChunk(o.getStream() == OutputStream.OUTPUT_STREAM_STDERR, o.getData().toByteArray(),
              o.getOffset());
        } else if (res.hasExit()) {
          exitStatus = res.getExit().getExitStatus();
        }
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
  public Iterator<OutputChunk> iterator() {
    if (iterated) {
      throw new IllegalStateException("an Output is iterated once");
    }
    iterated = true;
    return new Iterator<>() {
      @Override
      public boolean hasNext() {
        return advance();
      }

      @Override
      public OutputChunk next() {
        if (!hasNext()) {
          throw new NoSuchElementException();
        }
        OutputChunk c = next;
        next = null;
        return c;
      }
    };
  }

  /** Cancels the stream (nothing if it has ended). */
  @Override
  public void close() {
    closed = true;
    Call c = call;
    if (c != null) {
      c.cancel().run();
    }
  }
}
