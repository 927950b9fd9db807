package io.magnetar.client;

import com.google.protobuf.ByteString;
import io.grpc.CallOptions;
import io.grpc.ClientCall;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.magnetar.sandbox.v1.DialPortRequest;
import io.magnetar.sandbox.v1.DialPortResponse;
import io.magnetar.sandbox.v1.DialPortTarget;
import java.io.IOException;
import java.io.InputStream;
import java.io.InterruptedIOException;
import java.io.OutputStream;
import java.util.concurrent.LinkedBlockingQueue;

/**
 * A connection to a TCP port in a sandbox, made by {@link Sandbox#dialPort}
 * over the sandboxer's DialPort stream (gRPC, HTTP/2), used like a
 * {@link java.net.Socket}: write to {@link #getOutputStream()}, read from
 * {@link #getInputStream()} (end of stream once the process closed its
 * side), {@link #shutdownOutput()} to half-close (the process reads end of
 * file and may go on answering; closing the output stream does the same),
 * {@link #close()} to drop the connection. Reading and writing may happen
 * in two threads at once. Errors of the stream are IOExceptions whose cause
 * is a {@link MagnetarException}.
 */
public final class PortConnection implements AutoCloseable {
  /** The most one DialPort message carries (as the Go SDK). */
  private static final int CHUNK = 32 << 10;

  /** What the listener hands to the reader: data, the end, or an error. */
  private record Item(byte[] data, StatusRuntimeException error) {
    static final Item END = new Item(null, null);
  }

  private final ClientCall<DialPortRequest, DialPortResponse> call;
  private final LinkedBlockingQueue<Item> received = new LinkedBlockingQueue<>();
  private final Object sendLock = new Object();
  private boolean outputShut; // guarded by sendLock
  private volatile boolean remoteClosed;
  private volatile boolean closed;
  private final Input in = new Input();
  private final Output out = new Output();

  private PortConnection(MagnetarClient client) {
    this.call = client.channel().newCall(Api.DIAL_PORT, CallOptions.DEFAULT);
  }

  /** Dials port of sandboxId and returns once connected. */
  static PortConnection dial(MagnetarClient client, String sandboxId, int port) {
    if (port < 1 || port > 65535) {
      throw MagnetarException.invalidArgument("port " + port + " is not between 1 and 65535");
    }
    PortConnection c = new PortConnection(client);
    c.start(DialPortRequest.newBuilder()
        .setTarget(DialPortTarget.newBuilder().setSandboxId(sandboxId).setPort(port))
        .build());
    // The first answer says whether the connection was made.
    Item first;
    try {
      first = c.received.take();
    } catch (InterruptedException e) {
      c.call.cancel("interrupted while dialing", e);
      Thread.currentThread().interrupt();
      throw new MagnetarException(Status.Code.CANCELLED, "interrupted while dialing port " + port, e);
    }
    if (first.error() != null) {
      throw MagnetarException.wrap(first.error());
    }
    if (first == Item.END) {
      throw new MagnetarException(Status.Code.UNAVAILABLE,
          "DialPort to " + sandboxId + ":" + port + ": the stream ended before it connected", null);
    }
    c.call.request(1);
    return c;
  }

  private void start(DialPortRequest target) {
    call.start(new ClientCall.Listener<>() {
      @Override
      public void onMessage(DialPortResponse msg) {
        if (!msg.getData().isEmpty() || !msg.getClosed()) {
          // The first message (connected) is empty too: the reader takes it.
          received.add(new Item(msg.getData().toByteArray(), null));
        }
        if (msg.getClosed()) {
          remoteClosed = true;
          received.add(Item.END);
        }
        // The next message only once this one is taken (flow control):
        // see Input.take.
      }

      @Override
      public void onReady() {
        synchronized (sendLock) {
          sendLock.notifyAll();
        }
      }

      @Override
      public void onClose(Status status, Metadata trailers) {
        synchronized (sendLock) {
          outputShut = true;
          sendLock.notifyAll();
        }
        if (status.isOk()) {
          if (!remoteClosed) {
            remoteClosed = true;
            received.add(Item.END);
          }
        } else {
          received.add(new Item(null, status.asRuntimeException(trailers)));
        }
      }
    }, new Metadata());
    call.request(1);
    synchronized (sendLock) {
      call.sendMessage(target);
    }
  }

  /** The bytes from the process; end of stream once it closed its side. */
  public InputStream getInputStream() {
    return in;
  }

  /** The bytes to the process; closing it half-closes the connection. */
  public OutputStream getOutputStream() {
    return out;
  }

  /** Half-closes the connection: the process reads end of file. */
  public void shutdownOutput() {
    synchronized (sendLock) {
      if (outputShut) {
        return;
      }
      outputShut = true;
      sendLock.notifyAll();
      call.halfClose();
    }
  }

  /**
   * Closes the connection: the output is half-closed (what was written is
   * sent) and, unless the process closed its side already, the call is
   * cancelled without waiting for it. Reads end at once: what was received
   * and not read is dropped.
   */
  @Override
  public void close() {
    if (closed) {
      return;
    }
    closed = true;
    shutdownOutput();
    if (!remoteClosed) {
      call.cancel("connection closed", null);
    }
  }

  private final class Input extends InputStream {
    private byte[] buf = new byte[0];
    private int pos;
    private boolean eof;

    /**
     * Makes buf hold unread bytes; false at the end of the stream, and
     * once the connection is closed (what was received and not read is
     * dropped).
     */
    private boolean fill() throws IOException {
      if (closed) {
        return false;
      }
      while (pos >= buf.length) {
        if (eof) {
          return false;
        }
        Item it;
        try {
          it = received.take();
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          throw new InterruptedIOException("interrupted while reading from the port");
        }
        if (it.error() != null) {
          eof = true;
          if (closed && it.error().getStatus().getCode() == Status.Code.CANCELLED) {
            return false;
          }
          throw new IOException(MagnetarException.wrap(it.error()));
        }
        if (it == Item.END) {
          eof = true;
          return false;
        }
        buf = it.data();
        pos = 0;
        if (!remoteClosed) {
          call.request(1);
        }
      }
      return true;
    }

    @Override
    public int read() throws IOException {
      if (!fill()) {
        return -1;
      }
      return buf[pos++] & 0xff;
    }

    @Override
    public int read(byte[] b, int off, int len) throws IOException {
      if (len == 0) {
        return 0;
      }
      if (!fill()) {
        return -1;
      }
      int n = Math.min(len, buf.length - pos);
      System.arraycopy(buf, pos, b, off, n);
      pos += n;
      return n;
    }

    @Override
    public int available() {
      return buf.length - pos;
    }

    @Override
    public void close() {
      PortConnection.this.close();
    }
  }

  private final class Output extends OutputStream {
    @Override
    public void write(int b) throws IOException {
      write(new byte[] {(byte) b}, 0, 1);
    }

    @Override
    public void write(byte[] b, int off, int len) throws IOException {
      for (int done = 0; done < len; ) {
        int n = Math.min(CHUNK, len - done);
        synchronized (sendLock) {
          // Back-pressure: wait until the transport takes more.
          // onReady and onClose notify under sendLock: no wakeup is lost.
          while (!outputShut && !call.isReady()) {
            try {
              sendLock.wait();
            } catch (InterruptedException e) {
              Thread.currentThread().interrupt();
              throw new InterruptedIOException("interrupted while writing to the port");
            }
          }
          if (outputShut) {
            throw new IOException("the connection is closed for writing");
          }
          call.sendMessage(DialPortRequest.newBuilder().setData(ByteString.copyFrom(b, off + done, n)).build());
        }
        done += n;
      }
    }

    @Override
    public void close() {
      shutdownOutput();
    }
  }
}
