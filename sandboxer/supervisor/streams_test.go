package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/core/streaming"
	"github.com/containerd/containerd/v2/core/streaming/proxy"
	transferstreaming "github.com/containerd/containerd/v2/core/transfer/streaming"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// controlPair runs a supervisor's control loop in this process and returns
// the worker's client of it.
func controlPair(t *testing.T) *Client {
	t.Helper()
	ch := newChannel(t, nil)
	t.Cleanup(ch.s.closeAll)
	return ch.c
}

// dialStream opens stream id on the task socket as containerd's CRI does
// (internal/cri/io openStream): a connection of its own, a StreamInit, the
// acknowledgement.
func dialStream(ctx context.Context, t *testing.T, socket, id string) (streaming.Stream, *ttrpc.Client, error) {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	s, err := proxy.NewStreamCreator(c).Create(ctx, id)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return s, c, nil
}

// readLines reads from r until it has want, failing on anything else.
func readUntil(t *testing.T, r io.Reader, want string) {
	t.Helper()
	got := make([]byte, 0, len(want))
	buf := make([]byte, 4096)
	for len(got) < len(want) {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("read %q then %v; want %q", got, err, want)
		}
	}
	if string(got) != want {
		t.Fatalf("read %q, want %q", got, want)
	}
}

func lines(from, to int) string {
	var b strings.Builder
	for i := from; i < to; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	return b.String()
}

// TestStreamBridges drives the supervisor's stream bridges with
// containerd's own client code on a real task socket: a process's output
// and input keep flowing while no worker serves the socket, a stream
// opened again under its ID (containerd restarted) resumes where the
// last one stopped with nothing lost or repeated, input reaches the
// process up to its end of file, and a new worker finds the bridges
// listed.
func TestStreamBridges(t *testing.T) {
	dir := t.TempDir()
	c := controlPair(t)
	ts := c.TaskSockets(filepath.Join(dir, "w"))
	public := filepath.Join(dir, "task.sock")
	l, err := ts.Listen(public)
	if err != nil {
		t.Fatal(err)
	}
	// A worker serving the Task API behind the relay.
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	w := newFakeWorker("w1", 0)
	taskapi.RegisterTTRPCTaskService(srv, w)
	go srv.Serve(context.Background(), l)
	defer srv.Close()

	fifoDir := filepath.Join(dir, "s")
	host, err := ts.Streams(public, fifoDir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// CRI opens the streams before it creates the task.
	out1, cl1, err := dialStream(ctx, t, public, "c1-stdout")
	if err != nil {
		t.Fatal(err)
	}
	in, clIn, err := dialStream(ctx, t, public, "c1-stdin")
	if err != nil {
		t.Fatal(err)
	}
	bs, err := host.Bridge([]Bridge{{ID: "c1-stdin", Note: "c1/0"}, {ID: "c1-stdout", Out: true, Note: "c1/1"}})
	if err != nil {
		t.Fatal(err)
	}
	if bs[0].Path != filepath.Join(fifoDir, "c1-stdin") || bs[1].Path != filepath.Join(fifoDir, "c1-stdout") {
		t.Fatalf("FIFOs %q %q", bs[0].Path, bs[1].Path)
	}
	for _, b := range bs {
		if fi, err := os.Stat(b.Path); err != nil || fi.Mode()&os.ModeNamedPipe == 0 || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, %v; want a FIFO of mode 0600", b.Path, fi.Mode(), err)
		}
	}
	// Task calls still reach the worker on the same socket.
	conn, err := net.Dial("unix", public)
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(conn)
	defer tc.Close()
	if st, err := taskapi.NewTTRPCTaskClient(tc).State(ctx, &taskapi.StateRequest{ID: "c1"}); err != nil || st.ID != "w1" {
		t.Fatalf("State next to the streams = %v, %v", st, err)
	}

	// The process: its stdout is the FIFO's write end, as runc gets it.
	stdout, err := os.OpenFile(bs[1].Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	r1 := transferstreaming.ReadByteStream(ctx, out1)
	io.WriteString(stdout, lines(0, 100))
	readUntil(t, r1, lines(0, 100))

	// The worker goes away: nothing of the streams depended on it.
	srv.Close()
	l.Close()
	io.WriteString(stdout, lines(100, 200))
	readUntil(t, r1, lines(100, 200))

	// containerd goes away: the process's output waits for it, more than
	// a FIFO holds so that the bridge holds some too.
	cl1.Close()
	big := lines(200, 20000)
	wrote := make(chan error, 1)
	go func() { _, err := io.WriteString(stdout, big); wrote <- err }()
	out2, cl2, err := dialStream(ctx, t, public, "c1-stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer cl2.Close()
	r2 := transferstreaming.ReadByteStream(ctx, out2)
	readUntil(t, r2, big)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	// The process exits: its output ends, the stream with it.
	if ok, err := host.Wait([]string{"c1-stdout"}, 10*time.Millisecond); err != nil || ok {
		t.Fatalf("Wait while the process writes = %v, %v; want not settled", ok, err)
	}
	stdout.Close()
	if rest, err := io.ReadAll(r2); err != nil || len(rest) != 0 {
		t.Fatalf("after the process's end: %q, %v; want end of stream", rest, err)
	}
	if ok, err := host.Wait([]string{"c1-stdout"}, time.Minute); err != nil || !ok {
		t.Fatalf("Wait after the output ended = %v, %v", ok, err)
	}

	// Input: what containerd writes reaches the process, then its end.
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
	payload := bytes.Repeat([]byte("0123456789"), 10000)
	wc := transferstreaming.WriteByteStream(ctx, in)
	if _, err := wc.Write(payload); err != nil {
		t.Fatal(err)
	}
	wc.Close()
	clIn.Close()
	if data := <-got; !bytes.Equal(data, payload) {
		t.Fatalf("the process read %d bytes, want the %d sent", len(data), len(payload))
	}
	if ok, err := host.Wait([]string{"c1-stdin"}, time.Minute); err != nil || !ok {
		t.Fatalf("Wait after the input ended = %v, %v", ok, err)
	}

	// A new worker finds the bridges.
	list, err := host.Bridges()
	if err != nil || len(list) != 2 || list[0].ID != "c1-stdin" || list[0].Note != "c1/0" || !list[1].Out || list[1].Path != bs[1].Path {
		t.Fatalf("Bridges = %+v, %v", list, err)
	}
	if err := host.Unbridge([]string{"c1-stdin", "c1-stdout"}); err != nil {
		t.Fatal(err)
	}
	for _, b := range bs {
		if _, err := os.Stat(b.Path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Unbridge: %v", b.Path, err)
		}
	}
	if err := ts.Release(public); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fifoDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stream dir after the socket was released: %v", err)
	}
}

// TestStreamBridgesManyProcesses lists more bridges than one control
// message carries.
func TestStreamBridgesManyProcesses(t *testing.T) {
	dir := t.TempDir()
	c := controlPair(t)
	ts := c.TaskSockets(filepath.Join(dir, "w"))
	public := filepath.Join(dir, "task.sock")
	l, err := ts.Listen(public)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	host, err := ts.Streams(public, filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	var bs []Bridge
	for i := range 3*listPage + 5 {
		bs = append(bs, Bridge{ID: fmt.Sprintf("p%03d-stdout", i), Out: true, Note: strings.Repeat("n", 200)})
	}
	if _, err := host.Bridge(bs); err != nil {
		t.Fatal(err)
	}
	list, err := host.Bridges()
	if err != nil || len(list) != len(bs) {
		t.Fatalf("Bridges: %d, %v; want %d", len(list), err, len(bs))
	}
	if err := ts.Release(public); err != nil {
		t.Fatal(err)
	}
}

// TestStreamBridgesBadInput: bad stream IDs, bad first messages and bad
// bridge requests are refused with nothing changed.
func TestStreamBridgesBadInput(t *testing.T) {
	dir := t.TempDir()
	c := controlPair(t)
	ts := c.TaskSockets(filepath.Join(dir, "w"))
	public := filepath.Join(dir, "task.sock")
	l, err := ts.Listen(public)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := ts.Streams(filepath.Join(dir, "other.sock"), filepath.Join(dir, "s")); err == nil {
		t.Error("Streams of a socket that is not relayed succeeded")
	}
	if _, err := ts.Streams(public, "relative/dir"); err == nil {
		t.Error("Streams with a relative FIFO dir succeeded")
	}
	fifoDir := filepath.Join(dir, "s")
	host, err := ts.Streams(public, fifoDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Streams(public, filepath.Join(dir, "elsewhere")); err == nil {
		t.Error("Streams moved to another FIFO dir")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, id := range []string{"../escape", ".", "a/b", strings.Repeat("x", 256), ""} {
		if _, _, err := dialStream(ctx, t, public, id); !errdefs.IsInvalidArgument(err) {
			t.Errorf("stream %q: %v, want InvalidArgument", id, err)
		}
	}
	for _, bad := range [][]Bridge{
		{{ID: "../x"}},
		{{ID: "ok-1"}, {ID: "ok-1"}},
		{{ID: "ok-2", Note: strings.Repeat("n", maxNoteLen+1)}},
	} {
		if _, err := host.Bridge(bad); err == nil {
			t.Errorf("Bridge(%.60v) succeeded", bad)
		}
	}
	if list, err := host.Bridges(); err != nil || len(list) != 0 {
		t.Fatalf("bridges after refused requests: %v, %v", list, err)
	}
	if _, err := host.Bridge([]Bridge{{ID: "c-stdout", Out: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Bridge([]Bridge{{ID: "d-stdout", Out: true}, {ID: "c-stdout", Out: true}}); err == nil {
		t.Error("a stream bridged twice")
	}
	if _, err := os.Stat(filepath.Join(fifoDir, "d-stdout")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused Bridge left a FIFO: %v", err)
	}
	// A stream opened again under a bridged ID replaces the older one,
	// which ends.
	old, oldc, err := dialStream(ctx, t, public, "c-stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer oldc.Close()
	_, newc, err := dialStream(ctx, t, public, "c-stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer newc.Close()
	if _, err := old.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("replaced stream: Recv = %v, want end of stream", err)
	}
	// A stream no process claims ends after a while.
	defer func(d time.Duration) { waitingStreamTimeout = d }(waitingStreamTimeout)
	waitingStreamTimeout = 100 * time.Millisecond
	orphan, orphanc, err := dialStream(ctx, t, public, "gone-stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer orphanc.Close()
	if _, err := orphan.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("a stream no process claims: Recv = %v, want end of stream", err)
	}
	// Waiting for an unknown bridge ends at once.
	if ok, err := host.Wait([]string{"nope"}, time.Minute); err != nil || !ok {
		t.Errorf("Wait(unknown) = %v, %v", ok, err)
	}
	if err := ts.Release(public); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() bool {
		_, err := os.Stat(fifoDir)
		return errors.Is(err, os.ErrNotExist)
	}, "the stream dir removed")
}
