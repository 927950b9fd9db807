package io.magnetar.client;

import io.grpc.CallOptions;
import io.grpc.ClientCall;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCalls;
import io.magnetar.container.v1.AttachOutputRequest;
import io.magnetar.container.v1.AttachOutputResponse;
import io.magnetar.container.v1.OutputStream;
import java.util.Iterator;
import java.util.NoSuchElementException;

/**
 * A process's output stream (one AttachOutput call): iterate it once, and
 * close it (try-with-resources) to stop early. Iteration throws
 * {@link MagnetarException} on errors.
 */
public final class Output implements Iterable<OutputChunk>, AutoCloseable {
  private final ClientCall<AttachOutputRequest, AttachOutputResponse> call;
  private final Iterator<AttachOutputResponse> responses;
  private OutputChunk next;
  private Integer exitStatus;
  private boolean iterated;

  Output(MagnetarClient client, AttachOutputRequest req) {
    call = client.channel().newCall(Api.ATTACH_OUTPUT, CallOptions.DEFAULT);
    responses = ClientCalls.blockingServerStreamingCall(call, req);
  }

  /** The exit status the stream ended with, or null before its end. */
  public Integer exitStatus() {
    return exitStatus;
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
        try {
          while (next == null && responses.hasNext()) {
            AttachOutputResponse res = responses.next();
            if (res.hasOutput()) {
              next = new OutputChunk(res.getOutput().getStream() == OutputStream.OUTPUT_STREAM_STDERR,
                  res.getOutput().getData().toByteArray());
            } else if (res.hasExit()) {
              exitStatus = res.getExit().getExitStatus();
            }
          }
        } catch (StatusRuntimeException e) {
          throw MagnetarException.wrap(e);
        }
        return next != null;
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
    call.cancel("output closed", null);
  }
}
