package io.magnetar.client;

/** A piece of a process's output: stdout, or stderr if stderr is true. */
public record OutputChunk(boolean stderr, byte[] data) {}
