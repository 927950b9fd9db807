package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cg1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	cg2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
)

// fakeClocks is a settable clock source for the detector.
type fakeClocks struct {
	mu    sync.Mutex
	s     clockSample
	reads atomic.Int64
}

func (f *fakeClocks) read() clockSample {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads.Add(1)
	return f.s
}

func (f *fakeClocks) advance(boot, mono, wall time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.s.Boot += boot
	f.s.Mono += mono
	f.s.Wall = f.s.Wall.Add(wall)
}

func TestClockDetector(t *testing.T) {
	f := &fakeClocks{s: clockSample{Boot: time.Hour, Mono: time.Hour, Wall: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	d := newClockDetector(f.read, 2*time.Second, 10*time.Minute)

	f.advance(5*time.Second, 5*time.Second, 5*time.Second)
	if r := d.check(); r != "" {
		t.Fatalf("clocks in step: reason %q, want none", r)
	}
	// Suspend: CLOCK_BOOTTIME and the wall clock advance, CLOCK_MONOTONIC
	// does not.
	f.advance(90*time.Second, 0, 90*time.Second)
	r := d.check()
	if !strings.Contains(r, "suspended for 1m30s") {
		t.Fatalf("after suspend: reason %q, want a suspend", r)
	}
	// Not synced yet (the guest was unreachable): still pending.
	f.advance(5*time.Second, 5*time.Second, 5*time.Second)
	if r2 := d.check(); r2 != r {
		t.Fatalf("pending reason %q, want %q kept until synced", r2, r)
	}
	d.synced()
	f.advance(5*time.Second, 5*time.Second, 5*time.Second)
	if r := d.check(); r != "" {
		t.Fatalf("after sync: reason %q, want none", r)
	}
	// The host wall clock is set back an hour.
	f.advance(5*time.Second, 5*time.Second, -time.Hour+5*time.Second)
	if r := d.check(); !strings.Contains(r, "wall clock jumped by -1h0m0s") {
		t.Fatalf("after a wall clock jump: reason %q", r)
	}
	d.synced()
	// Small jitter between the clocks is no jump.
	f.advance(5*time.Second, 5*time.Second-time.Second, 5*time.Second+time.Second)
	if r := d.check(); r != "" {
		t.Fatalf("jitter under the threshold: reason %q, want none", r)
	}
	// Periodic sync once the period passed since the last sync.
	for range 10 * 60 / 5 {
		f.advance(5*time.Second, 5*time.Second, 5*time.Second)
		if r := d.check(); r != "" {
			if r != "periodic" {
				t.Fatalf("reason %q, want periodic", r)
			}
			d.synced()
			return
		}
	}
	t.Fatal("no periodic sync within the period")
}

func TestReadClocks(t *testing.T) {
	a := readClocks()
	time.Sleep(10 * time.Millisecond)
	b := readClocks()
	if b.Mono <= a.Mono || b.Boot <= a.Boot || !b.Wall.After(a.Wall) {
		t.Fatalf("clocks did not advance: %+v then %+v", a, b)
	}
	d := newClockDetector(readClocks, clockJumpThreshold, time.Hour)
	if r := d.check(); r != "" {
		t.Fatalf("real clocks right after start: reason %q", r)
	}
}

func TestHealthPolicy(t *testing.T) {
	p := healthPolicy{limit: 3}
	for i, step := range []struct {
		ok, dead bool
	}{{false, false}, {false, false}, {true, false}, {false, false}, {false, false}, {false, true}} {
		if got := p.record(step.ok); got != step.dead {
			t.Fatalf("step %d (ok=%v): dead=%v, want %v", i, step.ok, got, step.dead)
		}
	}
}

// fakeAgent serves AgentService for the tests; mode chooses how Health
// answers: "ok", "fail" or "hang".
type fakeAgent struct {
	mode   atomic.Value
	health atomic.Int32
	syncs  atomic.Int32
	// streams are sent on each Events stream, one slice per stream (a
	// stream ends after its slice; later streams stay open).
	mu      sync.Mutex
	streams [][]*agentv1.EventsResponse
	opened  atomic.Int32
}

func (f *fakeAgent) Setup(context.Context, *agentv1.SetupRequest) (*agentv1.SetupResponse, error) {
	return &agentv1.SetupResponse{}, nil
}

func (f *fakeAgent) Health(ctx context.Context, _ *agentv1.HealthRequest) (*agentv1.HealthResponse, error) {
	f.health.Add(1)
	switch f.mode.Load() {
	case "fail":
		return nil, errgrpc.ToGRPC(fmt.Errorf("agent broken: %w", errdefs.ErrUnavailable))
	case "hang":
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &agentv1.HealthResponse{Version: "test", MemTotalBytes: 256 << 20, MemAvailableBytes: 200 << 20, Load1: 0.5}, nil
}

func (f *fakeAgent) Events(ctx context.Context, _ *agentv1.EventsRequest, st agentv1.TTRPCAgentService_EventsServer) error {
	f.opened.Add(1)
	f.mu.Lock()
	var evs []*agentv1.EventsResponse
	last := len(f.streams) <= 1
	if len(f.streams) > 0 {
		evs = f.streams[0]
		f.streams = f.streams[1:]
	}
	f.mu.Unlock()
	for _, ev := range evs {
		if err := st.Send(ev); err != nil {
			return err
		}
	}
	if !last {
		return errors.New("stream broken")
	}
	<-ctx.Done()
	return nil
}

func (f *fakeAgent) SyncClock(context.Context, *agentv1.SyncClockRequest) (*agentv1.SyncClockResponse, error) {
	f.syncs.Add(1)
	return &agentv1.SyncClockResponse{GuestTime: timestamppb.New(time.Now().Add(-time.Minute))}, nil
}

func (f *fakeAgent) Shutdown(context.Context, *agentv1.ShutdownRequest) (*agentv1.ShutdownResponse, error) {
	return &agentv1.ShutdownResponse{}, nil
}

// serveFake serves f over a real unix socket and returns a client.
func serveFake(t *testing.T, f *fakeAgent) agentv1.TTRPCAgentServiceClient {
	t.Helper()
	dir, err := os.MkdirTemp("", "vmmon")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := net.Listen("unix", filepath.Join(dir, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	agentv1.RegisterTTRPCAgentServiceService(srv, f)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(context.Background(), l) }()
	conn, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cl := ttrpc.NewClient(conn)
	t.Cleanup(func() {
		cl.Close()
		srv.Close()
		<-done
	})
	return agentv1.NewTTRPCAgentServiceClient(cl)
}

func runChecker(t *testing.T, f *fakeAgent, timeout time.Duration) (dead <-chan error, stop func()) {
	c := serveFake(t, f)
	deadc := make(chan error, 1)
	h := &healthChecker{
		client: func() agentv1.TTRPCAgentServiceClient { return c }, interval: 10 * time.Millisecond,
		timeout: timeout, policy: healthPolicy{limit: 3},
		onDead: func(err error) { deadc <- err },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.run(ctx) }()
	return deadc, func() { cancel(); <-done }
}

func TestHealthCheckerFailingAgent(t *testing.T) {
	f := &fakeAgent{}
	f.mode.Store("fail")
	dead, stop := runChecker(t, f, 10*time.Second)
	defer stop()
	select {
	case err := <-dead:
		if !strings.Contains(err.Error(), "3 health checks") || !strings.Contains(err.Error(), "agent broken") {
			t.Errorf("reason = %v", err)
		}
		if n := f.health.Load(); n != 3 {
			t.Errorf("%d pings before declaring death, want 3", n)
		}
	case <-time.After(time.Minute):
		t.Fatal("a failing agent was not declared dead")
	}
}

func TestHealthCheckerHangingAgent(t *testing.T) {
	f := &fakeAgent{}
	f.mode.Store("hang")
	dead, stop := runChecker(t, f, 50*time.Millisecond)
	defer stop()
	select {
	case err := <-dead:
		if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "deadline") {
			t.Errorf("reason = %v, want a timeout", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("a hanging agent was not declared dead")
	}
}

func TestHealthCheckerHealthyAgent(t *testing.T) {
	f := &fakeAgent{}
	f.mode.Store("ok")
	dead, stop := runChecker(t, f, 10*time.Second)
	testutil.Poll(time.Minute, func() bool { return f.health.Load() >= 20 })
	// Now break it: the healthy answers must not have counted.
	f.mode.Store("fail")
	before := f.health.Load()
	select {
	case <-dead:
		if n := f.health.Load() - before; n < 3 {
			t.Errorf("declared dead after %d failed pings, want 3", n)
		}
	case <-time.After(time.Minute):
		t.Fatal("not declared dead after the agent broke")
	}
	stop()
	if before < 20 {
		t.Fatalf("only %d pings in a minute", before)
	}
}

type sinkFunc func(sandboxID, containerID string)

func (f sinkFunc) OOM(sandboxID, containerID string) { f(sandboxID, containerID) }

func oomEv(cid string) *agentv1.EventsResponse {
	return &agentv1.EventsResponse{Timestamp: timestamppb.Now(), Event: &agentv1.EventsResponse_Oom{Oom: &agentv1.OOMEvent{ContainerId: cid}}}
}

func logEv(level int32, msg string) *agentv1.EventsResponse {
	return &agentv1.EventsResponse{Timestamp: timestamppb.Now(), Event: &agentv1.EventsResponse_Log{Log: &agentv1.LogLine{
		Level: level, Message: msg, Attrs: map[string]string{"k": "v"},
	}}}
}

// TestEventsStream streams OOM events from a fake agent over ttrpc; the
// first stream breaks and the sandbox subscribes again.
func TestEventsStream(t *testing.T) {
	f := &fakeAgent{streams: [][]*agentv1.EventsResponse{
		{oomEv("c1"), oomEv("unknown"), logEv(0, "info line"), logEv(4, "disk almost full")},
		{oomEv("c1")},
	}}
	c := serveFake(t, f)
	ooms := make(chan string, 10)
	s := newSandbox(&Backend{}, backend.SandboxConfig{ID: "sb", Events: sinkFunc(func(sb, cid string) { ooms <- sb + "/" + cid })})
	s.agent = c
	s.ctrs["c1"] = &container{s: s, id: "c1"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.runEvents(ctx) }()
	for i := range 2 {
		select {
		case got := <-ooms:
			if got != "sb/c1" {
				t.Fatalf("OOM %d for %q, want sb/c1", i, got)
			}
		case <-time.After(time.Minute):
			t.Fatalf("OOM %d not delivered (streams opened: %d)", i, f.opened.Load())
		}
	}
	cancel()
	<-done
	select {
	case got := <-ooms:
		t.Fatalf("unexpected OOM %q (unknown containers must be ignored)", got)
	default:
	}
	info := map[string]string{}
	s.mon.describe(info)
	if l := info["agent_log"]; !strings.Contains(l, `WARN disk almost full k="v"`) || strings.Contains(l, "info line") {
		t.Errorf("agent_log = %q, want the warning only", l)
	}
}

func TestLogLineBounded(t *testing.T) {
	l := formatLogLine(time.Now(), &agentv1.LogLine{Level: 8, Message: strings.Repeat("x", 1<<20), Attrs: map[string]string{"a": "b"}})
	if len(l) > maxLogLine+len("…") || !strings.HasSuffix(l, "…") {
		t.Fatalf("log line of %d bytes, want at most %d", len(l), maxLogLine)
	}
}

func TestLogRingBounded(t *testing.T) {
	r := logRing{max: 3}
	for i := range 5 {
		r.add(fmt.Sprint(i))
	}
	if got := strings.Join(r.lines, ","); got != "2,3,4" {
		t.Fatalf("ring = %s, want 2,3,4", got)
	}
}

func TestStatsFromAny(t *testing.T) {
	at := time.Now()
	a2, err := typeurl.MarshalAnyToProto(&cg2.Metrics{
		CPU:    &cg2.CPUStat{UsageUsec: 1500},
		Memory: &cg2.MemoryStat{Usage: 10 << 20, UsageLimit: 64 << 20, InactiveFile: 2 << 20},
		Pids:   &cg2.PidsStat{Current: 3},
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := statsFromAny(a2, at)
	if err != nil {
		t.Fatal(err)
	}
	if st.CPUUsageNanos != 1500_000 || st.MemoryUsageBytes != 10<<20 || st.MemoryLimitBytes != 64<<20 ||
		st.MemoryWorkingBytes != 8<<20 || st.Pids != 3 || !st.Timestamp.Equal(at) {
		t.Errorf("v2 stats = %+v", st)
	}
	if _, ok := st.Raw.(*cg2.Metrics); !ok {
		t.Errorf("Raw is %T, want the guest's *cg2.Metrics", st.Raw)
	}
	a1, err := typeurl.MarshalAnyToProto(&cg1.Metrics{
		CPU:    &cg1.CPUStat{Usage: &cg1.CPUUsage{Total: 7}},
		Memory: &cg1.MemoryStat{Usage: &cg1.MemoryEntry{Usage: 5, Limit: 9}},
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err = statsFromAny(a1, at)
	if err != nil || st.CPUUsageNanos != 7 || st.MemoryUsageBytes != 5 || st.MemoryLimitBytes != 9 {
		t.Errorf("v1 stats = %+v, %v", st, err)
	}
	other, _ := typeurl.MarshalAnyToProto(&agentv1.OOMEvent{ContainerId: "x"})
	if _, err := statsFromAny(other, at); err == nil {
		t.Error("stats of another type: no error")
	}
	if _, err := statsFromAny(nil, at); err == nil {
		t.Error("no stats: no error")
	}
}

func TestParseProc(t *testing.T) {
	stat := []byte("1234 (qemu) weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 200\n")
	ns, err := parseProcStatCPU(stat)
	if err != nil || ns != 300*uint64(time.Second/clockTicks) {
		t.Fatalf("cpu = %d, %v; want 3s", ns, err)
	}
	if _, err := parseProcStatCPU([]byte("garbage")); err == nil {
		t.Error("garbage stat: no error")
	}
	rss, threads := parseProcStatus([]byte("Name:\tqemu\nVmRSS:\t  2048 kB\nThreads:\t5\n"))
	if rss != 2<<20 || threads != 5 {
		t.Errorf("rss %d threads %d", rss, threads)
	}
	st, err := procUsage("/proc/self", time.Now())
	if err != nil || st.MemoryUsageBytes == 0 || st.Pids == 0 {
		t.Errorf("own usage = %+v, %v", st, err)
	}
	st, src, err := hostUsage(os.Getpid(), time.Now())
	if err != nil || st.MemoryUsageBytes == 0 || src == "" {
		t.Errorf("host usage of self = %+v (%s), %v", st, src, err)
	}
}

// TestMonitors runs the sandbox's goroutines against a fake agent: the
// clock keeper syncs after a (simulated) suspend, the health checker
// records guest memory, and a broken agent is declared dead.
func TestMonitors(t *testing.T) {
	f := &fakeAgent{}
	f.mode.Store("ok")
	c := serveFake(t, f)
	s := newSandbox(&Backend{cfg: Config{HealthInterval: 10 * time.Millisecond, HealthTimeout: 5 * time.Second, HealthFailures: 2}.withDefaults()}, backend.SandboxConfig{ID: "sb"})
	s.agent = c

	// Clock keeper with a fake clock that jumps like a suspend.
	fc := &fakeClocks{s: clockSample{Boot: time.Hour, Mono: time.Hour, Wall: time.Now()}}
	d := newClockDetector(fc.read, 2*time.Second, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.runClock(ctx, d, 10*time.Millisecond) }()
	// The observation: five ticks without a jump.
	testutil.Poll(time.Minute, func() bool { return fc.reads.Load() >= 6 })
	if n := f.syncs.Load(); n != 0 {
		t.Fatalf("%d syncs without a reason", n)
	}
	fc.advance(time.Minute, 0, time.Minute)
	// Wait until the keeper has recorded the sync, not only until the
	// agent saw it: cancelling while the call is in flight abandons it.
	testutil.Poll(time.Minute, func() bool {
		info := map[string]string{}
		s.mon.describe(info)
		return info["clock_syncs"] != "0" && info["clock_syncs"] != ""
	})
	cancel()
	<-done
	if n := f.syncs.Load(); n != 1 {
		t.Fatalf("%d syncs after one suspend, want 1", n)
	}
	info := map[string]string{}
	s.mon.describe(info)
	drift, _ := time.ParseDuration(info["clock_drift"])
	if info["clock_syncs"] != "1" || !strings.Contains(info["clock_sync_reason"], "suspended for 1m0s") || drift < 50*time.Second || drift > 70*time.Second {
		t.Errorf("clock info = %v", info)
	}

	// Health: the full monitor set, then the agent breaks.
	s.startMonitors()
	testutil.Poll(time.Minute, func() bool {
		info = map[string]string{}
		s.mon.describe(info)
		return info["guest_mem_total_bytes"] != ""
	})
	if info["guest_mem_total_bytes"] != fmt.Sprint(256<<20) || info["guest_load"] != "0.50 0.00 0.00" {
		t.Errorf("guest info = %v", info)
	}
	f.mode.Store("fail")
	testutil.Poll(time.Minute, func() bool {
		info = map[string]string{}
		s.mon.describe(info)
		return info["health"] != ""
	})
	if !strings.Contains(info["health"], "dead: agent failed 2 health checks") {
		t.Errorf("health = %q", info["health"])
	}
	s.stopMonitors()
	s.stopMonitors() // idempotent
}
