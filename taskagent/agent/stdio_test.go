package agent

import (
	"context"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
)

// stdioSession serves a bridge over an in-memory port and returns the
// host's client; cleanup ends the session and waits for the bridge.
func stdioSession(t *testing.T, dir string) *agentmux.Client {
	t.Helper()
	a, h := net.Pipe()
	b := &stdioBridge{dir: dir}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := agentmux.Accept(a)
		if err != nil {
			return
		}
		l, err := agentmux.Listen(c, b.serve)
		if err != nil {
			return
		}
		for {
			conn, err := l.Accept()
			if err != nil {
				break
			}
			conn.Close()
		}
		l.Close()
		l.Wait()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := agentmux.Handshake(ctx, h); err != nil {
		t.Fatal(err)
	}
	mc, err := agentmux.NewClient(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mc.Close()
		a.Close()
		<-done
	})
	return mc
}

// TestStdioBridge plays the host and the in-guest Task API around the
// bridge: output written to the guest FIFO reaches the host, then end of
// file when the writer closes; input the host sends reaches the reader
// of the guest FIFO, then end of file when the host closes. The FIFOs are
// removed afterwards.
func TestStdioBridge(t *testing.T) {
	dir := t.TempDir()
	mc := stdioSession(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	out, outPath, err := mc.DialStdio(ctx, agentmux.StdioHeader{Container: "c1", Stream: agentmux.Stdout})
	if err != nil {
		t.Fatal(err)
	}
	in, inPath, err := mc.DialStdio(ctx, agentmux.StdioHeader{Container: "c1", Exec: "e1", Stream: agentmux.Stdin})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{outPath, inPath} {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
			t.Fatalf("%s is not a FIFO: %v", p, err)
		}
	}

	// The process: writes its output, reads its input.
	procDone := make(chan string, 1)
	go func() {
		w, err := os.OpenFile(outPath, os.O_WRONLY, 0)
		if err != nil {
			procDone <- "open stdout: " + err.Error()
			return
		}
		_, _ = w.Write([]byte("output\n"))
		w.Close()
		r, err := os.Open(inPath)
		if err != nil {
			procDone <- "open stdin: " + err.Error()
			return
		}
		b, _ := io.ReadAll(r)
		r.Close()
		procDone <- string(b)
	}()

	got, err := io.ReadAll(out)
	if err != nil || string(got) != "output\n" {
		t.Errorf("host read %q, %v; want output", got, err)
	}
	out.Close()
	if _, err := in.Write([]byte("input")); err != nil {
		t.Fatal(err)
	}
	in.Close() // CloseIO: the process reads end of file
	if s := <-procDone; s != "input" {
		t.Errorf("process read %q, want input", s)
	}
	// Both streams are done: the agent removes the FIFOs.
	var ents []os.DirEntry
	if !testutil.Poll(2*time.Second, func() bool { ents, _ = os.ReadDir(dir); return len(ents) == 0 }) {
		t.Errorf("FIFOs left: %v", ents)
	}
}

// TestStdioBridgeSessionEnd: a stream whose process never opened its
// FIFO ends with the session (the handler does not hang the agent).
func TestStdioBridgeSessionEnd(t *testing.T) {
	dir := t.TempDir()
	mc := stdioSession(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, st := range []agentmux.Stream{agentmux.Stdin, agentmux.Stdout, agentmux.Stderr} {
		if _, _, err := mc.DialStdio(ctx, agentmux.StdioHeader{Container: "c", Stream: st}); err != nil {
			t.Fatal(err)
		}
	}
	mc.Close() // cleanup waits for the handlers: a hang fails the test by timeout
}
