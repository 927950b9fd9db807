package supervisor

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
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

// TestHandoverRefusedWithOpenStreams: while a stream is bridged through
// the supervisor the handover is refused and nothing changes: the
// connection made before keeps being served.
func TestHandoverRefusedWithOpenStreams(t *testing.T) {
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
	r.hub.mu.Lock()
	r.hub.waiting["stdout"] = &sstream{} // a stream waiting for its bridge
	r.hub.mu.Unlock()
	conn, err := net.Dial("unix", task)
	if err != nil {
		t.Fatal(err)
	}
	client := taskapi.NewTTRPCTaskClient(ttrpc.NewClient(conn))
	defer conn.Close()
	if _, err := client.State(context.Background(), &taskapi.StateRequest{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if h, err := s.handOver(); !errors.Is(err, errStreamsOpen) || h != nil {
		t.Fatalf("handOver with a stream open = %v, %v; want refused", h, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := client.State(ctx, &taskapi.StateRequest{ID: "b"})
	if err != nil || st.ID != "w" {
		t.Fatalf("the connection after a refused handover: %v, %v", st, err)
	}
	if len(s.relays) != 1 {
		t.Errorf("relays after a refused handover: %d", len(s.relays))
	}
	r.hub.mu.Lock()
	delete(r.hub.waiting, "stdout") // a stand-in, not a stream to end
	r.hub.mu.Unlock()
}

// TestTCPListenerKeptAcrossWorkersAndHandover: a remote API listener asked
// for with port 0 keeps its port for every worker that asks again, and
// across a handover (connections made meanwhile wait in its backlog).
func TestTCPListenerKeptAcrossWorkersAndHandover(t *testing.T) {
	s := newTestSupervisor()
	const key = "tcp://127.0.0.1:0"
	f1, err := s.listener(key)
	if err != nil {
		t.Fatal(err)
	}
	l1, err := net.FileListener(f1)
	f1.Close()
	if err != nil {
		t.Fatal(err)
	}
	port := l1.Addr().(*net.TCPAddr).Port
	l1.Close() // the first worker goes
	c, err := net.Dial("tcp", l1.Addr().String())
	if err != nil {
		t.Fatalf("connect while no worker listens: %v", err)
	}
	c.Close()
	f2, err := s.listener(key)
	if err != nil {
		t.Fatal(err)
	}
	f2.Close()
	if p := s.tcp[key].Addr().(*net.TCPAddr).Port; p != port {
		t.Errorf("second worker's port %d, want %d", p, port)
	}
	for _, bad := range []string{"tcp://127.0.0.1", "tcp://"} {
		if _, err := s.listener(bad); err == nil {
			t.Errorf("listener %q accepted", bad)
		}
	}

	h, err := s.handOver()
	if err != nil {
		t.Fatal(err)
	}
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
	f3, err := s2.listener(key)
	if err != nil {
		t.Fatal(err)
	}
	l3, err := net.FileListener(f3)
	f3.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Close()
	if p := l3.Addr().(*net.TCPAddr).Port; p != port {
		t.Errorf("port after the handover %d, want %d", p, port)
	}
	c, err = net.Dial("tcp", l3.Addr().String())
	if err != nil {
		t.Fatalf("connect after the handover: %v", err)
	}
	defer c.Close()
	a, err := l3.Accept()
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
}
