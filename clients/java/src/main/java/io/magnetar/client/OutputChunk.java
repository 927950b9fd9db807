package io.magnetar.client;

/**
 * A piece of a process's output: stdout, or stderr if stderr is true.
 * offset is where data starts in the process's output (bytes of both
 * streams before it); {@code Process.output(offset + data.length)} goes on
 * after it.
 */
public record OutputChunk(boolean stderr, byte[] data, long offset) {
  /** A chunk without an offset (0). */
  public OutputChunk(boolean stderr, byte[] data) {
    this(stderr, data, 0);
  }
}
