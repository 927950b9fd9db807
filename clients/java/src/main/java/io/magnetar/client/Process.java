package io.magnetar.client;

import com.google.protobuf.ByteString;
import io.magnetar.container.v1.AttachOutputRequest;
import io.magnetar.container.v1.CloseStdinRequest;
import io.magnetar.container.v1.SignalProcessRequest;
import io.magnetar.container.v1.WaitProcessRequest;
import io.magnetar.container.v1.WriteStdinRequest;
import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;

/**
 * A process of a container: its main process (exec ID "") or an exec. The
 * sandboxer keeps output from the moment the process is created, so reading
 * it late loses nothing.
 */
public class Process {
  final MagnetarClient client;
  private final String containerId;
  private final String execId;

  Process(MagnetarClient client, String containerId, String execId) {
    this.client = client;
    this.containerId = containerId;
    this.execId = execId;
  }

  /** The container's ID. */
  public String containerId() {
    return containerId;
  }

  /** The exec ID; "" for the container's main process. */
  public String execId() {
    return execId;
  }

  /**
   * The process's output from the oldest byte the sandboxer kept (on disk,
   * the newest 1 MiB or so, since the process was created); the iteration
   * ends when the process has exited. Close it to stop reading early.
   */
  public Output output() {
    return new Output(client, AttachOutputRequest.newBuilder().setContainerId(containerId).setExecId(execId).build());
  }

  /**
   * The process's output from offset ({@link OutputChunk#offset()}); the
   * iteration ends when the process has exited. Output the sandboxer no
   * longer keeps fails with OUT_OF_RANGE.
   */
  public Output output(long offset) {
    return new Output(client, AttachOutputRequest.newBuilder().setContainerId(containerId).setExecId(execId)
        .setStartOffset(offset).build());
  }

  /**
   * The output the sandboxer kept of the process from its oldest byte up to
   * what the process had written when the call reached the sandboxer, then
   * the end: it does not wait for more ({@code magnetar logs} without -f).
   * Its {@link Output#exitStatus()} is set only if the process had exited.
   */
  public Output outputSoFar() {
    return new Output(client, AttachOutputRequest.newBuilder().setContainerId(containerId).setExecId(execId)
        .setFollow(false).build());
  }

  /** {@link #outputSoFar()} from offset ({@link OutputChunk#offset()}). */
  public Output outputSoFar(long offset) {
    return new Output(client, AttachOutputRequest.newBuilder().setContainerId(containerId).setExecId(execId)
        .setStartOffset(offset).setFollow(false).build());
  }

  /** Waits for the process to exit and returns its exit status. */
  public int waitExit() {
    return client.call(Api.WAIT_PROCESS,
        WaitProcessRequest.newBuilder().setContainerId(containerId).setExecId(execId).build()).getExitStatus();
  }

  /** Reads all output until the process exits. */
  public Result collect() {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    ByteArrayOutputStream err = new ByteArrayOutputStream();
    try (Output o = output()) {
      for (OutputChunk c : o) {
        (c.stderr() ? err : out).writeBytes(c.data());
      }
    }
    return new Result(out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8), waitExit());
  }

  /**
   * Writes to the process's stdin (it must have been created with stdin;
   * FAILED_PRECONDITION otherwise); eof closes stdin after the data. Returns
   * the number of bytes written.
   */
  public long writeStdin(byte[] data, boolean eof) {
    return client.call(Api.WRITE_STDIN, WriteStdinRequest.newBuilder()
        .setContainerId(containerId).setExecId(execId).setData(ByteString.copyFrom(data)).setEof(eof).build())
        .getBytesWritten();
  }

  /** Writes a UTF-8 string to stdin; see {@link #writeStdin(byte[], boolean)}. */
  public long writeStdin(String data) {
    return writeStdin(data.getBytes(StandardCharsets.UTF_8), false);
  }

  /** Closes the process's stdin (EOF). */
  public void closeStdin() {
    client.call(Api.CLOSE_STDIN, CloseStdinRequest.newBuilder().setContainerId(containerId).setExecId(execId).build());
  }

  /** Sends a signal (by number, e.g. 9 for SIGKILL) to the process. */
  public void signal(int signal) {
    client.call(Api.SIGNAL_PROCESS, SignalProcessRequest.newBuilder()
        .setContainerId(containerId).setExecId(execId).setSignal(signal).build());
  }

  /** All the output of a process and its exit status. */
  public record Result(String stdout, String stderr, int code) {}
}
