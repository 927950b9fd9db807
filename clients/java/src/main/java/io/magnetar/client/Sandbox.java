package io.magnetar.client;

import io.magnetar.container.v1.CreateContainerRequest;
import io.magnetar.container.v1.ProcessSpec;
import io.magnetar.sandbox.v1.DeleteSandboxRequest;
import io.magnetar.sandbox.v1.GetSandboxUsageRequest;
import io.magnetar.sandbox.v1.PauseSandboxRequest;
import io.magnetar.sandbox.v1.ResumeSandboxRequest;
import io.magnetar.sandbox.v1.SandboxUsage;
import io.magnetar.sandbox.v1.SetSandboxTimeoutRequest;
import io.magnetar.sandbox.v1.WatchSandboxUsageRequest;
import java.time.Duration;
import io.magnetar.sandbox.v1.SandboxState;
import java.util.List;
import java.util.Map;

/**
 * A sandbox. Closing it deletes it with force (its containers are killed);
 * a sandbox that is already gone closes quietly.
 */
public final class Sandbox implements AutoCloseable {
  private final MagnetarClient client;
  private final io.magnetar.sandbox.v1.Sandbox info;

  Sandbox(MagnetarClient client, io.magnetar.sandbox.v1.Sandbox info) {
    this.client = client;
    this.info = info;
  }

  /** The sandbox ID. */
  public String id() {
    return info.getId();
  }

  /** The sandbox kind ("runc", "wasm", "vm"...). */
  public String kind() {
    return info.getKind();
  }

  /** The state when this handle was made. */
  public SandboxState state() {
    return info.getState();
  }

  /** The sandbox as the API returned it when this handle was made. */
  public io.magnetar.sandbox.v1.Sandbox info() {
    return info;
  }

  /** Creates a container in the sandbox without starting it. */
  public Container createContainer(ContainerOptions opts) {
    if (opts.image.isEmpty()) {
      throw MagnetarException.invalidArgument("a container needs an image");
    }
    ProcessSpec.Builder proc = ProcessSpec.newBuilder().addAllArgs(opts.args).setCwd(opts.cwd).setOpenStdin(opts.stdin);
    for (Map.Entry<String, String> e : opts.env.entrySet()) {
      proc.addEnv(e.getKey() + "=" + e.getValue());
    }
    CreateContainerRequest req = CreateContainerRequest.newBuilder()
        .setSandboxId(id())
        .setContainerId(opts.id)
        .setImage(opts.image)
        .setProcess(proc)
        .putAllLabels(opts.labels)
        .build();
    return new Container(client, client.call(Api.CREATE_CONTAINER, req).getContainer());
  }

  /**
   * Creates a container and starts it. If starting fails, the container is
   * deleted again. Its output is kept from the start: read
   * {@link Process#output()} at any time afterwards.
   */
  public Container run(ContainerOptions opts) {
    Container c = createContainer(opts);
    try {
      c.start();
    } catch (MagnetarException e) {
      try {
        c.delete(true);
      } catch (MagnetarException cleanup) {
        e.addSuppressed(cleanup);
      }
      throw e;
    }
    return c;
  }

  /**
   * Replaces the sandbox's lifetime, counted from now: it ends after timeout
   * and after idleTimeout of idleness. Both are replaced: a null or zero one
   * is removed. Returns the sandbox with its new expires_at and idle_timeout.
   */
  public io.magnetar.sandbox.v1.Sandbox setTimeout(Duration timeout, Duration idleTimeout) {
    SetSandboxTimeoutRequest.Builder req = SetSandboxTimeoutRequest.newBuilder().setSandboxId(id());
    if (timeout != null) {
      req.setTimeout(SandboxOptions.proto(timeout));
    }
    if (idleTimeout != null) {
      req.setIdleTimeout(SandboxOptions.proto(idleTimeout));
    }
    return client.call(Api.SET_SANDBOX_TIMEOUT, req.build()).getSandbox();
  }

  /** Freezes the sandbox's running containers (state PAUSED); returns the sandbox. */
  public io.magnetar.sandbox.v1.Sandbox pause() {
    return client.call(Api.PAUSE_SANDBOX, PauseSandboxRequest.newBuilder().setSandboxId(id()).build()).getSandbox();
  }

  /** Thaws the containers {@link #pause()} froze (state READY); returns the sandbox. */
  public io.magnetar.sandbox.v1.Sandbox resume() {
    return client.call(Api.RESUME_SANDBOX, ResumeSandboxRequest.newBuilder().setSandboxId(id()).build()).getSandbox();
  }

  /** What the sandbox uses now: CPU time, memory, pids, disk and network bytes. */
  public SandboxUsage usage() {
    return client.call(Api.GET_SANDBOX_USAGE, GetSandboxUsageRequest.newBuilder().setSandboxId(id()).build()).getUsage();
  }

  /**
   * The sandbox's usage every interval (the server enforces at least
   * 100 ms; null: 1 s), starting at once, until the stream is closed or the
   * sandbox is deleted (NOT_FOUND).
   */
  public UsageStream watchUsage(Duration interval) {
    WatchSandboxUsageRequest.Builder req = WatchSandboxUsageRequest.newBuilder().setSandboxId(id());
    if (interval != null) {
      req.setInterval(SandboxOptions.proto(interval));
    }
    return new UsageStream(client, req.build());
  }

  /**
   * Connects to TCP port (1 to 65535) on the sandbox's loopback (a server
   * that a process in the sandbox runs) through the sandboxer, and returns
   * the connection once made: a {@link PortConnection}, used like a
   * {@link java.net.Socket} (input and output streams, shutdownOutput to
   * half-close). Nothing listening on the port fails with UNAVAILABLE.
   * Connections are independent: open as many as needed.
   */
  public PortConnection dialPort(int port) {
    return PortConnection.dial(client, id(), port);
  }

  /** Lists the containers of the sandbox. */
  public List<Container> containers() {
    return client.containers(id());
  }

  /**
   * Deletes the sandbox. Without force it must have no running container
   * (FAILED_PRECONDITION otherwise); with force they are killed.
   */
  public void delete(boolean force) {
    client.call(Api.DELETE_SANDBOX, DeleteSandboxRequest.newBuilder().setSandboxId(id()).setForce(force).build());
  }

  /** Deletes the sandbox with force; does nothing if it is already gone. */
  @Override
  public void close() {
    try {
      delete(true);
    } catch (MagnetarException e) {
      if (!e.isNotFound()) {
        throw e;
      }
    }
  }
}
