package io.magnetar.client;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Listens on a loopback TCP port and forwards every connection to a unix
 * socket (the sandboxer serves only its socket). Closing it closes every
 * connection and joins its threads.
 */
final class Forwarder implements AutoCloseable {
  private final ServerSocket server;
  private final Path socket;
  private final List<Thread> threads = new ArrayList<>();
  private final List<AutoCloseable> conns = new ArrayList<>();
  private final Thread acceptor;

  Forwarder(Path socket) throws IOException {
    this.socket = socket;
    server = new ServerSocket(0, 16, InetAddress.getLoopbackAddress());
    acceptor = new Thread(this::accept, "forwarder-accept");
    acceptor.start();
  }

  /** The http:// URL of the forwarded socket. */
  String url() {
    return "http://127.0.0.1:" + server.getLocalPort();
  }

  private void accept() {
    while (true) {
      Socket down;
      try {
        down = server.accept();
      } catch (IOException e) {
        return; // closed
      }
      try {
        SocketChannel up = SocketChannel.open(UnixDomainSocketAddress.of(socket));
        synchronized (this) {
          conns.add(down);
          conns.add(up);
          // The channel's own read and write (not Channels streams, which
          // share one lock between reading and writing).
          InputStream fromDown = down.getInputStream();
          OutputStream toDown = down.getOutputStream();
          threads.add(pump(() -> {
            byte[] buf = new byte[32 * 1024];
            for (int n; (n = fromDown.read(buf)) >= 0; ) {
              ByteBuffer bb = ByteBuffer.wrap(buf, 0, n);
              while (bb.hasRemaining()) {
                up.write(bb);
              }
            }
          }, up, down));
          threads.add(pump(() -> {
            ByteBuffer bb = ByteBuffer.allocate(32 * 1024);
            while (up.read(bb) >= 0) {
              toDown.write(bb.array(), 0, bb.position());
              bb.clear();
            }
          }, down, up));
        }
      } catch (IOException e) {
        closeQuietly(down);
      }
    }
  }

  private interface Copy {
    void run() throws IOException;
  }

  private static Thread pump(Copy copy, AutoCloseable a, AutoCloseable b) {
    Thread t = new Thread(() -> {
      try {
        copy.run();
      } catch (IOException e) {
        // the other side went away
      } finally {
        closeQuietly(a);
        closeQuietly(b);
      }
    }, "forwarder-pump");
    t.start();
    return t;
  }

  private static void closeQuietly(AutoCloseable c) {
    try {
      c.close();
    } catch (Exception e) {
      // closing anyway
    }
  }

  @Override
  public void close() throws Exception {
    server.close();
    acceptor.join();
    List<Thread> ts;
    synchronized (this) {
      conns.forEach(Forwarder::closeQuietly);
      ts = new ArrayList<>(threads);
    }
    for (Thread t : ts) {
      t.join();
    }
  }
}
