package io.magnetar.client;

import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Map;

/** Options of {@link MagnetarClient#createSandbox}; every field is optional. */
public final class SandboxOptions {
  String id = "";
  String hostname = "";
  final Map<String, String> labels = new LinkedHashMap<>();
  final Map<String, String> annotations = new LinkedHashMap<>();
  Duration timeout;
  Duration idleTimeout;

  /** The sandbox ID; the sandboxer chooses one if unset. */
  public SandboxOptions id(String id) {
    this.id = id;
    return this;
  }

  /** The hostname inside the sandbox. */
  public SandboxOptions hostname(String hostname) {
    this.hostname = hostname;
    return this;
  }

  /** Adds labels (used to filter listings). */
  public SandboxOptions labels(Map<String, String> labels) {
    this.labels.putAll(labels);
    return this;
  }

  /** Adds annotations (free-form metadata). */
  public SandboxOptions annotations(Map<String, String> annotations) {
    this.annotations.putAll(annotations);
    return this;
  }

  /**
   * The sandbox's lifetime from its creation: at its end the sandboxer stops
   * and deletes it (event SANDBOX_EXPIRED, reason "deadline").
   */
  public SandboxOptions timeout(Duration timeout) {
    this.timeout = timeout;
    return this;
  }

  /**
   * How long the sandbox may stay idle (no call about it, no process in it)
   * before it is stopped and deleted (reason "idle").
   */
  public SandboxOptions idleTimeout(Duration idleTimeout) {
    this.idleTimeout = idleTimeout;
    return this;
  }

  static com.google.protobuf.Duration proto(Duration d) {
    if (d.isNegative()) {
      throw MagnetarException.invalidArgument("duration must not be negative: " + d);
    }
    return com.google.protobuf.Duration.newBuilder().setSeconds(d.getSeconds()).setNanos(d.getNano()).build();
  }
}
