package io.magnetar.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.grpc.Status;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

class DialTest {
  @Test
  void mapsTargets() {
    assertEquals("unix:///run/m/api.sock", MagnetarClient.grpcTarget("/run/m/api.sock"));
    assertEquals("unix:///run/m/api.sock", MagnetarClient.grpcTarget("unix:///run/m/api.sock"));
    assertEquals("dns:///127.0.0.1:8080", MagnetarClient.grpcTarget("http://127.0.0.1:8080"));
    assertEquals("dns:///example.com:443", MagnetarClient.grpcTarget("https://example.com"));
  }

  @Test
  void rejectsBadTargets() {
    for (String bad : new String[] {"", "relative/path", "ftp://x", "unix://host/path", "http://h:1/sub"}) {
      MagnetarException e = assertThrows(MagnetarException.class, () -> MagnetarClient.grpcTarget(bad), bad);
      assertEquals(Status.Code.INVALID_ARGUMENT, e.code(), bad);
    }
  }

  @Test
  void unreachableIsUnavailable() throws Exception {
    Path dir = Files.createTempDirectory("mgjava-");
    try (MagnetarClient c = MagnetarClient.dial(dir.resolve("none.sock").toString())) {
      MagnetarException e = assertThrows(MagnetarException.class, c::kinds);
      assertEquals(Status.Code.UNAVAILABLE, e.code());
    } finally {
      Files.delete(dir);
    }
  }
}
