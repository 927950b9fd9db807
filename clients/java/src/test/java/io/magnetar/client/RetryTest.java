package io.magnetar.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.magnetar.container.v1.AttachOutputRequest;
import io.magnetar.container.v1.AttachOutputResponse;
import io.magnetar.container.v1.OutputChunk.Builder;
import io.magnetar.container.v1.ProcessExit;
import io.magnetar.sandbox.v1.Event;
import io.magnetar.sandbox.v1.WatchEventsRequest;
import io.magnetar.sandbox.v1.WatchEventsResponse;
import java.io.ByteArrayOutputStream;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;

/** Unit tests of the retries and stream resumption: no sandboxer needed. */
class RetryTest {
  private static StatusRuntimeException unavailable() {
    return new StatusRuntimeException(Status.UNAVAILABLE.withDescription("worker restarting"));
  }

  /** An iterator over items that throws err after them (null: ends). */
  private static <T> Iterator<T> failingAfter(List<T> items, StatusRuntimeException err) {
    Iterator<T> it = items.iterator();
    return new Iterator<>() {
      @Override
      public boolean hasNext() {
        if (it.hasNext()) {
          return true;
        }
        if (err != null) {
          throw err;
        }
        return false;
      }

      @Override
      public T next() {
        hasNext();
        return it.next();
      }
    };
  }

  private static AttachOutputResponse chunk(String data, long offset) {
    Builder c = io.magnetar.container.v1.OutputChunk.newBuilder().setData(ByteString.copyFromUtf8(data)).setOffset(offset);
    return AttachOutputResponse.newBuilder().setOutput(c).build();
  }

  @Test
  void backoffDoublesAndIsBounded() {
    long[] now = {0};
    Retry.Backoff b = new Retry.Backoff(Duration.ofSeconds(1), () -> now[0]);
    List<Long> delays = new ArrayList<>();
    for (long d = b.next(); d >= 0; d = b.next()) {
      delays.add(d / 1_000_000);
      now[0] += d;
    }
    assertEquals(List.of(50L, 100L, 200L, 400L), delays);
    assertEquals(-1, new Retry.Backoff(Duration.ZERO).next());
  }

  @Test
  void retriesOnlyCallsThatChangeNothing() {
    for (var m : List.of(Api.GET_SANDBOX, Api.LIST_SANDBOXES, Api.LIST_KINDS, Api.GET_SANDBOX_USAGE, Api.GET_CONTAINER,
        Api.LIST_CONTAINERS, Api.LIST_IMAGES, Api.WAIT_PROCESS, Api.CLOSE_STDIN, Api.SET_SANDBOX_TIMEOUT,
        Api.PAUSE_SANDBOX, Api.RESUME_SANDBOX)) {
      assertTrue(MagnetarClient.retryable(m), m.getFullMethodName());
    }
    for (var m : List.of(Api.CREATE_SANDBOX, Api.START_SANDBOX, Api.DELETE_SANDBOX, Api.CREATE_CONTAINER,
        Api.START_CONTAINER, Api.DELETE_CONTAINER, Api.EXEC_PROCESS, Api.SIGNAL_PROCESS, Api.WRITE_STDIN,
        Api.IMPORT_IMAGE)) {
      assertFalse(MagnetarClient.retryable(m), m.getFullMethodName());
    }
  }

  @Test
  void aBrokenConnectionIsTransient() {
    assertTrue(Retry.brokenConnection(new StatusRuntimeException(
        Status.UNKNOWN.withDescription("channel closed").withCause(new java.nio.channels.ClosedChannelException()))));
    assertFalse(Retry.brokenConnection(new StatusRuntimeException(Status.UNKNOWN.withDescription("from the server"))));
    AtomicInteger calls = new AtomicInteger();
    assertEquals("ok", Retry.call(Duration.ofSeconds(10), () -> {
      if (calls.incrementAndGet() < 2) {
        throw new StatusRuntimeException(
            Status.UNKNOWN.withDescription("channel closed").withCause(new java.nio.channels.ClosedChannelException()));
      }
      return "ok";
    }));
    assertEquals(2, calls.get());
  }

  @Test
  void retriesOnlyUnavailable() {
    AtomicInteger calls = new AtomicInteger();
    assertEquals("ok", Retry.call(Duration.ofSeconds(10), () -> {
      if (calls.incrementAndGet() < 3) {
        throw unavailable();
      }
      return "ok";
    }));
    assertEquals(3, calls.get());
    calls.set(0);
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> Retry.call(Duration.ofSeconds(10), () -> {
      calls.incrementAndGet();
      throw new StatusRuntimeException(Status.NOT_FOUND);
    }));
    assertEquals(Status.Code.NOT_FOUND, e.getStatus().getCode());
    assertEquals(1, calls.get());
  }

  @Test
  void outputResumesFromNextOffset() {
    List<AttachOutputRequest> requests = new ArrayList<>();
    Output.Opener open = req -> {
      requests.add(req);
      Iterator<AttachOutputResponse> it = switch (requests.size()) {
        case 1 -> failingAfter(List.of(chunk("ab", 0), chunk("cd", 2)), unavailable());
        case 2 -> failingAfter(List.of(), new StatusRuntimeException(Status.INTERNAL.withDescription("broken")));
        default -> failingAfter(List.of(chunk("ef", 4),
            AttachOutputResponse.newBuilder().setExit(ProcessExit.newBuilder().setExitStatus(7)).build()), null);
      };
      return new Output.Call(it, () -> {});
    };
    ByteArrayOutputStream got = new ByteArrayOutputStream();
    List<Long> offsets = new ArrayList<>();
    try (Output o = new Output(open, AttachOutputRequest.newBuilder().setContainerId("c").build(),
        new Retry.Backoff(Duration.ofSeconds(10)))) {
      for (OutputChunk c : o) {
        got.writeBytes(c.data());
        offsets.add(c.offset());
      }
      assertEquals(7, o.exitStatus());
    }
    assertEquals("abcdef", got.toString());
    assertEquals(List.of(0L, 2L, 4L), offsets);
    assertFalse(requests.get(0).hasStartOffset());
    assertEquals(4, requests.get(1).getStartOffset());
    assertEquals(4, requests.get(2).getStartOffset());
  }

  @Test
  void outputSoFarEndsWithTheStream() {
    List<AttachOutputRequest> requests = new ArrayList<>();
    Output.Opener open = req -> {
      requests.add(req);
      Iterator<AttachOutputResponse> it = requests.size() == 1
          ? failingAfter(List.of(chunk("ab", 0)), unavailable())
          : failingAfter(List.of(chunk("cd", 2)), null); // ends: no exit, not following
      return new Output.Call(it, () -> {});
    };
    ByteArrayOutputStream got = new ByteArrayOutputStream();
    try (Output o = new Output(open, AttachOutputRequest.newBuilder().setContainerId("c").setFollow(false).build(),
        new Retry.Backoff(Duration.ofSeconds(10)))) {
      for (OutputChunk c : o) {
        got.writeBytes(c.data());
      }
      assertEquals(null, o.exitStatus());
    }
    assertEquals("abcd", got.toString());
    assertEquals(2, requests.size());
    assertFalse(requests.get(1).getFollow());
    assertEquals(2, requests.get(1).getStartOffset());
  }

  @Test
  void usageStreamOpensAgainAfterABreak() {
    AtomicInteger opens = new AtomicInteger();
    java.util.function.Function<Long, io.magnetar.sandbox.v1.WatchSandboxUsageResponse> sample = ns ->
        io.magnetar.sandbox.v1.WatchSandboxUsageResponse.newBuilder()
            .setUsage(io.magnetar.sandbox.v1.SandboxUsage.newBuilder().setCpuUsageNs(ns)).build();
    UsageStream u = new UsageStream(() -> switch (opens.incrementAndGet()) {
      case 1 -> new UsageStream.Call(failingAfter(List.of(sample.apply(1L), sample.apply(2L)), unavailable()), () -> {});
      case 2 -> new UsageStream.Call(failingAfter(List.of(), null), () -> {}); // ended: opened again
      case 3 -> new UsageStream.Call(failingAfter(List.of(sample.apply(3L)), new StatusRuntimeException(Status.NOT_FOUND)),
          () -> {});
      default -> throw new AssertionError("opened too often");
    }, new Retry.Backoff(Duration.ofSeconds(10)));
    List<Long> got = new ArrayList<>();
    MagnetarException e = assertThrows(MagnetarException.class, () -> {
      for (var s : u) {
        got.add(s.getCpuUsageNs());
      }
    });
    assertEquals(Status.Code.NOT_FOUND, e.code());
    assertEquals(List.of(1L, 2L, 3L), got);
    assertEquals(3, opens.get());
  }

  @Test
  void outputDoesNotResumeOtherErrors() {
    Output.Opener open = req -> new Output.Call(
        failingAfter(List.of(), new StatusRuntimeException(Status.OUT_OF_RANGE)), () -> {});
    Output o = new Output(open, AttachOutputRequest.newBuilder().setContainerId("c").setStartOffset(3).build(),
        new Retry.Backoff(Duration.ofSeconds(10)));
    MagnetarException e = assertThrows(MagnetarException.class, () -> o.iterator().hasNext());
    assertEquals(Status.Code.OUT_OF_RANGE, e.code());
  }

  @Test
  void eventsResumeAfterHeaderThenLastSequence() {
    List<WatchEventsRequest> requests = new ArrayList<>();
    Events.Opener open = req -> {
      requests.add(req);
      long after = req.hasAfterSequence() ? req.getAfterSequence() : 10;
      Metadata h = new Metadata();
      h.put(Events.SEQUENCE_HEADER, Long.toString(after));
      List<WatchEventsResponse> evs = new ArrayList<>();
      int n = requests.size();
      for (long seq = after + 1; seq <= 14 && !(n == 1) && !(n == 2 && seq > after + 1); seq++) {
        evs.add(WatchEventsResponse.newBuilder().setEvent(Event.newBuilder().setSequence(seq)).build());
      }
      return new Events.Call(failingAfter(evs, n <= 2 ? unavailable() : null), new AtomicReference<>(h), () -> {});
    };
    List<Long> seqs = new ArrayList<>();
    try (Events events = new Events(open, WatchEventsRequest.newBuilder().addSandboxIds("sb").build(),
        new Retry.Backoff(Duration.ofSeconds(10)))) {
      for (Event ev : events) {
        seqs.add(ev.getSequence());
        if (ev.getSequence() == 14) {
          break;
        }
      }
    }
    assertEquals(List.of(11L, 12L, 13L, 14L), seqs);
    assertFalse(requests.get(0).hasAfterSequence());
    assertEquals(10, requests.get(1).getAfterSequence());
    assertEquals(11, requests.get(2).getAfterSequence());
    assertTrue(requests.stream().allMatch(r -> r.getSandboxIdsList().equals(List.of("sb"))));
  }
}
