package io.magnetar.client;

import com.google.protobuf.ByteString;
import io.grpc.CallOptions;
import io.grpc.ClientCall;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCalls;
import io.magnetar.file.v1.DownloadTarRequest;
import io.magnetar.file.v1.DownloadTarResponse;
import io.magnetar.file.v1.FileEvent;
import io.magnetar.file.v1.FileInfo;
import io.magnetar.file.v1.ListRequest;
import io.magnetar.file.v1.ListResponse;
import io.magnetar.file.v1.MakeDirRequest;
import io.magnetar.file.v1.ReadRequest;
import io.magnetar.file.v1.ReadResponse;
import io.magnetar.file.v1.RemoveRequest;
import io.magnetar.file.v1.RenameRequest;
import io.magnetar.file.v1.StatRequest;
import io.magnetar.file.v1.UploadTarHeader;
import io.magnetar.file.v1.UploadTarRequest;
import io.magnetar.file.v1.UploadTarResponse;
import io.magnetar.file.v1.WatchRequest;
import io.magnetar.file.v1.WatchResponse;
import io.magnetar.file.v1.WriteHeader;
import io.magnetar.file.v1.WriteMode;
import io.magnetar.file.v1.WriteRequest;
import io.magnetar.file.v1.WriteResponse;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.Iterator;
import java.util.List;
import java.util.NoSuchElementException;
import java.util.function.Function;

/**
 * The files of a container's root file system, through the sandboxer's
 * {@code magnetar.file.v1.FileService}: while the container runs and after
 * it exited, until it is deleted. Paths are absolute inside the container's
 * root ({@code "a/b"}, {@code "/a/b"} and {@code "/../a/b"} are the same);
 * links and {@code ..} never lead outside it. Get one with
 * {@link Container#files()} or {@link MagnetarClient#files(String)}.
 *
 * <p>Reads and tar downloads are {@link InputStream}s fed by the server
 * stream as they are read, writes and tar uploads send an
 * {@link InputStream} in messages of at most 1 MiB as the server takes
 * them: a large file never sits in memory. Errors are
 * {@link MagnetarException}s ({@code NOT_FOUND}, {@code INVALID_ARGUMENT},
 * {@code ALREADY_EXISTS}, {@code PERMISSION_DENIED},
 * {@code RESOURCE_EXHAUSTED}, {@code FAILED_PRECONDITION},
 * {@code UNIMPLEMENTED} for a kind whose files the sandboxer cannot reach);
 * an InputStream's read throws an {@link IOException} whose cause is one.
 */
public final class Files {
  /** The most one Write or UploadTar message carries. */
  static final int CHUNK = 1 << 20;

  private final MagnetarClient client;
  private final String containerId;

  Files(MagnetarClient client, String containerId) {
    this.client = client;
    this.containerId = containerId;
  }

  /** The container's ID. */
  public String containerId() {
    return containerId;
  }

  /** What a write does with an existing file. */
  public enum Mode {
    /** Replace its content (the default). */
    TRUNCATE,
    /** Add to its end. */
    APPEND,
    /** Fail with ALREADY_EXISTS. */
    CREATE_NEW
  }

  /** Options of {@link #write} and {@link #writeFile}. */
  public static final class WriteOptions {
    Mode mode = Mode.TRUNCATE;
    int permissions;
    boolean atomic;

    /** What to do with an existing file (default {@link Mode#TRUNCATE}). */
    public WriteOptions mode(Mode mode) {
      this.mode = mode;
      return this;
    }

    /** Permission bits of a new file (default 0644). */
    public WriteOptions permissions(int permissions) {
      this.permissions = permissions;
      return this;
    }

    /**
     * Write to a temporary file and rename it over the target once complete:
     * a write that fails or is cut leaves the old file.
     */
    public WriteOptions atomic(boolean atomic) {
      this.atomic = atomic;
      return this;
    }
  }

  /** A directory's entries and whether the limit cut the list. */
  public record Listing(List<FileInfo> entries, boolean truncated) {}

  /** Describes a path (a symbolic link is described, not followed). */
  public FileInfo stat(String path) {
    return client.call(Api.FILE_STAT, StatRequest.newBuilder().setContainerId(containerId).setPath(path).build())
        .getInfo();
  }

  /**
   * Lists a directory in lexical order, recursively if asked, at most limit
   * entries (0: the server's default, 1000).
   */
  public Listing list(String path, boolean recursive, int limit) {
    ListResponse res = client.call(Api.FILE_LIST, ListRequest.newBuilder().setContainerId(containerId).setPath(path)
        .setRecursive(recursive).setLimit(limit).build());
    return new Listing(res.getEntriesList(), res.getTruncated());
  }

  /** A regular file's content as a stream; close it to stop early. */
  public InputStream read(String path) {
    return read(path, 0, 0);
  }

  /** A regular file's bytes from offset, at most length of them (0: to its end). */
  public InputStream read(String path, long offset, long length) {
    if (offset < 0 || length < 0) {
      throw MagnetarException.invalidArgument("negative offset or length");
    }
    return new StreamInput<>(client, Api.FILE_READ, ReadRequest.newBuilder().setContainerId(containerId)
        .setPath(path).setOffset(offset).setLength(length).build(), ReadResponse::getData);
  }

  /** A regular file's whole content. */
  public byte[] readFile(String path) {
    try (InputStream in = read(path)) {
      return in.readAllBytes();
    } catch (IOException e) {
      throw unwrap(e);
    }
  }

  /** A UTF-8 file's whole content. */
  public String readString(String path) {
    return new String(readFile(path), StandardCharsets.UTF_8);
  }

  /** Writes a file from data (read to its end, streamed); returns the file written. */
  public FileInfo write(String path, InputStream data, WriteOptions opts) {
    if (opts == null) {
      opts = new WriteOptions();
    }
    WriteHeader header = WriteHeader.newBuilder().setContainerId(containerId).setPath(path)
        .setMode(switch (opts.mode) {
          case TRUNCATE -> WriteMode.WRITE_MODE_TRUNCATE;
          case APPEND -> WriteMode.WRITE_MODE_APPEND;
          case CREATE_NEW -> WriteMode.WRITE_MODE_CREATE_NEW;
        })
        .setPermissions(opts.permissions).setAtomic(opts.atomic).build();
    WriteResponse res = upload(Api.FILE_WRITE, data,
        chunk -> WriteRequest.newBuilder().setHeader(header).setData(chunk).build(),
        chunk -> WriteRequest.newBuilder().setData(chunk).build());
    return res.getInfo();
  }

  /** Writes a file with the given content; returns the file written. */
  public FileInfo writeFile(String path, byte[] data, WriteOptions opts) {
    return write(path, new ByteArrayInputStream(data), opts);
  }

  /** Writes a UTF-8 file with default options (truncate, 0644). */
  public FileInfo writeString(String path, String data) {
    return writeFile(path, data.getBytes(StandardCharsets.UTF_8), null);
  }

  /**
   * Creates a directory; with parents its missing parents too (and an
   * existing directory is fine). permissions 0: 0755.
   */
  public void mkdir(String path, boolean parents, int permissions) {
    client.call(Api.FILE_MAKE_DIR, MakeDirRequest.newBuilder().setContainerId(containerId).setPath(path)
        .setParents(parents).setPermissions(permissions).build());
  }

  /** Removes a path; a directory with everything under it if recursive (never the root). */
  public void remove(String path, boolean recursive) {
    client.call(Api.FILE_REMOVE, RemoveRequest.newBuilder().setContainerId(containerId).setPath(path)
        .setRecursive(recursive).build());
  }

  /** Renames a path (replacing a file at newPath). */
  public void rename(String oldPath, String newPath) {
    client.call(Api.FILE_RENAME, RenameRequest.newBuilder().setContainerId(containerId).setOldPath(oldPath)
        .setNewPath(newPath).build());
  }

  /**
   * Watches a directory (and, if recursive, the ones under it): returns once
   * the watch is in place, so that every later change is seen. Iterate the
   * changes; the iteration ends when the directory is removed or the watch
   * closed (from any thread).
   */
  public FileWatch watch(String path, boolean recursive) {
    return new FileWatch(client, WatchRequest.newBuilder().setContainerId(containerId).setPath(path)
        .setRecursive(recursive).build());
  }

  /** A directory (or file) as a PAX tar archive, streamed; close it to stop early. */
  public InputStream downloadTar(String path) {
    return new StreamInput<>(client, Api.FILE_DOWNLOAD_TAR,
        DownloadTarRequest.newBuilder().setContainerId(containerId).setPath(path).build(), DownloadTarResponse::getData);
  }

  /** Extracts a tar archive (read to its end, streamed) into a directory. */
  public UploadTarResponse uploadTar(String path, InputStream archive) {
    UploadTarHeader header = UploadTarHeader.newBuilder().setContainerId(containerId).setPath(path).build();
    return upload(Api.FILE_UPLOAD_TAR, archive,
        chunk -> UploadTarRequest.newBuilder().setHeader(header).setData(chunk).build(),
        chunk -> UploadTarRequest.newBuilder().setData(chunk).build());
  }

  /**
   * A client stream of m: the first message from first (with the header),
   * the next ones from rest, each with up to CHUNK bytes of data, sent as the
   * transport is ready for them; then the response.
   */
  private <Q, R> R upload(MethodDescriptor<Q, R> m, InputStream data, Function<ByteString, Q> first,
      Function<ByteString, Q> rest) {
    ClientStream<Q, R> s = new ClientStream<>(client, m);
    try {
      byte[] buf = new byte[CHUNK];
      boolean sent = false;
      while (true) {
        int n = data.readNBytes(buf, 0, CHUNK);
        if (n == 0 && sent) {
          break;
        }
        ByteString chunk = ByteString.copyFrom(buf, 0, n);
        s.send(sent ? rest.apply(chunk) : first.apply(chunk));
        sent = true;
        if (n < CHUNK) {
          break;
        }
      }
    } catch (IOException e) {
      s.cancel("reading the data failed", e);
      throw new MagnetarException(Status.Code.CANCELLED, "read the data to send: " + e.getMessage(), e);
    } catch (RuntimeException e) {
      s.cancel("sending failed", e);
      throw e;
    }
    return s.finish();
  }

  /** The MagnetarException an IOException of these streams carries, or one for it. */
  static MagnetarException unwrap(IOException e) {
    if (e.getCause() instanceof MagnetarException m) {
      return m;
    }
    return new MagnetarException(Status.Code.UNKNOWN, String.valueOf(e.getMessage()), e);
  }

  /**
   * One client-streaming call with flow control: send blocks until the
   * transport takes more, so that a fast producer does not fill memory.
   */
  static final class ClientStream<Q, R> {
    private final ClientCall<Q, R> call;
    private final Object lock = new Object();
    private R response; // guarded by lock
    private Status status; // guarded by lock; set once the call is over

    ClientStream(MagnetarClient client, MethodDescriptor<Q, R> m) {
      call = client.channel().newCall(m, CallOptions.DEFAULT);
      call.start(new ClientCall.Listener<R>() {
        @Override
        public void onMessage(R message) {
          synchronized (lock) {
            response = message;
          }
        }

        @Override
        public void onReady() {
          synchronized (lock) {
            lock.notifyAll();
          }
        }

        @Override
        public void onClose(Status s, Metadata trailers) {
          synchronized (lock) {
            status = s;
            lock.notifyAll();
          }
        }
      }, new Metadata());
      call.request(1);
    }

    /** Sends msg once the transport is ready; fails if the call is over (the server refused). */
    void send(Q msg) {
      synchronized (lock) {
        while (status == null && !call.isReady()) {
          waitLock();
        }
        if (status != null) {
          throw failure();
        }
      }
      call.sendMessage(msg);
    }

    /** Ends the stream and returns the response, or throws the call's error. */
    R finish() {
      call.halfClose();
      synchronized (lock) {
        while (status == null) {
          waitLock();
        }
        if (!status.isOk() || response == null) {
          throw failure();
        }
        return response;
      }
    }

    void cancel(String why, Throwable cause) {
      call.cancel(why, cause);
    }

    private MagnetarException failure() {
      Status s = status.isOk() ? Status.INTERNAL.withDescription("the call ended without a response") : status;
      return MagnetarException.wrap(s.asRuntimeException());
    }

    private void waitLock() {
      try {
        lock.wait();
      } catch (InterruptedException e) {
        call.cancel("interrupted", e);
        Thread.currentThread().interrupt();
        throw new MagnetarException(Status.Code.CANCELLED, "interrupted", e);
      }
    }
  }

  /**
   * An InputStream over a server stream of byte chunks, read as consumed
   * (grpc-java's blocking iterator asks for one message at a time).
   */
  static final class StreamInput<Q, R> extends InputStream {
    private final ClientCall<Q, R> call;
    private final Iterator<R> responses;
    private final Function<R, ByteString> data;
    private InputStream current = InputStream.nullInputStream();
    private boolean done;
    private volatile boolean closed;

    StreamInput(MagnetarClient client, MethodDescriptor<Q, R> m, Q req, Function<R, ByteString> data) {
      this.call = client.channel().newCall(m, CallOptions.DEFAULT);
      this.responses = ClientCalls.blockingServerStreamingCall(call, req);
      this.data = data;
    }

    /** Makes current a non-empty chunk; false at the end. */
    private boolean fill() throws IOException {
      while (!done && current.available() == 0) {
        if (closed) {
          throw new IOException("stream closed");
        }
        try {
          if (!responses.hasNext()) {
            done = true;
            return false;
          }
          current = data.apply(responses.next()).newInput();
        } catch (StatusRuntimeException e) {
          done = true;
          throw new IOException(e.getMessage(), MagnetarException.wrap(e));
        }
      }
      return !done;
    }

    @Override
    public int read() throws IOException {
      return fill() ? current.read() : -1;
    }

    @Override
    public int read(byte[] b, int off, int len) throws IOException {
      if (len == 0) {
        return 0;
      }
      return fill() ? current.read(b, off, len) : -1;
    }

    @Override
    public int available() throws IOException {
      return current.available();
    }

    /** Cancels the stream if it has not ended. */
    @Override
    public void close() {
      if (!closed) {
        closed = true;
        if (!done) {
          call.cancel("stream closed", null);
        }
      }
    }
  }

  /**
   * The changes under a watched directory (see {@link Files#watch}): iterate
   * once, close to stop.
   */
  public static final class FileWatch implements Iterable<FileEvent>, AutoCloseable {
    private final ClientCall<WatchRequest, WatchResponse> call;
    private final Iterator<WatchResponse> responses;
    private final ArrayDeque<FileEvent> pending = new ArrayDeque<>();
    private volatile boolean closed;
    private boolean iterated;
    private boolean done;

    FileWatch(MagnetarClient client, WatchRequest req) {
      call = client.channel().newCall(Api.FILE_WATCH, CallOptions.DEFAULT);
      responses = ClientCalls.blockingServerStreamingCall(call, req);
      // The first message says the watch is in place.
      try {
        if (!responses.hasNext()) {
          throw new MagnetarException(Status.Code.UNAVAILABLE, "watch " + req.getPath() + " ended before it started", null);
        }
        WatchResponse first = responses.next();
        pending.addAll(first.getEventsList());
        if (!first.getStarted()) {
          call.cancel("no start", null);
          throw new MagnetarException(Status.Code.INTERNAL, "watch " + req.getPath() + " did not start", null);
        }
      } catch (StatusRuntimeException e) {
        throw MagnetarException.wrap(e);
      }
    }

    private boolean advance() {
      while (pending.isEmpty() && !done) {
        try {
          if (!responses.hasNext()) {
            done = true;
            break;
          }
          pending.addAll(responses.next().getEventsList());
        } catch (StatusRuntimeException e) {
          done = true;
          if (closed && e.getStatus().getCode() == Status.Code.CANCELLED) {
            break;
          }
          throw MagnetarException.wrap(e);
        }
      }
      return !pending.isEmpty();
    }

    @Override
    public Iterator<FileEvent> iterator() {
      if (iterated) {
        throw new IllegalStateException("a FileWatch is iterated once");
      }
      iterated = true;
      return new Iterator<>() {
        @Override
        public boolean hasNext() {
          return advance();
        }

        @Override
        public FileEvent next() {
          if (!hasNext()) {
            throw new NoSuchElementException();
          }
          return pending.poll();
        }
      };
    }

    /** Stops watching. */
    @Override
    public void close() {
      closed = true;
      call.cancel("watch closed", null);
    }
  }
}
