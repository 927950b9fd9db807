package io.magnetar.client;

import io.magnetar.container.v1.CreateContainerRequest;
import io.magnetar.container.v1.ProcessSpec;
import io.magnetar.sandbox.v1.DeleteSandboxRequest;
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
