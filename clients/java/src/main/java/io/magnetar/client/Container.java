package io.magnetar.client;

import io.magnetar.container.v1.DeleteContainerRequest;
import io.magnetar.container.v1.ExecProcessRequest;
import io.magnetar.container.v1.ProcessSpec;
import io.magnetar.container.v1.StartContainerRequest;
import java.util.List;

/** A container; as a {@link Process} it is the container's main process. */
public final class Container extends Process {
  private final io.magnetar.container.v1.Container info;

  Container(MagnetarClient client, io.magnetar.container.v1.Container info) {
    super(client, info.getId(), "");
    this.info = info;
  }

  /** The container ID. */
  public String id() {
    return info.getId();
  }

  /** The ID of the sandbox the container is in. */
  public String sandboxId() {
    return info.getSandboxId();
  }

  /** The container as the API returned it when this handle was made. */
  public io.magnetar.container.v1.Container info() {
    return info;
  }

  /** The files of the container's root file system (see {@link Files}). */
  public Files files() {
    return new Files(client, id());
  }

  /** Starts the container's main process; returns its PID (0 if the kind has none). */
  public int start() {
    return client.call(Api.START_CONTAINER, StartContainerRequest.newBuilder().setContainerId(id()).build()).getPid();
  }

  /**
   * Runs another process in the running container (UNIMPLEMENTED if the
   * kind cannot exec). execId may be "" to let the sandboxer choose.
   */
  public Process exec(String execId, List<String> args) {
    ExecProcessRequest req = ExecProcessRequest.newBuilder()
        .setContainerId(id())
        .setExecId(execId)
        .setProcess(ProcessSpec.newBuilder().addAllArgs(args))
        .build();
    return new Process(client, id(), client.call(Api.EXEC_PROCESS, req).getExecId());
  }

  /**
   * Deletes the container and returns its exit status. Without force it must
   * have exited (FAILED_PRECONDITION otherwise); with force it is killed.
   */
  public int delete(boolean force) {
    return client.call(Api.DELETE_CONTAINER, DeleteContainerRequest.newBuilder().setContainerId(id()).setForce(force).build())
        .getExitStatus();
  }
}
