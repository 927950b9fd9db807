package io.magnetar.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import io.magnetar.image.v1.Image;
import io.magnetar.sandbox.v1.Event;
import io.magnetar.sandbox.v1.EventType;
import io.magnetar.sandbox.v1.Kind;
import io.magnetar.sandbox.v1.SandboxState;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.TestMethodOrder;

/** Live tests: a real magnetar-sandboxer (direct mode) driven over its unix socket. */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class LiveTest {
  private static final Map<String, String> LABELS = Map.of("magnetar.test/client", "java");

  private Sandboxer daemon;
  private MagnetarClient client;

  @BeforeAll
  void start() throws Exception {
    String skip = Sandboxer.skipReason();
    Assumptions.assumeTrue(skip == null, skip);
    daemon = new Sandboxer();
    client = MagnetarClient.dial(daemon.socket.toString());
    List<Integer> phases = new ArrayList<>();
    List<Image> wasm = client.importImage(Sandboxer.HELLO_WASM_ARCHIVE, p -> phases.add(p.getPhaseValue()));
    assertEquals(List.of(Sandboxer.HELLO_WASM), wasm.stream().map(Image::getName).toList());
    assertFalse(phases.isEmpty(), "import reported no progress");
    List<Image> busybox = client.importImage(Sandboxer.BUSYBOX_ARCHIVE, null);
    assertEquals(List.of(Sandboxer.BUSYBOX), busybox.stream().map(Image::getName).toList());
    assertEquals(List.of(Sandboxer.BUSYBOX, Sandboxer.HELLO_WASM),
        client.images().stream().map(Image::getName).sorted().toList());
  }

  @AfterAll
  void stop() throws Exception {
    if (client != null) {
      client.close();
    }
    if (daemon != null) {
      daemon.close();
    }
  }

  private static String text(List<OutputChunk> chunks, boolean stderr) {
    StringBuilder sb = new StringBuilder();
    for (OutputChunk c : chunks) {
      if (c.stderr() == stderr) {
        sb.append(new String(c.data(), StandardCharsets.UTF_8));
      }
    }
    return sb.toString();
  }

  private static void assertMatches(String regex, String text) {
    assertTrue(Pattern.compile(regex, Pattern.MULTILINE).matcher(text).find(), "no /" + regex + "/ in:\n" + text);
  }

  @Test
  @Order(1)
  void listsTheKinds() {
    Map<String, Kind> kinds = client.kinds().stream().collect(Collectors.toMap(Kind::getName, k -> k));
    for (String name : List.of("runc", "wasm")) {
      Kind k = kinds.get(name);
      assertNotNull(k, "kind " + name + " missing from " + kinds.keySet());
      assertTrue(k.getAvailable(), name + ": " + k.getUnavailableReason());
    }
    assertTrue(kinds.get("wasm").getCapabilities().getStdin());
  }

  @Test
  @Order(2)
  void runsAWasmContainer() {
    try (Sandbox sb = client.createSandbox("wasm", new SandboxOptions().labels(LABELS))) {
      assertEquals("wasm", sb.kind());
      assertEquals(SandboxState.SANDBOX_STATE_READY, sb.state());
      Container ctr = sb.run(new ContainerOptions()
          .image(Sandboxer.HELLO_WASM)
          .args("-echo", "-exit", "3", "from", "java")
          .env(Map.of("GREETING", "hi"))
          .stdin(true));
      assertEquals(sb.id(), ctr.sandboxId());
      assertEquals(11, ctr.writeStdin("shout this\n"));
      ctr.writeStdin("and this\n".getBytes(StandardCharsets.UTF_8), true);

      List<OutputChunk> chunks = new ArrayList<>();
      Integer exit;
      try (Output out = ctr.output()) {
        out.forEach(chunks::add);
        exit = out.exitStatus();
      }
      String stdout = text(chunks, false);
      assertMatches("^Hello from WebAssembly! \\(wasip1/wasm\\)$", stdout);
      assertMatches("^args: from java$", stdout);
      assertMatches("^GREETING=hi$", stdout);
      assertMatches("^SHOUT THIS\nAND THIS$", stdout);
      assertEquals("exiting with 3\n", text(chunks, true));
      assertEquals(3, exit);
      assertEquals(3, ctr.waitExit());

      // Output is kept: a second reader sees it all again.
      Process.Result again = ctr.collect();
      assertEquals(stdout, again.stdout());
      assertEquals(3, again.code());
    }
  }

  @Test
  @Order(3)
  void pausesResumesMeasuresAndSetsTimeout() throws Exception {
    try (Sandbox sb = client.createSandbox("runc",
        new SandboxOptions().labels(LABELS).timeout(Duration.ofHours(1)).idleTimeout(Duration.ofMinutes(10)))) {
      assertTrue(sb.info().hasExpiresAt());
      assertEquals(600, sb.info().getIdleTimeout().getSeconds());
      io.magnetar.sandbox.v1.Sandbox got = sb.setTimeout(null, Duration.ofMinutes(5));
      assertFalse(got.hasExpiresAt());
      assertEquals(300, got.getIdleTimeout().getSeconds());
      sb.run(new ContainerOptions().image(Sandboxer.BUSYBOX).args("sh", "-c", "trap 'exit 0' TERM; while :; do :; done"));
      long u0 = sb.usage().getCpuUsageNs();
      assertTrue(sb.usage().getPids() >= 1);
      assertEquals(SandboxState.SANDBOX_STATE_PAUSED, sb.pause().getState());
      long p0 = sb.usage().getCpuUsageNs();
      Thread.sleep(500); // a measurement window
      long p1 = sb.usage().getCpuUsageNs();
      assertTrue(p1 - p0 < 50_000_000L, "paused sandbox used " + (p1 - p0) + " ns CPU in 0.5 s");
      assertEquals(SandboxState.SANDBOX_STATE_READY, sb.resume().getState());
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
      while (sb.usage().getCpuUsageNs() < Math.max(p1, u0) + 50_000_000L) {
        assertTrue(System.nanoTime() < deadline, "CPU did not grow after resume");
        Thread.sleep(50);
      }
    }
  }

  @Test
  @Order(3)
  void watchesUsage() {
    try (Sandbox sb = client.createSandbox("runc", new SandboxOptions().labels(LABELS))) {
      sb.run(new ContainerOptions().image(Sandboxer.BUSYBOX).args("sh", "-c", "trap 'exit 0' TERM; while :; do :; done"));
      List<io.magnetar.sandbox.v1.SandboxUsage> samples = new ArrayList<>();
      try (UsageStream usage = sb.watchUsage(Duration.ofMillis(100))) {
        for (io.magnetar.sandbox.v1.SandboxUsage u : usage) {
          samples.add(u);
          if (samples.size() == 3) {
            break;
          }
        }
      }
      assertEquals(3, samples.size());
      assertTrue(samples.get(2).getCpuUsageNs() > samples.get(0).getCpuUsageNs(), "CPU did not grow between samples");
      assertTrue(samples.get(0).getPids() >= 1);
    }
  }

  /** Dials port, retrying while nothing listens yet (for up to 30 s). */
  private static PortConnection dial(Sandbox sb, int port) throws InterruptedException {
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
    for (;;) {
      try {
        return sb.dialPort(port);
      } catch (MagnetarException e) {
        if (e.code() != Status.Code.UNAVAILABLE || System.nanoTime() > deadline) {
          throw e;
        }
        Thread.sleep(100); // a poll interval while nc starts
      }
    }
  }

  @Test
  @Order(3)
  void dialsAPortInASandbox() throws Exception {
    try (Sandbox sb = client.createSandbox("runc", new SandboxOptions().labels(LABELS))) {
      // An echo server, one connection at a time.
      sb.run(new ContainerOptions().image(Sandboxer.BUSYBOX).args("sh", "-c", "while :; do nc -l -p 8081 -e cat; done"));
      assertEquals(Status.Code.UNAVAILABLE, assertThrows(MagnetarException.class, () -> sb.dialPort(8082)).code());
      assertEquals(Status.Code.INVALID_ARGUMENT, assertThrows(MagnetarException.class, () -> sb.dialPort(70000)).code());

      // 1 MiB round trip, written from a thread while it is read back, then
      // a half-close: cat reads end of file, the rest comes back, then the
      // end of the stream.
      byte[] data = new byte[1 << 20];
      for (int i = 0; i < data.length; i++) {
        data[i] = (byte) (i * 7 + (i >> 13));
      }
      try (PortConnection conn = dial(sb, 8081)) {
        AtomicReference<Exception> writeErr = new AtomicReference<>();
        Thread writer = new Thread(() -> {
          try {
            conn.getOutputStream().write(data);
            conn.shutdownOutput();
          } catch (Exception e) {
            writeErr.set(e);
          }
        });
        writer.start();
        byte[] got = conn.getInputStream().readAllBytes();
        writer.join();
        assertEquals(null, writeErr.get());
        assertTrue(java.util.Arrays.equals(data, got), "1 MiB echo differs (" + got.length + " bytes back)");
      }
      // More connections, one after the other; closing the output stream
      // half-closes too.
      for (int i = 0; i < 3; i++) {
        try (PortConnection conn = dial(sb, 8081)) {
          String line = "line " + i + " for cat\n";
          try (var out = conn.getOutputStream()) {
            out.write(line.getBytes(StandardCharsets.UTF_8));
          }
          assertEquals(line, new String(conn.getInputStream().readAllBytes(), StandardCharsets.UTF_8));
        }
      }
      // Dropped before the end: nothing hangs, reads end.
      PortConnection conn = dial(sb, 8081);
      conn.getOutputStream().write("unfinished".getBytes(StandardCharsets.UTF_8));
      conn.close();
      assertEquals(-1, conn.getInputStream().read());
    }
  }

  @Test
  @Order(4)
  void streamsAndCallsSurviveAKillOfTheWorker() throws Exception {
    try (Sandbox sb = client.createSandbox("runc", new SandboxOptions().labels(LABELS))) {
      List<Event> events = Collections.synchronizedList(new ArrayList<>());
      AtomicReference<Throwable> watchErr = new AtomicReference<>();
      Events stream = client.eventsAfter(0, sb.id());
      Thread watcher = new Thread(() -> {
        try {
          for (Event ev : stream) {
            events.add(ev);
            if (ev.getType() == EventType.EVENT_TYPE_PROCESS_EXITED) {
              return;
            }
          }
        } catch (Throwable t) {
          watchErr.set(t);
        }
      });
      watcher.start();
      // Usage samples every 100 ms, across the restart.
      List<io.magnetar.sandbox.v1.SandboxUsage> samples = Collections.synchronizedList(new ArrayList<>());
      AtomicReference<Throwable> usageErr = new AtomicReference<>();
      UsageStream usage = sb.watchUsage(Duration.ofMillis(100));
      Thread sampler = new Thread(() -> {
        try {
          for (io.magnetar.sandbox.v1.SandboxUsage u : usage) {
            samples.add(u);
          }
        } catch (Throwable t) {
          usageErr.set(t);
        }
      });
      sampler.start();
      Container ctr = sb.run(new ContainerOptions().image(Sandboxer.BUSYBOX)
          .args("sh", "-c", "trap 'exit 7' TERM; i=0; while :; do echo $i; i=$((i+1)); sleep 0.02; done"));
      StringBuilder data = new StringBuilder();
      long next = 0;
      int phase = 0;
      long mark = 0;
      int usageMark = 0;
      try (Output out = ctr.output()) {
        for (OutputChunk c : out) {
          assertEquals(next, c.offset(), "a chunk out of place");
          next += c.data().length;
          data.append(new String(c.data(), StandardCharsets.UTF_8));
          long lines = data.chars().filter(ch -> ch == '\n').count();
          // 1500 lines: 30 s or more of output.
          assertTrue(phase != 1 || lines < mark + 1500, "usage samples stopped at " + samples.size() + " after the restart");
          if (phase == 0 && lines >= 20) {
            long old = daemon.workerPid();
            assertTrue(old > 0, "no worker");
            ProcessHandle.of(old).orElseThrow().destroyForcibly(); // SIGKILL
            // A call that changes nothing is retried through the gap.
            assertEquals(sb.id(), client.sandbox(sb.id()).id());
            daemon.newWorker(old);
            phase = 1;
            mark = lines;
            usageMark = samples.size();
          } else if (phase == 1 && lines >= mark + 20 && samples.size() >= usageMark + 3) {
            ctr.signal(15);
            phase = 2;
          }
        }
        assertEquals(7, out.exitStatus());
      }
      assertEquals(2, phase);
      String[] got = data.toString().split("\n");
      for (int i = 0; i < got.length; i++) {
        assertEquals(String.valueOf(i), got[i], "output lost or repeated across the restart");
      }
      watcher.join(TimeUnit.SECONDS.toMillis(60));
      stream.close();
      usage.close();
      sampler.join(TimeUnit.SECONDS.toMillis(60));
      assertEquals(null, watchErr.get());
      assertEquals(null, usageErr.get());
      List<Long> seqs = events.stream().map(Event::getSequence).toList();
      assertEquals(seqs.stream().distinct().sorted().toList(), seqs, "events out of order or repeated");
      assertEquals(EventType.EVENT_TYPE_PROCESS_EXITED, events.get(events.size() - 1).getType());
      assertEquals(7, events.get(events.size() - 1).getExitStatus());
    }
  }

  @Test
  @Order(3)
  void readsOutputWithoutFollowing() throws Exception {
    try (Sandbox sb = client.createSandbox("runc", new SandboxOptions().labels(LABELS))) {
      Container ctr = sb.run(new ContainerOptions().image(Sandboxer.BUSYBOX)
          .args("sh", "-c", "echo one; echo two >&2; read x; echo three").stdin(true));
      // Running: what it printed so far, then the end, no exit status.
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
      while (true) {
        List<OutputChunk> chunks = new ArrayList<>();
        Integer exit;
        try (Output out = ctr.outputSoFar()) {
          out.forEach(chunks::add);
          exit = out.exitStatus();
        }
        if (text(chunks, false).equals("one\n") && text(chunks, true).equals("two\n")) {
          assertEquals(null, exit);
          break;
        }
        assertTrue(System.nanoTime() < deadline, "output so far: " + text(chunks, false) + text(chunks, true));
        Thread.sleep(50);
      }
      ctr.writeStdin("go\n".getBytes(StandardCharsets.UTF_8), true);
      assertEquals(0, ctr.waitExit());
      // Exited: all of it and the exit status.
      List<OutputChunk> chunks = new ArrayList<>();
      try (Output out = ctr.outputSoFar()) {
        out.forEach(chunks::add);
        assertEquals(0, out.exitStatus());
      }
      assertEquals("one\nthree\n", text(chunks, false));
      // From an offset: the rest only.
      long at = chunks.get(0).offset() + chunks.get(0).data().length;
      StringBuilder rest = new StringBuilder();
      try (Output out = ctr.outputSoFar(at)) {
        out.forEach(c -> rest.append(new String(c.data(), StandardCharsets.UTF_8)));
      }
      StringBuilder after = new StringBuilder();
      for (OutputChunk c : chunks.subList(1, chunks.size())) {
        after.append(new String(c.data(), StandardCharsets.UTF_8));
      }
      assertEquals(after.toString(), rest.toString(), "output from offset " + at);
    }
  }

  /** A reproducible stream of n pseudo-random bytes, never held whole in memory. */
  private static java.io.InputStream patterned(long n) {
    return new java.io.InputStream() {
      private long left = n;
      private final java.util.Random r = new java.util.Random(7);

      @Override
      public int read() {
        byte[] b = new byte[1];
        return read(b, 0, 1) < 0 ? -1 : b[0] & 0xff;
      }

      @Override
      public int read(byte[] b, int off, int len) {
        if (left == 0) {
          return -1;
        }
        int k = (int) Math.min(len, left);
        byte[] chunk = new byte[k];
        r.nextBytes(chunk);
        System.arraycopy(chunk, 0, b, off, k);
        left -= k;
        return k;
      }
    };
  }

  private static byte[] sha256(java.io.InputStream in) throws Exception {
    java.security.MessageDigest md = java.security.MessageDigest.getInstance("SHA-256");
    try (in) {
      byte[] buf = new byte[64 << 10];
      for (int n; (n = in.read(buf)) > 0; ) {
        md.update(buf, 0, n);
      }
    }
    return md.digest();
  }

  @Test
  @Order(3)
  void readsWritesAndWatchesFiles() throws Exception {
    try (Sandbox sb = client.createSandbox("runc", new SandboxOptions().labels(LABELS))) {
      Container ctr = sb.run(new ContainerOptions().image(Sandboxer.BUSYBOX).args("sleep", "300"));
      io.magnetar.client.Files files = ctr.files();
      files.mkdir("/work/sub", true, 0);
      files.mkdir("/work/sub", true, 0); // parents: an existing directory is fine
      var info = files.writeString("/work/hello.txt", "hello from java\n");
      assertEquals(16, info.getSize());
      assertEquals(0644, info.getMode() & 0777);
      assertEquals("hello from java\n", files.readString("/work/hello.txt"));
      // The container sees it.
      assertEquals(new Process.Result("hello from java\n", "", 0), ctr.exec("", List.of("cat", "/work/hello.txt")).collect());
      // A range, an append, an exclusive create, an atomic replace.
      try (var in = files.read("/work/hello.txt", 6, 4)) {
        assertEquals("from", new String(in.readAllBytes(), StandardCharsets.UTF_8));
      }
      files.writeFile("/work/hello.txt", "again\n".getBytes(StandardCharsets.UTF_8),
          new io.magnetar.client.Files.WriteOptions().mode(io.magnetar.client.Files.Mode.APPEND));
      assertEquals("hello from java\nagain\n", files.readString("/work/hello.txt"));
      MagnetarException e = assertThrows(MagnetarException.class, () -> files.writeFile("/work/hello.txt", new byte[0],
          new io.magnetar.client.Files.WriteOptions().mode(io.magnetar.client.Files.Mode.CREATE_NEW)));
      assertEquals(Status.Code.ALREADY_EXISTS, e.code());
      files.writeFile("/work/run.sh", "#!/bin/sh\necho ran\n".getBytes(StandardCharsets.UTF_8),
          new io.magnetar.client.Files.WriteOptions().permissions(0755).atomic(true));
      assertEquals(new Process.Result("ran\n", "", 0), ctr.exec("", List.of("/work/run.sh")).collect());
      // A large file, streamed both ways and checked byte for byte.
      long big = 24L << 20;
      assertEquals(big, files.write("/work/sub/big", patterned(big), null).getSize());
      assertTrue(java.util.Arrays.equals(sha256(patterned(big)), sha256(files.read("/work/sub/big"))), "big file differs");
      // Stat, list (recursive, limited).
      assertEquals(io.magnetar.file.v1.FileType.FILE_TYPE_DIRECTORY, files.stat("/work/sub").getType());
      var all = files.list("/work", true, 0);
      assertEquals(List.of("/work/hello.txt", "/work/run.sh", "/work/sub", "/work/sub/big"),
          all.entries().stream().map(io.magnetar.file.v1.FileInfo::getPath).toList());
      assertFalse(all.truncated());
      assertTrue(files.list("/work", true, 2).truncated());
      // Watch: the container's writes are seen.
      try (var watch = files.watch("/work", true)) {
        ctr.exec("", List.of("sh", "-c", "echo x > /work/sub/new")).collect();
        boolean seen = false;
        for (var ev : watch) {
          if (ev.getPath().equals("/work/sub/new") && ev.getType() == io.magnetar.file.v1.FileEventType.FILE_EVENT_TYPE_CREATED) {
            seen = true;
            break;
          }
        }
        assertTrue(seen, "no created event for /work/sub/new");
      }
      // Rename, tar both ways, remove.
      files.rename("/work/sub/new", "/work/sub/renamed");
      assertEquals("x\n", files.readString("/work/sub/renamed"));
      files.remove("/work/sub/big", false);
      byte[] tar;
      try (var in = files.downloadTar("/work")) {
        tar = in.readAllBytes();
      }
      files.mkdir("/copy", false, 0);
      var up = files.uploadTar("/copy", new java.io.ByteArrayInputStream(tar));
      assertTrue(up.getEntries() >= 4, "entries " + up.getEntries());
      var copied = files.list("/copy", true, 0).entries().stream().map(io.magnetar.file.v1.FileInfo::getPath).toList();
      assertTrue(copied.stream().anyMatch(p -> p.endsWith("/sub/renamed")), "copied: " + copied);
      files.remove("/work", true);
      e = assertThrows(MagnetarException.class, () -> files.stat("/work"));
      assertEquals(Status.Code.NOT_FOUND, e.code());
      // Confined: a link out of the root resolves inside it (the image has
      // no /etc/shadow; the host has one).
      ctr.exec("", List.of("ln", "-s", "/../../../../etc/shadow", "/copy/escape")).collect();
      e = assertThrows(MagnetarException.class, () -> files.readFile("/copy/escape"));
      assertEquals(Status.Code.NOT_FOUND, e.code());
      e = assertThrows(MagnetarException.class, () -> client.files("no-such-container").stat("/"));
      assertEquals(Status.Code.NOT_FOUND, e.code());
    }
  }

  @Test
  @Order(3)
  void runsARuncContainerAndAnExec() {
    try (Sandbox sb = client.createSandbox("runc", new SandboxOptions().labels(LABELS).hostname("java-client"))) {
      Container ctr = sb.run(new ContainerOptions()
          .image(Sandboxer.BUSYBOX)
          .args("sh", "-c", "read line; echo \"got:$line\"; echo oops >&2; cat; exit 7")
          .stdin(true));
      ctr.writeStdin("first line\n");
      Process exec = ctr.exec("probe", List.of("sh", "-c", "echo exec:$(hostname)"));
      assertEquals("probe", exec.execId());
      assertEquals(new Process.Result("exec:java-client\n", "", 0), exec.collect());

      ctr.writeStdin("rest\n");
      ctr.closeStdin();
      assertEquals(new Process.Result("got:first line\nrest\n", "oops\n", 7), ctr.collect());
      assertEquals(7, ctr.delete(false));
    }
  }

  @Test
  @Order(4)
  void reportsErrorsWithTheirCodes() {
    MagnetarException e = assertThrows(MagnetarException.class, () -> client.sandbox("no-such-sandbox"));
    assertEquals(Status.Code.NOT_FOUND, e.code());
    assertTrue(e.isNotFound());
    e = assertThrows(MagnetarException.class,
        () -> client.createSandbox("runc", new SandboxOptions().id("../escape")));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
    e = assertThrows(MagnetarException.class, () -> client.createSandbox("no-such-kind", new SandboxOptions()));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
    // Deadlines: an expired one fails, a generous one does not.
    e = assertThrows(MagnetarException.class, () -> client.withTimeout(Duration.ZERO).kinds());
    assertEquals(Status.Code.DEADLINE_EXCEEDED, e.code());
    assertFalse(client.withTimeout(Duration.ofMinutes(5)).kinds().isEmpty());
    // Checked locally, before any call.
    e = assertThrows(MagnetarException.class, () -> client.createSandbox("", new SandboxOptions()));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code());

    // A running container is not deleted without force; stdin needs stdin(true).
    try (Sandbox sb = client.createSandbox("wasm", new SandboxOptions().labels(LABELS))) {
      Container ctr = sb.run(new ContainerOptions().image(Sandboxer.HELLO_WASM).args("-sleep", "60s"));
      e = assertThrows(MagnetarException.class, () -> ctr.writeStdin("x"));
      assertEquals(Status.Code.FAILED_PRECONDITION, e.code());
      e = assertThrows(MagnetarException.class, () -> ctr.delete(false));
      assertEquals(Status.Code.FAILED_PRECONDITION, e.code());
      ctr.signal(9);
      assertNotEquals(0, ctr.waitExit());
    }
  }

  @Test
  @Order(5)
  void streamsASandboxsEvents() throws Exception {
    String id = "events-java";
    List<Event> seen = Collections.synchronizedList(new ArrayList<>());
    AtomicReference<Throwable> failure = new AtomicReference<>();
    try (Events events = client.events(id)) {
      Thread watcher = new Thread(() -> {
        try {
          for (Event ev : events) {
            seen.add(ev);
            if (ev.getType() == EventType.EVENT_TYPE_SANDBOX_DELETED) {
              return;
            }
          }
        } catch (Throwable t) {
          failure.set(t);
        }
      }, "events-watcher");
      watcher.start();
      try {
        try (Sandbox sb = client.createSandbox("wasm", new SandboxOptions().id(id).labels(LABELS))) {
          sb.run(new ContainerOptions().image(Sandboxer.HELLO_WASM)).waitExit();
        }
        watcher.join(TimeUnit.SECONDS.toMillis(300)); // ends at SANDBOX_DELETED
      } finally {
        events.close();
        watcher.join();
      }
    }
    assertEquals(null, failure.get());
    assertFalse(seen.isEmpty());
    assertTrue(seen.stream().allMatch(ev -> ev.getSandboxId().equals(id)), seen.toString());
    assertEquals(EventType.EVENT_TYPE_SANDBOX_DELETED, seen.get(seen.size() - 1).getType());
  }

  @Test
  @Order(6)
  void deletesASandboxAndItIsGone() {
    Map<String, String> labels = Map.of("magnetar.test/client", "java", "gone", "yes");
    Sandbox sb = client.createSandbox("runc", new SandboxOptions().labels(labels));
    Container ctr = sb.run(new ContainerOptions().image(Sandboxer.BUSYBOX).args("sleep", "600"));
    assertEquals(List.of(sb.id()), client.sandboxes(labels).stream().map(Sandbox::id).toList());
    assertEquals(List.of(ctr.id()), sb.containers().stream().map(Container::id).toList());

    sb.delete(true);
    assertEquals(Status.Code.NOT_FOUND, assertThrows(MagnetarException.class, () -> client.sandbox(sb.id())).code());
    assertEquals(Status.Code.NOT_FOUND, assertThrows(MagnetarException.class, () -> client.container(ctr.id())).code());
    assertEquals(List.of(), client.sandboxes(labels));
    sb.close(); // already gone: quiet
  }

  @Test
  @Order(7)
  void dialsAnHttpUrl() throws Exception {
    try (Forwarder fwd = new Forwarder(daemon.socket);
        MagnetarClient c = MagnetarClient.dial(fwd.url());
        Sandbox sb = c.createSandbox("wasm", new SandboxOptions().labels(LABELS))) {
      assertTrue(c.kinds().stream().anyMatch(k -> k.getName().equals("wasm")));
      Process.Result res = sb.run(new ContainerOptions().image(Sandboxer.HELLO_WASM).args("via", "http")).collect();
      assertMatches("^args: via http$", res.stdout());
      assertEquals(0, res.code());
      sb.delete(true);
      assertTrue(assertThrows(MagnetarException.class, () -> c.sandbox(sb.id())).isNotFound());
    }
  }

  @Test
  @Order(8)
  void theReadmeExampleRuns() throws Exception {
    String readme = Files.readString(Path.of("README.md"));
    Matcher m = Pattern.compile("`Example\\.java`:\n\n```java\n(.*?)```", Pattern.DOTALL).matcher(readme);
    assertTrue(m.find(), "no Example.java block in README.md");
    Path file = Path.of("target", "readme-example", "Example.java");
    Files.createDirectories(file.getParent());
    Files.writeString(file, m.group(1));
    String cp = System.getProperty("surefire.test.class.path", System.getProperty("java.class.path"));
    ProcessBuilder pb = new ProcessBuilder(
        Path.of(System.getProperty("java.home"), "bin", "java").toString(), "-cp", cp, file.toString())
        .redirectErrorStream(true);
    pb.environment().put("MAGNETAR_ADDRESS", "unix://" + daemon.socket);
    java.lang.Process p = pb.start();
    String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    assertTrue(p.waitFor(300, TimeUnit.SECONDS), "example still running:\n" + out);
    assertEquals(0, p.exitValue(), out);
    assertMatches("^wasm available$", out);
    assertMatches("^args: from java$", out);
    assertMatches("^SHOUT THIS$", out);
    assertMatches("^exit code 0$", out);
    assertMatches("^no such sandbox$", out);
  }

  @Test
  @Order(8)
  void remoteTenants() {
    try (MagnetarClient admin = MagnetarClient.dialRemote(daemon.remoteUrl, daemon.caFile, daemon.tokens.get("admin"));
        MagnetarClient a = MagnetarClient.dialRemote(daemon.remoteUrl, daemon.caFile, daemon.tokens.get("a"));
        MagnetarClient b = MagnetarClient.dialRemote(daemon.remoteUrl, daemon.caFile, daemon.tokens.get("b"));
        MagnetarClient anonymous = MagnetarClient.dialRemote(daemon.remoteUrl, daemon.caFile, null).withRetryTimeout(Duration.ZERO);
        MagnetarClient untrusting = MagnetarClient.dialRemote(daemon.remoteUrl, null, daemon.tokens.get("a")).withRetryTimeout(Duration.ZERO)) {
      // The admin token runs a container from an image of the host.
      try (Sandbox sb = admin.createSandbox("wasm", new SandboxOptions().labels(LABELS))) {
        String out = sb.run(new ContainerOptions().image(Sandboxer.HELLO_WASM).args("via", "remote")).collect().stdout();
        assertMatches("^args: via remote$", out);
      }
      MagnetarException e = assertThrows(MagnetarException.class, anonymous::kinds);
      assertEquals(Status.Code.UNAUTHENTICATED, e.code());
      assertThrows(MagnetarException.class, untrusting::kinds);
      // Tenant B's sandbox does not exist for tenant A.
      try (Sandbox sbB = b.createSandbox("wasm", new SandboxOptions()); Sandbox sbA = a.createSandbox("wasm", new SandboxOptions())) {
        assertEquals("a", sbA.info().getLabelsMap().get("magnetar.io/tenant"));
        MagnetarException nf = assertThrows(MagnetarException.class, () -> a.sandbox(sbB.id()));
        assertEquals(Status.Code.NOT_FOUND, nf.code());
        assertEquals(List.of(sbA.id()), a.sandboxes(Map.of()).stream().map(Sandbox::id).toList());
      }
    }
    assertThrows(MagnetarException.class, () -> MagnetarClient.dialRemote("http://127.0.0.1:1", null, "t"));
  }

  @Test
  @Order(9)
  void leavesNoSandboxBehind() {
    assertEquals(List.of(), client.sandboxes(Map.of()).stream().map(Sandbox::id).toList());
  }
}
