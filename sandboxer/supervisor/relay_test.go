package supervisor

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/magnetar-io/magnetar/sdk/taskservice"
)

// fakeWorker is a fake task service standing for one sandboxer fakeWorker: Wait
// returns exitCode once exit is closed, Kill blocks until the test ends,
// State answers at once with its name.
type fakeWorker struct {
	taskapi.TTRPCTaskService // unimplemented methods panic: never called
	name                     string
	exitCode                 uint32
	exit                     chan struct{}
	killed                   chan struct{} // closed when Kill arrived
	waiting                  chan struct{} // closed when a Wait arrived
	waitOnce                 sync.Once
	killHook                 chan struct{} // when set, Kill returns once it is closed
	block                    bool          // Start blocks (see Start)
	started                  chan struct{} // closed when a blocking Start arrived
}

func (w *fakeWorker) Wait(ctx context.Context, req *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	w.waitOnce.Do(func() { close(w.waiting) })
	select {
	case <-w.exit:
		return &taskapi.WaitResponse{ExitStatus: w.exitCode}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (w *fakeWorker) Kill(ctx context.Context, req *taskapi.KillRequest) (*emptypb.Empty, error) {
	close(w.killed)
	if w.killHook != nil {
		select {
		case <-w.killHook:
			return &emptypb.Empty{}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// Start blocks until the connection ends if block is set (w.started
// closed on arrival); else it answers pid 7 to a replayed Start and
// FailedPrecondition to any other, as a worker whose process runs.
func (w *fakeWorker) Start(ctx context.Context, req *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	if w.block {
		close(w.started)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if v, ok := ttrpc.GetMetadataValue(ctx, replayedKey); !ok || v != "1" {
		return nil, errgrpc.ToGRPC(errdefs.ErrFailedPrecondition)
	}
	return &taskapi.StartResponse{Pid: 7}, nil
}

func (w *fakeWorker) State(ctx context.Context, req *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	if req.ID == "missing" {
		return nil, errgrpc.ToGRPC(errdefs.ErrNotFound)
	}
	return &taskapi.StateResponse{ID: w.name}, nil
}

// serveFakeWorker serves w on a backend socket in dir and returns the
// socket and a function that ends it as a crash would: every connection
// closes at once (ttrpc's Close keeps busy connections open).
func serveFakeWorker(t *testing.T, dir string, w *fakeWorker) (string, func()) {
	t.Helper()
	path := filepath.Join(dir, w.name+".sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	taskapi.RegisterTTRPCTaskService(srv, w)
	var mu sync.Mutex
	var conns []net.Conn
	go srv.Serve(context.Background(), &acceptHook{ln, func(c net.Conn) { mu.Lock(); conns = append(conns, c); mu.Unlock() }})
	crash := func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		srv.Close()
	}
	t.Cleanup(crash)
	return path, crash
}

// acceptHook reports every accepted connection.
type acceptHook struct {
	net.Listener
	hook func(net.Conn)
}

func (l *acceptHook) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.hook(c)
	}
	return c, err
}

func newFakeWorker(name string, code uint32) *fakeWorker {
	return &fakeWorker{name: name, exitCode: code, exit: make(chan struct{}), killed: make(chan struct{}), waiting: make(chan struct{}), started: make(chan struct{})}
}

// relayTo serves a relay on dir/task.sock in front of w and returns it, a
// Task API client through it and w's crash function (see serveFakeWorker).
func relayTo(t *testing.T, dir string, w *fakeWorker, opts ...ttrpc.ClientOpts) (*Relay, taskapi.TTRPCTaskService, func()) {
	t.Helper()
	relay, err := NewRelay(filepath.Join(dir, "task.sock"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	back, crash := serveFakeWorker(t, dir, w)
	relay.SetBackend(back)
	conn, err := net.Dial("unix", filepath.Join(dir, "task.sock"))
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn, opts...)
	t.Cleanup(func() { client.Close() })
	return relay, taskapi.NewTTRPCTaskClient(client), crash
}

// TestRelayOutlivesWorker: containerd's connection to a task socket stays
// open while the fakeWorker behind it goes away and a new one takes over; a
// Wait in flight is answered by the new fakeWorker, a Kill in flight fails
// with Unavailable, and a call made while no fakeWorker serves waits for the
// next one.
func TestRelayOutlivesWorker(t *testing.T) {
	dir := t.TempDir()
	w1 := newFakeWorker("w1", 1)
	var closed atomic.Bool
	relay, tasks, crash1 := relayTo(t, dir, w1, ttrpc.WithOnClose(func() { closed.Store(true) }))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if st, err := tasks.State(ctx, &taskapi.StateRequest{ID: "c1"}); err != nil || st.ID != "w1" {
		t.Fatalf("State through the relay = %v, %v", st, err)
	}
	if _, err := tasks.State(ctx, &taskapi.StateRequest{ID: "missing"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Fatalf("State(missing) = %v, want NotFound through the relay", err)
	}

	waitc := make(chan *taskapi.WaitResponse, 1)
	go func() {
		resp, err := tasks.Wait(ctx, &taskapi.WaitRequest{ID: "c1"})
		if err != nil {
			t.Errorf("Wait across the restart: %v", err)
		}
		waitc <- resp
	}()
	killc := make(chan error, 1)
	go func() {
		_, err := tasks.Kill(ctx, &taskapi.KillRequest{ID: "c1", Signal: 9})
		killc <- err
	}()
	<-w1.killed
	<-w1.waiting

	// The fakeWorker goes away (a crash closes its connections likewise).
	crash1()
	if err := <-killc; errgrpc.ToNative(err) == nil || !errdefs.IsUnavailable(errgrpc.ToNative(err)) {
		t.Fatalf("Kill in flight when the fakeWorker went away = %v, want Unavailable", err)
	}
	// A call while no fakeWorker serves waits for the next one.
	statec := make(chan string, 1)
	go func() {
		st, err := tasks.State(ctx, &taskapi.StateRequest{ID: "c1"})
		if err != nil {
			t.Errorf("State during the gap: %v", err)
		}
		statec <- st.GetID()
	}()

	w2 := newFakeWorker("w2", 42)
	back2, _ := serveFakeWorker(t, dir, w2)
	close(w2.exit)
	relay.SetBackend(back2)
	if got := <-statec; got != "w2" {
		t.Errorf("State made during the gap answered by %q, want w2", got)
	}
	if resp := <-waitc; resp.GetExitStatus() != 42 {
		t.Errorf("Wait across the restart = %v, want exit 42 from the new fakeWorker", resp)
	}
	if closed.Load() {
		t.Error("the client's connection closed")
	}
	if st, err := tasks.State(ctx, &taskapi.StateRequest{ID: "c1"}); err != nil || st.ID != "w2" {
		t.Errorf("State after the restart = %v, %v", st, err)
	}
}

// TestRelayReplaysStartMarked: a Start the lost worker had received goes
// to the next one marked as a replay, which answers it with the pid of the
// process already started; the client never sees the restart.
func TestRelayReplaysStartMarked(t *testing.T) {
	if replayedKey != taskservice.ReplayedMetadataKey {
		t.Fatalf("the relay marks replays %q, the task service looks for %q", replayedKey, taskservice.ReplayedMetadataKey)
	}
	dir := t.TempDir()
	w1 := newFakeWorker("w1", 0)
	w1.block = true
	relay, tasks, crash1 := relayTo(t, dir, w1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	startc := make(chan error, 1)
	var pid uint32
	go func() {
		resp, err := tasks.Start(ctx, &taskapi.StartRequest{ID: "c1", ExecID: "e1"})
		pid = resp.GetPid()
		startc <- err
	}()
	<-w1.started
	crash1()
	back2, _ := serveFakeWorker(t, dir, newFakeWorker("w2", 0))
	relay.SetBackend(back2)
	if err := <-startc; err != nil || pid != 7 {
		t.Fatalf("Start in flight when the worker went away = pid %d, %v; want pid 7 from the next worker", pid, err)
	}
	// A Start sent to a worker directly is not marked.
	if _, err := tasks.Start(ctx, &taskapi.StartRequest{ID: "c1", ExecID: "e1"}); !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
		t.Errorf("a Start that is no replay = %v, want it unmarked (FailedPrecondition)", err)
	}
}

// TestRelayClose: closing the relay closes client connections and removes
// the socket; a client that goes away closes its fakeWorker connection.
func TestRelayClose(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "task.sock")
	relay, err := NewRelay(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := newFakeWorker("w", 0)
	back, _ := serveFakeWorker(t, dir, w)
	relay.SetBackend(back)
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	client := ttrpc.NewClient(conn, ttrpc.WithOnClose(func() { close(done) }))
	defer client.Close()
	if _, err := taskapi.NewTTRPCTaskClient(client).State(context.Background(), &taskapi.StateRequest{ID: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := relay.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("client connection still open after Close")
	}
	if _, err := net.Dial("unix", path); err == nil {
		t.Error("socket still accepts after Close")
	}
}

// TestRelayDrain: during a planned handover, a Kill in flight is answered
// by the old worker (Drain waits for it), a call made meanwhile waits for
// the new worker, and a Wait in flight moves to the new worker.
func TestRelayDrain(t *testing.T) {
	dir := t.TempDir()
	w1 := newFakeWorker("w1", 1)
	release := make(chan struct{})
	w1.killHook = release
	relay, tasks, crash1 := relayTo(t, dir, w1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	waitc := make(chan uint32, 1)
	go func() {
		resp, err := tasks.Wait(ctx, &taskapi.WaitRequest{ID: "c1"})
		if err != nil {
			t.Errorf("Wait across the handover: %v", err)
		}
		waitc <- resp.GetExitStatus()
	}()
	killc := make(chan error, 1)
	go func() {
		_, err := tasks.Kill(ctx, &taskapi.KillRequest{ID: "c1", Signal: 15})
		killc <- err
	}()
	<-w1.killed
	<-w1.waiting
	relay.pause() // what Drain does first, here before the State below
	drained := make(chan error, 1)
	go func() { drained <- relay.Drain(ctx) }()
	statec := make(chan string, 1)
	go func() {
		st, err := tasks.State(ctx, &taskapi.StateRequest{ID: "c1"})
		if err != nil {
			t.Errorf("State during the handover: %v", err)
		}
		statec <- st.GetID()
	}()
	select {
	case err := <-drained:
		t.Fatalf("Drain returned (%v) while a Kill was in flight", err)
	case <-time.After(50 * time.Millisecond): // observation window: Drain must still wait
	}
	close(release)
	if err := <-killc; err != nil {
		t.Fatalf("Kill in flight during a drain = %v, want answered by the old worker", err)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	relay.ClearBackend()
	crash1()
	w2 := newFakeWorker("w2", 9)
	close(w2.exit)
	back2, _ := serveFakeWorker(t, dir, w2)
	relay.SetBackend(back2)
	if got := <-statec; got != "w2" {
		t.Errorf("State made during the handover answered by %q, want the new worker", got)
	}
	if got := <-waitc; got != 9 {
		t.Errorf("Wait across the handover = %d, want 9 from the new worker", got)
	}
}
