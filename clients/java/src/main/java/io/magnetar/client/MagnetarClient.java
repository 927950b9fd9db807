package io.magnetar.client;

import io.grpc.CallOptions;
import io.grpc.ChannelCredentials;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.MethodDescriptor;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.stub.ClientCalls;
import io.magnetar.container.v1.GetContainerRequest;
import io.magnetar.container.v1.ListContainersRequest;
import io.magnetar.image.v1.Image;
import io.magnetar.image.v1.ImportImageRequest;
import io.magnetar.image.v1.ImportImageResponse;
import io.magnetar.image.v1.ListImagesRequest;
import io.magnetar.sandbox.v1.CreateSandboxRequest;
import io.magnetar.sandbox.v1.DeleteSandboxRequest;
import io.magnetar.sandbox.v1.GetSandboxRequest;
import io.magnetar.sandbox.v1.Kind;
import io.magnetar.sandbox.v1.ListKindsRequest;
import io.magnetar.sandbox.v1.ListSandboxesRequest;
import io.magnetar.sandbox.v1.StartSandboxRequest;
import io.magnetar.sandbox.v1.WatchEventsRequest;
import java.net.URI;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;

/**
 * A connection to a Magnetar sandboxer's API (gRPC over its unix socket or a
 * URL). Thread-safe; close it when done.
 *
 * <pre>{@code
 * try (MagnetarClient c = MagnetarClient.dial("/run/magnetar/api.sock");
 *     Sandbox sb = c.createSandbox("wasm", new SandboxOptions())) {
 *   Container ctr = sb.run(new ContainerOptions().image("docker.io/magnetar/hello-wasm:latest"));
 *   System.out.print(ctr.collect().stdout());
 * }
 * }</pre>
 */
public final class MagnetarClient implements AutoCloseable {
  private final ManagedChannel channel;
  private final Duration timeout;
  private final Duration retryTimeout;

  private MagnetarClient(ManagedChannel channel, Duration timeout, Duration retryTimeout) {
    this.channel = channel;
    this.timeout = timeout;
    this.retryTimeout = retryTimeout;
  }

  /**
   * Connects to the sandboxer at target: a unix socket path
   * ({@code /run/magnetar/api.sock} or {@code unix:///run/magnetar/api.sock}),
   * or a URL ({@code http://host:port} in clear text, {@code https://host:port}
   * with the JVM's trusted certificates). Connecting is lazy: errors surface
   * on the first call as {@code UNAVAILABLE}.
   */
  public static MagnetarClient dial(String target) {
    return dial(target, null);
  }

  /**
   * Like {@link #dial(String)}, with the credentials for an {@code https://}
   * URL (for example {@code TlsChannelCredentials.newBuilder().trustManager(caFile)}).
   */
  public static MagnetarClient dial(String target, ChannelCredentials tls) {
    return new MagnetarClient(Grpc.newChannelBuilder(grpcTarget(target), credentials(target, tls)).build(), null,
        Retry.DEFAULT_TIMEOUT);
  }

  /**
   * Connects to a remote sandboxer's {@code https://host:port} listener as a
   * tenant: the server's certificate is checked against the CA certificates
   * of caFile (PEM; null: the JVM's trusted ones), and token (the tenant's
   * bearer token) is sent with every call. Tokens are refused over unix
   * sockets and clear text.
   */
  public static MagnetarClient dialRemote(String url, java.nio.file.Path caFile, String token) {
    if (url == null || !url.startsWith("https://")) {
      throw MagnetarException.invalidArgument("a remote sandboxer is dialed with an https:// URL, not " + url);
    }
    ChannelCredentials tls;
    if (caFile == null) {
      tls = TlsChannelCredentials.create();
    } else {
      try {
        tls = TlsChannelCredentials.newBuilder().trustManager(caFile.toFile()).build();
      } catch (java.io.IOException e) {
        throw MagnetarException.invalidArgument("read the CA file " + caFile + ": " + e.getMessage());
      }
    }
    ChannelCredentials creds = token == null ? tls : io.grpc.CompositeChannelCredentials.create(tls, new BearerToken(token));
    return new MagnetarClient(Grpc.newChannelBuilder(grpcTarget(url), creds).build(), null, Retry.DEFAULT_TIMEOUT);
  }

  /** Uses an existing channel (closed by {@link #close()}). */
  public static MagnetarClient of(ManagedChannel channel) {
    return new MagnetarClient(channel, null, Retry.DEFAULT_TIMEOUT);
  }

  /**
   * A client on the same channel whose calls (and the handles it returns)
   * fail with DEADLINE_EXCEEDED after timeout; output and event streams are
   * not limited. Closing either client closes the shared channel. Without
   * a timeout, calls wait as long as they take (interrupting the calling
   * thread cancels a call).
   */
  public MagnetarClient withTimeout(Duration timeout) {
    if (timeout.isNegative()) {
      throw MagnetarException.invalidArgument("negative timeout");
    }
    return new MagnetarClient(channel, timeout, retryTimeout);
  }

  /**
   * A client on the same channel that retries calls that change nothing
   * (getting and listing sandboxes, containers, images and kinds, waiting for
   * a process, closing its stdin), and resumes output and event streams from
   * where they broke off, for at most retryTimeout per outage while the
   * sandboxer is unavailable (it restarts: a crash of its worker, a live
   * upgrade), with a backoff from 50 ms doubling up to 1 s. Zero turns that
   * off. The default is 30 seconds.
   */
  public MagnetarClient withRetryTimeout(Duration retryTimeout) {
    if (retryTimeout.isNegative()) {
      throw MagnetarException.invalidArgument("negative retry timeout");
    }
    return new MagnetarClient(channel, timeout, retryTimeout);
  }

  Duration retryTimeout() {
    return retryTimeout;
  }

  private CallOptions callOptions() {
    return timeout == null ? CallOptions.DEFAULT : CallOptions.DEFAULT.withDeadlineAfter(timeout.toNanos(), TimeUnit.NANOSECONDS);
  }

  /** The grpc-java target name for a dial target. */
  static String grpcTarget(String target) {
    if (target == null || target.isEmpty()) {
      throw MagnetarException.invalidArgument("empty sandboxer address");
    }
    if (target.startsWith("/")) {
      return "unix://" + target;
    }
    URI u = URI.create(target);
    String scheme = u.getScheme() == null ? "" : u.getScheme();
    switch (scheme) {
      case "unix":
        if (u.getPath() == null || u.getPath().isEmpty() || (u.getAuthority() != null && !u.getAuthority().isEmpty())) {
          throw MagnetarException.invalidArgument("bad unix socket address " + target + " (want unix:///path)");
        }
        return "unix://" + u.getPath();
      case "http":
      case "https":
        if (u.getHost() == null) {
          throw MagnetarException.invalidArgument("no host in " + target);
        }
        if (u.getPath() != null && !u.getPath().isEmpty() && !u.getPath().equals("/")) {
          throw MagnetarException.invalidArgument("gRPC needs a URL without a path: " + target);
        }
        int port = u.getPort() != -1 ? u.getPort() : scheme.equals("https") ? 443 : 80;
        return "dns:///" + u.getHost() + ":" + port;
      default:
        throw MagnetarException.invalidArgument(
            "unsupported sandboxer address " + target + " (want a socket path, unix://, http:// or https://)");
    }
  }

  private static ChannelCredentials credentials(String target, ChannelCredentials tls) {
    if (target.startsWith("https://")) {
      return tls != null ? tls : TlsChannelCredentials.create();
    }
    return InsecureChannelCredentials.create();
  }

  /** The underlying channel, for calls this layer does not cover. */
  public ManagedChannel channel() {
    return channel;
  }

  /**
   * Whether a call of m is retried while the sandboxer is unavailable: the
   * calls the API marks free of side effects, and those whose repetition
   * changes nothing (the Go SDK's list, sdk/retry.go).
   */
  static boolean retryable(MethodDescriptor<?, ?> m) {
    return m.isSafe()
        || m == Api.WAIT_PROCESS
        || m == Api.CLOSE_STDIN
        // Sets a lifetime counted from the call: again is the same.
        || m == Api.SET_SANDBOX_TIMEOUT
        // Pausing a paused sandbox, or resuming a running one, changes nothing.
        || m == Api.PAUSE_SANDBOX
        || m == Api.RESUME_SANDBOX;
  }

  <Q, R> R call(MethodDescriptor<Q, R> m, Q req) {
    try {
      if (retryable(m)) {
        return Retry.call(retryTimeout, () -> ClientCalls.blockingUnaryCall(channel, m, callOptions(), req));
      }
      return ClientCalls.blockingUnaryCall(channel, m, callOptions(), req);
    } catch (StatusRuntimeException e) {
      throw MagnetarException.wrap(e);
    }
  }

  <Q, R> Iterator<R> stream(MethodDescriptor<Q, R> m, Q req) {
    try {
      return ClientCalls.blockingServerStreamingCall(channel, m, callOptions(), req);
    } catch (StatusRuntimeException e) {
      throw MagnetarException.wrap(e);
    }
  }

  /** Lists the sandbox kinds the sandboxer offers, available or not. */
  public List<Kind> kinds() {
    return call(Api.LIST_KINDS, ListKindsRequest.getDefaultInstance()).getKindsList();
  }

  /**
   * Creates a sandbox of the given kind ("runc", "wasm", "vm"...) and starts
   * it, so that it is ready for containers. If starting fails, the sandbox is
   * deleted again.
   */
  public Sandbox createSandbox(String kind, SandboxOptions opts) {
    if (kind == null || kind.isEmpty()) {
      throw MagnetarException.invalidArgument("sandbox kind is required");
    }
    CreateSandboxRequest.Builder req = CreateSandboxRequest.newBuilder()
        .setSandboxId(opts.id)
        .setKind(kind)
        .putAllLabels(opts.labels)
        .putAllAnnotations(opts.annotations)
        .setHostname(opts.hostname);
    if (opts.timeout != null) {
      req.setTimeout(SandboxOptions.proto(opts.timeout));
    }
    if (opts.idleTimeout != null) {
      req.setIdleTimeout(SandboxOptions.proto(opts.idleTimeout));
    }
    String id = call(Api.CREATE_SANDBOX, req.build()).getSandbox().getId();
    try {
      return new Sandbox(this, call(Api.START_SANDBOX, StartSandboxRequest.newBuilder().setSandboxId(id).build())
          .getSandbox());
    } catch (MagnetarException e) {
      try {
        ClientCalls.blockingUnaryCall(channel, Api.DELETE_SANDBOX,
            CallOptions.DEFAULT.withDeadlineAfter(60, TimeUnit.SECONDS),
            DeleteSandboxRequest.newBuilder().setSandboxId(id).setForce(true).build());
      } catch (StatusRuntimeException cleanup) {
        e.addSuppressed(cleanup);
      }
      throw e;
    }
  }

  /** Returns the sandbox with the given ID (NOT_FOUND if there is none). */
  public Sandbox sandbox(String id) {
    return new Sandbox(this, call(Api.GET_SANDBOX, GetSandboxRequest.newBuilder().setSandboxId(id).build()).getSandbox());
  }

  /** Lists the sandboxes that carry all the given labels (all for an empty map). */
  public List<Sandbox> sandboxes(Map<String, String> labels) {
    List<Sandbox> out = new ArrayList<>();
    for (var s : call(Api.LIST_SANDBOXES, ListSandboxesRequest.newBuilder().putAllLabels(labels).build()).getSandboxesList()) {
      out.add(new Sandbox(this, s));
    }
    return out;
  }

  /**
   * Watches the events of the given sandboxes (all sandboxes if none are
   * given) from now on. Close the returned stream to stop.
   */
  public Events events(String... sandboxIds) {
    return new Events(this, WatchEventsRequest.newBuilder().addAllSandboxIds(List.of(sandboxIds)).build());
  }

  /**
   * Watches the events of the given sandboxes (all if none are given): first
   * those the sandboxer kept after sequence number after ({@code
   * Event.getSequence()}; 0 for every event kept), then new ones. Events no
   * longer kept fail with OUT_OF_RANGE.
   */
  public Events eventsAfter(long after, String... sandboxIds) {
    return new Events(this, WatchEventsRequest.newBuilder().addAllSandboxIds(List.of(sandboxIds))
        .setAfterSequence(after).build());
  }

  /** Returns the container with the given ID (NOT_FOUND if there is none). */
  public Container container(String id) {
    return new Container(this, call(Api.GET_CONTAINER, GetContainerRequest.newBuilder().setContainerId(id).build())
        .getContainer());
  }

  /** The files of container containerId's root file system (see {@link Files}). */
  public Files files(String containerId) {
    return new Files(this, containerId);
  }

  List<Container> containers(String sandboxId) {
    List<Container> out = new ArrayList<>();
    for (var c : call(Api.LIST_CONTAINERS, ListContainersRequest.newBuilder().setSandboxId(sandboxId).build())
        .getContainersList()) {
      out.add(new Container(this, c));
    }
    return out;
  }

  /**
   * Imports the images of an OCI archive (a path on the sandboxer's host),
   * unpacked for use; progress, if not null, sees each progress report.
   * Returns the imported images.
   */
  public List<Image> importImage(Path archive, Consumer<io.magnetar.image.v1.Progress> progress) {
    ImportImageRequest req = ImportImageRequest.newBuilder()
        .setPath(archive.toAbsolutePath().toString()).setUnpack(true).build();
    List<Image> images = null;
    try {
      Iterator<ImportImageResponse> it = stream(Api.IMPORT_IMAGE, req);
      while (it.hasNext()) {
        ImportImageResponse res = it.next();
        if (res.hasProgress() && progress != null) {
          progress.accept(res.getProgress());
        } else if (res.hasImages()) {
          images = res.getImages().getImagesList();
        }
      }
    } catch (StatusRuntimeException e) {
      throw MagnetarException.wrap(e);
    }
    if (images == null) {
      throw new MagnetarException(io.grpc.Status.Code.INTERNAL, "import ended without a result", null);
    }
    return images;
  }

  /** Lists the images the sandboxer has. */
  public List<Image> images() {
    return call(Api.LIST_IMAGES, ListImagesRequest.getDefaultInstance()).getImagesList();
  }

  /** Closes the connection, waiting up to 10 s for calls in flight. */
  @Override
  public void close() {
    channel.shutdown();
    try {
      if (!channel.awaitTermination(10, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }
}
