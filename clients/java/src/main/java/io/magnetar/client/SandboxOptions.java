package io.magnetar.client;

import java.util.LinkedHashMap;
import java.util.Map;

/** Options of {@link MagnetarClient#createSandbox}; every field is optional. */
public final class SandboxOptions {
  String id = "";
  String hostname = "";
  final Map<String, String> labels = new LinkedHashMap<>();
  final Map<String, String> annotations = new LinkedHashMap<>();

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
}
