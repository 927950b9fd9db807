package io.magnetar.client;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Options of {@link Sandbox#run} and {@link Sandbox#createContainer}; image is required. */
public final class ContainerOptions {
  String id = "";
  String image = "";
  String cwd = "";
  boolean stdin;
  final List<String> args = new ArrayList<>();
  final Map<String, String> env = new LinkedHashMap<>();
  final Map<String, String> labels = new LinkedHashMap<>();

  /** The container ID; the sandboxer chooses one if unset. */
  public ContainerOptions id(String id) {
    this.id = id;
    return this;
  }

  /** The image (imported or pulled before) the container runs. */
  public ContainerOptions image(String image) {
    this.image = image;
    return this;
  }

  /** The arguments, replacing the image's command. */
  public ContainerOptions args(String... args) {
    this.args.addAll(List.of(args));
    return this;
  }

  /** Adds environment variables to the image's. */
  public ContainerOptions env(Map<String, String> env) {
    this.env.putAll(env);
    return this;
  }

  /** The working directory. */
  public ContainerOptions cwd(String cwd) {
    this.cwd = cwd;
    return this;
  }

  /** Keeps stdin open for {@link Process#writeStdin}. */
  public ContainerOptions stdin(boolean stdin) {
    this.stdin = stdin;
    return this;
  }

  /** Adds labels. */
  public ContainerOptions labels(Map<String, String> labels) {
    this.labels.putAll(labels);
    return this;
  }
}
