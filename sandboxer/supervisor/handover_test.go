package supervisor

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/core/streaming"
	transferstreaming "github.com/containerd/containerd/v2/core/transfer/streaming"
	"github.com/containerd/ttrpc"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// stateRequest is a whole ttrpc request frame for Task.State on stream sid.
func stateRequest(t *testing.T, sid uint32, id string) []byte {
	t.Helper()
	payload, err := proto.Marshal(&taskapi.StateRequest{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	req, err := proto.Marshal(&ttrpc.Request{Service: "containerd.task.v3.Task", Method: "State", Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	f := make([]byte, headerLen+len(req))
	binary.BigEndian.PutUint32(f[:4], uint32(len(req)))
	binary.BigEndian.PutUint32(f[4:8], sid)
	f[8] = typeRequest
	copy(f[headerLen:], req)
	return f
}

func newTestSupervisor() *supervisor {
	return &supervisor{log: hclog.NewNullLogger(), reaper: newReaper(), fds: newFDStore(0), listeners: map[string]*net.UnixListener{}, relays: map[string]*Relay{}}
}

// TestHandoverKeepsConnections hands a supervisor's state to another one
// (what a re-exec does, in one process): containerd's task connection
// stays open with its Wait in flight, which the next worker answers; a
// frame the client had half sent when the handover came is completed and
// answered; the listener keeps its socket; the orphans' exit statuses
// carry over; the old objects removed no socket.
func TestHandoverKeepsConnections(t *testing.T) {
	dir := t.TempDir()
	task := filepath.Join(dir, "task.sock")
	api := filepath.Join(dir, "api.sock")
	s := newTestSupervisor()
	w1 := newFakeWorker("w1", 1)
	b1, crash1 := serveFakeWorker(t, dir, w1)
	if err := s.relay(task, b1); err != nil {
		t.Fatal(err)
	}
	lf, err := s.listener(api)
	if err != nil {
		t.Fatal(err)
	}
	lf.Close()
	s.reaper.restore([]exitRecord{{Pid: 1 << 30, Code: 7, At: time.Now().UTC()}})
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pipe[0])
	if err := s.fds.store("pty/c", pipe[1]); err != nil { // the store owns it
		t.Fatal(err)
	}

	conn, err := net.Dial("unix", task)
	if err != nil {
		t.Fatal(err)
	}
	client := taskapi.NewTTRPCTaskClient(ttrpc.NewClient(conn))
	waited := make(chan *taskapi.WaitResponse, 1)
	go func() {
		r, err := client.Wait(context.Background(), &taskapi.WaitRequest{ID: "c"})
		if err != nil {
			t.Errorf("Wait across the handover: %v", err)
		}
		waited <- r
	}()
	<-w1.waiting
	crash1() // the worker stops before a handover
	s.relays[task].ClearBackend()

	raw, err := net.Dial("unix", task)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	req := stateRequest(t, 1, "x")
	if _, err := raw.Write(req[:headerLen+3]); err != nil { // half a frame
		t.Fatal(err)
	}
	// The relay may or may not have read them when the handover begins:
	// either way they reach the next one (TestFrameReaderKeepsPartial).

	h, err := s.handOver()
	if err != nil {
		t.Fatalf("handOver: %v", err)
	}
	if _, err := os.Stat(task); err != nil {
		t.Fatalf("task socket removed by the handover: %v", err)
	}
	if _, err := os.Stat(api); err != nil {
		t.Fatalf("listener socket removed by the handover: %v", err)
	}
	// Through JSON, as across an exec.
	data, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var h2 Handover
	if err := json.Unmarshal(data, &h2); err != nil {
		t.Fatal(err)
	}
	s2 := newTestSupervisor()
	defer s2.reaper.close()
	defer s2.closeAll()
	defer s2.fds.closeAll()
	if err := s2.resume(&h2); err != nil {
		t.Fatalf("resume: %v", err)
	}

	if _, err := raw.Write(req[headerLen+3:]); err != nil {
		t.Fatal(err)
	}
	w2 := newFakeWorker("w2", 3)
	close(w2.exit)
	b2, _ := serveFakeWorker(t, dir, w2)
	s2.relays[task].SetBackend(b2)

	select {
	case r := <-waited:
		if r.GetExitStatus() != 3 {
			t.Errorf("Wait answered %v, want the next worker's exit 3", r)
		}
	case <-time.After(time.Minute):
		t.Fatal("the Wait in flight was not answered after the handover")
	}
	_ = raw.SetReadDeadline(time.Now().Add(time.Minute))
	f, err := readFrame(raw)
	if err != nil {
		t.Fatalf("response to the frame sent across the handover: %v", err)
	}
	var resp ttrpc.Response
	var st taskapi.StateResponse
	if err := proto.Unmarshal(f[headerLen:], &resp); err != nil || proto.Unmarshal(resp.Payload, &st) != nil || st.ID != "w2" {
		t.Errorf("State across the handover: %v %v (%v)", &resp, &st, err)
	}
	if c, err := net.Dial("unix", api); err != nil {
		t.Errorf("listener after the handover: %v", err)
	} else {
		c.Close()
	}
	if e, ok := s2.reaper.exitOf(1<<30, 0); !ok || e.Code != 7 {
		t.Errorf("orphan's exit after the handover: %v %v", e, ok)
	}
	// The stored descriptor is the same pipe.
	ents := s2.fds.entries()
	if len(ents) != 1 || ents[0].Name != "pty/c" {
		t.Fatalf("descriptor store after the handover: %v", ents)
	}
	if _, err := unix.Write(ents[0].FD, []byte("x")); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if n, err := unix.Read(pipe[0], b[:]); n != 1 || err != nil || b[0] != 'x' {
		t.Errorf("stored descriptor after the handover is not the pipe: %d %v", n, err)
	}
}

// TestFrameReaderKeepsPartial: a read interrupted in the middle of a
// frame (as a handover interrupts them) keeps the bytes read, and a reader
// given them completes the frame.
func TestFrameReaderKeepsPartial(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	req := stateRequest(t, 5, "partial")
	fr := frameReader{r: a}
	got := make(chan error, 1)
	go func() { _, err := fr.next(); got <- err }()
	if _, err := b.Write(req[:headerLen+4]); err != nil { // returns once read
		t.Fatal(err)
	}
	_ = a.SetReadDeadline(time.Now())
	if err := <-got; err == nil {
		t.Fatal("next returned a frame from half of one")
	}
	if len(fr.buf) != headerLen+4 {
		t.Fatalf("kept %d bytes of the half frame, want %d", len(fr.buf), headerLen+4)
	}
	_ = a.SetReadDeadline(time.Time{})
	next := frameReader{r: a, buf: fr.buf}
	go func() { _, _ = b.Write(req[headerLen+4:]) }()
	f, err := next.next()
	if err != nil || string(f) != string(req) {
		t.Fatalf("frame completed after the handover: %v, %q", err, f)
	}
}

// TestTakeHandoverBadInput: a handover that is not JSON, of another
// version or naming standard descriptors is refused with a clear error.
func TestTakeHandoverBadInput(t *testing.T) {
	for name, body := range map[string]string{
		"garbage":       "{not json",
		"other version": `{"version":99}`,
		"stdin as fd":   `{"version":1,"listeners":{"/x.sock":0}}`,
	} {
		fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.Write(fd, []byte(body)); err != nil {
			t.Fatal(err)
		}
		if _, err := unix.Seek(fd, 0, 0); err != nil {
			t.Fatal(err)
		}
		t.Setenv(EnvHandover, strconv.Itoa(fd))
		h, err := TakeHandover()
		if err == nil || h != nil {
			t.Errorf("%s: TakeHandover = %v, %v; want an error", name, h, err)
		} else if !strings.Contains(err.Error(), "handover") {
			t.Errorf("%s: error %q does not say what failed", name, err)
		}
	}
	t.Setenv(EnvHandover, "nope")
	if _, err := TakeHandover(); err == nil {
		t.Error("a handover variable that is no descriptor was accepted")
	}
}

// TestHandoverKeepsStreams hands a supervisor that bridges streamed
// stdio to another one (what a re-exec does, in one process) while a
// process's output flows, its input waits for it to read and another
// stream waits for its bridge: containerd's streams stay open, every byte
// reaches the other side once and in order, and the next worker finds the
// bridges listed.
func TestHandoverKeepsStreams(t *testing.T) {
	dir := t.TempDir()
	task := filepath.Join(dir, "task.sock")
	s := newTestSupervisor()
	w := newFakeWorker("w", 0)
	b, crash := serveFakeWorker(t, dir, w)
	if err := s.relay(task, b); err != nil {
		t.Fatal(err)
	}
	if err := s.relays[task].EnableStreams(filepath.Join(dir, "s")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dial := func(id string) streaming.Stream {
		st, c, err := dialStream(ctx, t, task, id)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return st
	}
	out, in, later := dial("c-stdout"), dial("c-stdin"), dial("d-stdout")
	bs, err := s.relays[task].hub.bridge([]Bridge{{ID: "c-stdin", Note: "c/0"}, {ID: "c-stdout", Out: true, Note: "c/1"}})
	if err != nil {
		t.Fatal(err)
	}

	// The process writes its output throughout; containerd reads it.
	stdout, err := os.OpenFile(bs[1].Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	r := transferstreaming.ReadByteStream(ctx, out)
	io.WriteString(stdout, lines(0, 100))
	readUntil(t, r, lines(0, 100))
	big := lines(100, 50000)
	wrote := make(chan error, 1)
	go func() { _, err := io.WriteString(stdout, big); wrote <- err }()
	// containerd writes input the process does not read yet: it waits
	// in the bridge (and for credit).
	payload := bytes.Repeat([]byte("0123456789"), 30000)
	sent := make(chan error, 1)
	go func() {
		wc := transferstreaming.WriteByteStream(ctx, in)
		_, err := wc.Write(payload)
		if err == nil {
			err = wc.Close()
		}
		sent <- err
	}()

	inBridge := s.relays[task].hub.bridges["c-stdin"]
	testutil.Eventually(t, time.Minute, func() bool {
		inBridge.mu.Lock()
		defer inBridge.mu.Unlock()
		return inBridge.queued >= streamWindow
	}, "the input fills the credit granted")

	crash() // the worker has stopped when a handover begins
	s.relays[task].ClearBackend()
	h, err := s.handOver()
	if err != nil {
		t.Fatalf("handOver with streams bridged: %v", err)
	}
	data, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var h2 Handover
	if err := json.Unmarshal(data, &h2); err != nil {
		t.Fatal(err)
	}
	// What was in flight is in the state: the input waiting for the
	// process, the output FIFO's open end, the stream waiting.
	if len(h2.Relays) != 1 || h2.Relays[0].Hub == nil {
		t.Fatalf("handover without the streams: %+v", h2.Relays)
	}
	hs := h2.Relays[0].Hub
	if len(hs.Bridges) != 2 || len(hs.Bridges[0].Queue) == 0 || hs.Bridges[0].Stream == nil || hs.Bridges[1].FD < 0 || hs.Bridges[1].Stream == nil {
		t.Fatalf("bridges handed over: %+v", hs.Bridges)
	}
	if len(hs.Waiting) != 1 || hs.Waiting[0].ID != "d-stdout" {
		t.Fatalf("waiting streams handed over: %+v", hs.Waiting)
	}
	s2 := newTestSupervisor()
	defer s2.reaper.close()
	defer s2.closeAll()
	defer s2.fds.closeAll()
	if err := s2.resume(&h2); err != nil {
		t.Fatalf("resume: %v", err)
	}

	readUntil(t, r, big)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		f, err := os.Open(bs[0].Path)
		if err != nil {
			got <- nil
			return
		}
		defer f.Close()
		data, _ := io.ReadAll(f)
		got <- data
	}()
	if err := <-sent; err != nil {
		t.Fatalf("input across the handover: %v", err)
	}
	if data := <-got; !bytes.Equal(data, payload) {
		t.Fatalf("the process read %d bytes, want the %d sent", len(data), len(payload))
	}
	// The process ends its output: the stream ends.
	stdout.Close()
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Fatalf("after the process's end: %q, %v; want end of stream", rest, err)
	}

	// The next worker finds the bridges, and bridges the waiting stream.
	host := s2.relays[task].streamHub()
	if list := host.list(""); len(list) != 2 || list[0].Note != "c/0" || list[1].Note != "c/1" {
		t.Fatalf("bridges after the handover: %+v", list)
	}
	bd, err := host.bridge([]Bridge{{ID: "d-stdout", Out: true}})
	if err != nil {
		t.Fatal(err)
	}
	rd := transferstreaming.ReadByteStream(ctx, later)
	dout, err := os.OpenFile(bd[0].Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(dout, "to the stream that waited\n")
	dout.Close()
	readUntil(t, rd, "to the stream that waited\n")
}

// TestHandoverRefusedWhenStreamsBusy: a bridge whose pump does not come to
// rest (here one that never parks) makes the handover give up after
// freezeTimeout and change nothing: the connection made before keeps being
// served, the bridge is thawed.
func TestHandoverRefusedWhenStreamsBusy(t *testing.T) {
	dir := t.TempDir()
	task := filepath.Join(dir, "task.sock")
	s := newTestSupervisor()
	defer s.reaper.close()
	defer s.closeAll()
	w := newFakeWorker("w", 0)
	b, _ := serveFakeWorker(t, dir, w)
	if err := s.relay(task, b); err != nil {
		t.Fatal(err)
	}
	r := s.relays[task]
	if err := r.EnableStreams(filepath.Join(dir, "s")); err != nil {
		t.Fatal(err)
	}
	stuck := newBridge(Bridge{ID: "stuck", Path: filepath.Join(dir, "s", "stuck")}, hclog.NewNullLogger())
	stuck.running = true // a pump that never parks
	r.hub.mu.Lock()
	r.hub.bridges["stuck"] = stuck
	r.hub.mu.Unlock()
	defer func() {
		r.hub.mu.Lock()
		delete(r.hub.bridges, "stuck") // a stand-in, not a bridge to remove
		r.hub.mu.Unlock()
	}()
	conn, err := net.Dial("unix", task)
	if err != nil {
		t.Fatal(err)
	}
	client := taskapi.NewTTRPCTaskClient(ttrpc.NewClient(conn))
	defer conn.Close()
	if _, err := client.State(context.Background(), &taskapi.StateRequest{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { freezeTimeout = d }(freezeTimeout)
	freezeTimeout = 50 * time.Millisecond
	if h, err := s.handOver(); !errors.Is(err, errStreamsBusy) || h != nil {
		t.Fatalf("handOver with a busy stream = %v, %v; want refused", h, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := client.State(ctx, &taskapi.StateRequest{ID: "b"})
	if err != nil || st.ID != "w" {
		t.Fatalf("the connection after a refused handover: %v, %v", st, err)
	}
	stuck.mu.Lock()
	frozen := stuck.frozen
	stuck.mu.Unlock()
	if frozen || r.hub.frozen || len(s.relays) != 1 {
		t.Errorf("after a refused handover: bridge frozen %v, hub frozen %v, %d relays", frozen, r.hub.frozen, len(s.relays))
	}
}
