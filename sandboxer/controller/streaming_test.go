package controller

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	"github.com/containerd/containerd/v2/core/streaming"
	"github.com/containerd/containerd/v2/core/streaming/proxy"
	transferstreaming "github.com/containerd/containerd/v2/core/transfer/streaming"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/hashicorp/go-hclog"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// streamFixture serves a stream registry on a real ttrpc socket and dials
// it the way containerd's CRI does (proxy.NewStreamCreator).
type streamFixture struct {
	sock, dir string
	reg       *streamRegistry
	sio       *streamIO
	client    *ttrpc.Client
}

func newStreamFixture(t *testing.T) *streamFixture {
	t.Helper()
	base, err := os.MkdirTemp("", "mst")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	f := &streamFixture{sock: filepath.Join(base, "t.sock"), dir: filepath.Join(base, "s"), reg: newStreamRegistry()}
	f.sio = newStreamIO(f.reg, f.sock, f.dir)
	l, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	streamingapi.RegisterTTRPCStreamingService(srv, f.reg)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()
	conn, err := net.Dial("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	f.client = ttrpc.NewClient(conn)
	t.Cleanup(func() {
		f.client.Close()
		f.reg.close()
		if err := f.sio.closeAll(); err != nil {
			t.Error(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return f
}

func (f *streamFixture) uri(id string) string {
	return "ttrpc+unix://" + f.sock + "?streaming_id=" + id
}

// TestStreamBridge runs a "process" on the bridged FIFOs: it copies stdin
// to stdout and writes to stderr; containerd's side gets every byte and
// EOF, and deleting the process removes the FIFOs.
func TestStreamBridge(t *testing.T) {
	f := newStreamFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	creator := proxy.NewStreamCreator(f.client)
	open := func(id string) streaming.Stream {
		s, err := creator.Create(ctx, id)
		if err != nil {
			t.Fatalf("create stream %s: %v", id, err)
		}
		return s
	}
	stdin := transferstreaming.WriteByteStream(ctx, open("c1-stdin"))
	stdout := transferstreaming.ReadByteStream(ctx, open("c1-stdout"))
	stderr := transferstreaming.ReadByteStream(ctx, open("c1-stderr"))

	stdio, err := f.sio.Open(ctx, "c1", "", backend.Stdio{Stdin: f.uri("c1-stdin"), Stdout: f.uri("c1-stdout"), Stderr: f.uri("c1-stderr")})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{stdio.Stdin, stdio.Stdout, stdio.Stderr} {
		if !strings.HasPrefix(p, f.dir+"/") {
			t.Fatalf("stdio %q is not a FIFO under %s", p, f.dir)
		}
	}
	if got, ok := f.sio.Original("c1", ""); !ok || got.Stdout != f.uri("c1-stdout") {
		t.Errorf("stdio reported back = %+v, %v; want the stream URIs", got, ok)
	}

	// The "process", as a backend runs it: stdin FIFO to stdout FIFO.
	proc := make(chan error, 1)
	go func() {
		proc <- func() error {
			in, err := os.OpenFile(stdio.Stdin, os.O_RDONLY, 0)
			if err != nil {
				return err
			}
			defer in.Close()
			out, err := os.OpenFile(stdio.Stdout, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer out.Close()
			errf, err := os.OpenFile(stdio.Stderr, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer errf.Close()
			if _, err := io.WriteString(errf, "to stderr\n"); err != nil {
				return err
			}
			_, err = io.Copy(out, in)
			return err
		}()
	}()

	// 1 MiB: far more than the flow-control window and a pipe buffer.
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	gotc := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(stdout)
		gotc <- b
	}()
	if _, err := stdin.Write(want); err != nil {
		t.Fatalf("write stdin: %v", err)
	}
	if err := stdin.Close(); err != nil {
		t.Fatalf("close stdin: %v", err)
	}
	if err := <-proc; err != nil {
		t.Fatalf("process: %v", err)
	}
	if got := <-gotc; !bytes.Equal(got, want) {
		t.Errorf("stdout: got %d bytes, want %d (stdin EOF must end the process and all output must arrive)", len(got), len(want))
	}
	errOut, err := io.ReadAll(stderr)
	if err != nil || string(errOut) != "to stderr\n" {
		t.Errorf("stderr = %q, %v", errOut, err)
	}

	if err := f.sio.Remove("c1", "", true); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(f.dir); err != nil || len(ents) != 0 {
		t.Errorf("stream dir after delete: %v, %v; want empty", ents, err)
	}
	if _, ok := f.sio.Original("c1", ""); ok {
		t.Error("process still has streams after delete")
	}
}

// TestStreamExecNoStdin: an exec with a terminal and no stdin has stdout
// only; its bridge is keyed by exec ID.
func TestStreamExecNoStdin(t *testing.T) {
	f := newStreamFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := proxy.NewStreamCreator(f.client).Create(ctx, "e1-stdout")
	if err != nil {
		t.Fatal(err)
	}
	stdout := transferstreaming.ReadByteStream(ctx, s)
	stdio, err := f.sio.Open(ctx, "c1", "e1", backend.Stdio{Stdout: f.uri("e1-stdout"), Terminal: true})
	if err != nil {
		t.Fatal(err)
	}
	if stdio.Stdin != "" || stdio.Stderr != "" || !stdio.Terminal {
		t.Errorf("stdio = %+v", stdio)
	}
	w, err := os.OpenFile(stdio.Stdout, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, "tty output"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	// Deleting right after the exit still delivers the output.
	if err := f.sio.Remove("c1", "e1", true); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(stdout)
	if err != nil || string(got) != "tty output" {
		t.Errorf("stdout = %q, %v", got, err)
	}
}

// TestStreamRejects: stream IDs and addresses are validated; an exec
// whose process never opens its FIFOs is torn down by remove.
func TestStreamRejects(t *testing.T) {
	f := newStreamFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, s := range []string{
		f.uri("../../etc/passwd"),
		f.uri("a/b"),
		f.uri(""),
		"ttrpc+unix:///elsewhere.sock?streaming_id=x-stdout",
		"grpc+unix://" + f.sock + "?streaming_id=x-stdout",
		"binary:///bin/logger",
	} {
		if _, err := f.sio.Open(ctx, "c1", "", backend.Stdio{Stdout: s}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("stdout %q: %v, want InvalidArgument", s, err)
		}
	}
	// A StreamInit with a bad ID is refused by the server.
	if _, err := proxy.NewStreamCreator(f.client).Create(ctx, "../x"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("stream ../x: %v, want InvalidArgument", err)
	}
	// Plain FIFO paths pass through untouched.
	in := backend.Stdio{Stdout: "/run/x/stdout"}
	if out, err := f.sio.Open(ctx, "c1", "", in); err != nil || out != in {
		t.Errorf("fifo stdio: %+v, %v", out, err)
	}
	// Duplicate stream IDs are refused while the first is open.
	if _, err := proxy.NewStreamCreator(f.client).Create(ctx, "d-stdout"); err != nil {
		t.Fatal(err)
	}
	if _, err := proxy.NewStreamCreator(f.client).Create(ctx, "d-stdout"); !errdefs.IsAlreadyExists(err) {
		t.Errorf("duplicate stream: %v, want AlreadyExists", err)
	}
	// Streams whose process never runs are torn down by remove.
	stdio, err := f.sio.Open(ctx, "c2", "", backend.Stdio{Stdout: f.uri("d-stdout")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stdio.Stdout); err != nil {
		t.Fatal(err)
	}
	if err := f.sio.Remove("c2", "", false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(stdio.Stdout)); !os.IsNotExist(err) {
		t.Errorf("stream dir still there: %v", err)
	}
}

// TestTaskServerServesStreaming: the per-sandbox task socket serves the
// Streaming service; stale stream FIFOs of an earlier daemon are removed
// when the server starts, and a sandbox's FIFOs go when it stops.
func TestTaskServerServesStreaming(t *testing.T) {
	runDir, err := os.MkdirTemp("", "mts")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runDir)
	stale := filepath.Join(StreamDir(runDir, "sb1"), "old")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	ts := newTaskServers(nil, runDir, "test", hclog.NewNullLogger(), nil)
	addr, err := ts.start("sb1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale stream dir survived the server start: %v", err)
	}
	conn, err := net.Dial("unix", strings.TrimPrefix(addr, "ttrpc+unix://"))
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := proxy.NewStreamCreator(client).Create(ctx, "c-stdout")
	if err != nil {
		t.Fatalf("open a stream on the task socket: %v", err)
	}
	out := transferstreaming.ReadByteStream(ctx, s)
	// Stopping the sandbox's server ends its open streams.
	if err := ts.stop("sb1"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(out); err != nil {
		t.Errorf("stream after stop: %v, want EOF", err)
	}
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := ts.stop("sb1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(StreamDir(runDir, "sb1")); !os.IsNotExist(err) {
		t.Errorf("stream dir survived stopping the sandbox: %v", err)
	}
}
