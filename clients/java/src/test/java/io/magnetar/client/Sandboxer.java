package io.magnetar.client;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

/**
 * A private magnetar-sandboxer (direct mode) for the live tests: started from
 * the repository's .tmp/bin in a temporary directory and torn down after
 * (sandboxes deleted, daemon stopped, directory removed).
 */
final class Sandboxer implements AutoCloseable {
  /** clients/java -> repository root (Maven runs tests in the project directory). */
  static final Path REPO = Paths.get("").toAbsolutePath().getParent().getParent();
  static final Path BIN = Paths.get(env("MAGNETAR_BIN", REPO.resolve(".tmp/bin").toString()));
  static final Path EXAMPLES = Paths.get(env("MAGNETAR_EXAMPLES", REPO.resolve(".tmp/examples").toString()));
  static final Path HELLO_WASM_ARCHIVE = EXAMPLES.resolve("hello-wasm.oci.tar");
  static final Path BUSYBOX_ARCHIVE = EXAMPLES.resolve("busybox.oci.tar");
  /** The names the example archives import as (mk/examples.mk). */
  static final String HELLO_WASM = "docker.io/magnetar/hello-wasm:latest";
  static final String BUSYBOX = "docker.io/library/busybox:1.36";

  final Path dir;
  final Path socket;
  /** The remote listener (https://127.0.0.1:PORT) and the CA of its certificate. */
  final String remoteUrl;
  final Path caFile;
  /** The remote listener's tokens: tenants "a" and "b", and "admin". */
  final Map<String, String> tokens = Map.of("a", "token-of-tenant-a", "b", "token-of-tenant-b", "admin", "token-of-the-admin");
  private final java.lang.Process child;
  private final Path log;

  private static String env(String name, String def) {
    String v = System.getenv(name);
    return v == null || v.isEmpty() ? def : v;
  }

  /** Why the live tests cannot run here, or null. */
  static String skipReason() {
    String reason = null;
    if (!"root".equals(System.getProperty("user.name"))) {
      reason = "needs root (the runc kind, cgroups)";
    } else if (!Files.isExecutable(BIN.resolve("magnetar-sandboxer"))) {
      reason = "no " + BIN.resolve("magnetar-sandboxer") + " (run make build)";
    } else if (!Files.exists(HELLO_WASM_ARCHIVE) || !Files.exists(BUSYBOX_ARCHIVE)) {
      reason = "no example images in " + EXAMPLES + " (run make examples)";
    }
    if (reason != null && "1".equals(System.getenv("MAGNETAR_E2E_REQUIRED"))) {
      throw new IllegalStateException("MAGNETAR_E2E_REQUIRED=1 but the live tests cannot run: " + reason);
    }
    return reason;
  }

  Sandboxer() throws IOException, InterruptedException {
    // Under /tmp: unix socket paths are limited to 107 bytes.
    dir = Files.createTempDirectory(Paths.get("/tmp"), "mgjava-");
    socket = dir.resolve("run/api.sock");
    log = dir.resolve("sandboxer.log");
    Path tlsDir = dir.resolve("tls");
    makeCerts(tlsDir);
    caFile = tlsDir.resolve("ca.pem");
    StringBuilder tenants = new StringBuilder("version = 1\n");
    for (var t : new java.util.TreeMap<>(tokens).entrySet()) {
      tenants.append("[[tenant]]\nname = \"").append(t.getKey()).append("\"\n")
          .append(t.getKey().equals("admin") ? "admin = true\n" : "")
          .append("token_sha256 = [\"").append(sha256(t.getValue())).append("\"]\n");
    }
    Files.writeString(dir.resolve("tenants.toml"), tenants.toString());
    child = new ProcessBuilder(
            BIN.resolve("magnetar-sandboxer").toString(),
            "--state-dir", dir.resolve("state").toString(),
            "--run-dir", dir.resolve("run").toString(),
            "--listen", dir.resolve("run/sandboxer.sock").toString(),
            "--api-listen", socket.toString(),
            "--api-listen", "tcp://127.0.0.1:0",
            "--api-tls-cert", tlsDir.resolve("cert.pem").toString(),
            "--api-tls-key", tlsDir.resolve("key.pem").toString(),
            "--api-tenants", dir.resolve("tenants.toml").toString(),
            "--vm-guest-dir", dir.resolve("no-guest").toString())
        .redirectErrorStream(true)
        .redirectOutput(log.toFile())
        .start();
    // Wait for the socket (generous: the machine may be loaded).
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
    while (!Files.exists(socket) || remotePort() == null) {
      if (!child.isAlive()) {
        String tail = logTail();
        removeDir();
        throw new IllegalStateException("magnetar-sandboxer exited (" + child.exitValue() + "):\n" + tail);
      }
      if (System.nanoTime() > deadline) {
        child.destroyForcibly().waitFor(10, TimeUnit.SECONDS);
        String tail = logTail();
        removeDir();
        throw new IllegalStateException("no API socket after 120 s:\n" + tail);
      }
      Thread.sleep(100);
    }
    remoteUrl = "https://127.0.0.1:" + remotePort();
  }

  private String remotePort() throws IOException {
    java.util.regex.Matcher m = java.util.regex.Pattern
        .compile("serving Magnetar API to tenants.* listen=127\\.0\\.0\\.1:(\\d+)")
        .matcher(Files.readString(log));
    return m.find() ? m.group(1) : null;
  }

  private static String sha256(String s) {
    try {
      return java.util.HexFormat.of().formatHex(
          java.security.MessageDigest.getInstance("SHA-256").digest(s.getBytes(java.nio.charset.StandardCharsets.UTF_8)));
    } catch (java.security.NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
  }

  /** A CA and a server certificate for 127.0.0.1 it signed, valid a day (openssl). */
  private static void makeCerts(Path d) throws IOException, InterruptedException {
    Files.createDirectories(d);
    List<String> ec = List.of("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes");
    Files.writeString(d.resolve("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
    List<List<String>> cmds = List.of(
        concat(List.of("req", "-x509"), ec, List.of("-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=magnetar-test-ca", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")),
        concat(List.of("req"), ec, List.of("-keyout", "key.pem", "-out", "server.csr", "-subj", "/CN=127.0.0.1")),
        List.of("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "cert.pem", "-days", "1", "-extfile", "ext.cnf"));
    for (List<String> args : cmds) {
      List<String> cmd = concat(List.of("openssl"), args);
      java.lang.Process p = new ProcessBuilder(cmd).directory(d.toFile()).redirectErrorStream(true)
          .redirectOutput(d.resolve("openssl.log").toFile()).start();
      if (p.waitFor() != 0) {
        throw new IllegalStateException(String.join(" ", cmd) + " failed: " + Files.readString(d.resolve("openssl.log")));
      }
    }
  }

  @SafeVarargs
  private static List<String> concat(List<String>... parts) {
    List<String> out = new ArrayList<>();
    for (List<String> p : parts) {
      out.addAll(p);
    }
    return out;
  }

  String logTail() {
    try {
      List<String> lines = Files.readAllLines(log);
      return String.join("\n", lines.subList(Math.max(0, lines.size() - 30), lines.size()));
    } catch (IOException e) {
      return "(no log: " + e + ")";
    }
  }

  /** The mount points under dir (from /proc/self/mountinfo). */
  List<String> mountsUnder() throws IOException {
    List<String> out = new ArrayList<>();
    for (String line : Files.readAllLines(Paths.get("/proc/self/mountinfo"))) {
      String[] f = line.split(" ");
      if (f.length > 4 && (f[4].equals(dir.toString()) || f[4].startsWith(dir + "/"))) {
        out.add(f[4]);
      }
    }
    return out;
  }

  /** The pid of the supervisor's worker (its child run with --state-dir), 0 if none now. */
  long workerPid() {
    return child.toHandle().children()
        .filter(h -> h.info().arguments().map(a -> a.length > 0 && a[0].equals("--state-dir")).orElse(false))
        .mapToLong(ProcessHandle::pid)
        .findFirst()
        .orElse(0);
  }

  /** Waits (up to 60 s) for a worker other than old and returns its pid. */
  long newWorker(long old) throws InterruptedException {
    long deadline = System.nanoTime() + java.util.concurrent.TimeUnit.SECONDS.toNanos(60);
    for (;;) {
      long pid = workerPid();
      if (pid != 0 && pid != old) {
        return pid;
      }
      if (System.nanoTime() > deadline) {
        throw new IllegalStateException("no new worker after " + old + " within 60 s");
      }
      Thread.sleep(50); // poll interval
    }
  }

  private void removeDir() throws IOException {
    try (Stream<Path> walk = Files.walk(dir)) {
      for (Path p : walk.sorted(Comparator.reverseOrder()).toList()) {
        Files.deleteIfExists(p);
      }
    }
  }

  /** Deletes every sandbox, stops the daemon and removes its directory. */
  @Override
  public void close() throws IOException, InterruptedException {
    List<String> errors = new ArrayList<>();
    try (MagnetarClient c = MagnetarClient.dial(socket.toString())) {
      for (Sandbox sb : c.sandboxes(Map.of())) {
        try {
          sb.close();
        } catch (MagnetarException e) {
          errors.add("delete sandbox " + sb.id() + ": " + e);
        }
      }
    } catch (MagnetarException e) {
      errors.add("list sandboxes: " + e);
    }
    child.destroy(); // SIGTERM
    if (!child.waitFor(60, TimeUnit.SECONDS)) {
      child.destroyForcibly().waitFor(10, TimeUnit.SECONDS);
      errors.add("magnetar-sandboxer ignored SIGTERM for 60 s");
    }
    String tail = logTail();
    // Never recurse into a mount a failed teardown left behind.
    List<String> left = mountsUnder();
    if (!left.isEmpty()) {
      errors.add("mounts left under " + dir + ": " + left);
    } else {
      removeDir();
    }
    if (!errors.isEmpty()) {
      throw new IllegalStateException("teardown: " + String.join("; ", errors) + "\nsandboxer log:\n" + tail);
    }
  }
}
