package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
)

// stdioSession serves b over a new in-memory port and returns the host's
// client and a function that ends the session (as a host that goes away)
// and waits for the bridge's handlers; the test's cleanup ends it too.
func stdioSession(t *testing.T, b *stdioBridge) (*agentmux.Client, func()) {
	t.Helper()
	a, h := net.Pipe()
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
	end := func() {
		mc.Close()
		a.Close()
		<-done
	}
	t.Cleanup(end)
	return mc, end
}

// newTestBridge returns a bridge in a temporary directory whose streams
// are released when the test ends (ending the FIFO readers).
func newTestBridge(t *testing.T) *stdioBridge {
	b := newStdioBridge(t.TempDir())
	t.Cleanup(func() {
		b.mu.Lock()
		ids := map[string]bool{}
		for k := range b.streams {
			ids[k.Container] = true
		}
		b.mu.Unlock()
		for id := range ids {
			b.releaseProcess(id, "")
		}
	})
	return b
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// readN reads n bytes of an output stream, acknowledging each chunk as
// the host does.
func readN(t *testing.T, conn net.Conn, from uint64, n int) []byte {
	t.Helper()
	out := make([]byte, 0, n)
	buf := make([]byte, 4096)
	for len(out) < n {
		k, err := conn.Read(buf[:min(len(buf), n-len(out))])
		out = append(out, buf[:k]...)
		if k > 0 {
			if err := agentmux.WriteAck(conn, from+uint64(len(out))); err != nil {
				t.Fatal(err)
			}
		}
		if err != nil {
			t.Fatalf("read after %d of %d bytes: %v", len(out), n, err)
		}
	}
	return out
}

func dirEmpty(t *testing.T, dir string) {
	t.Helper()
	var ents []os.DirEntry
	if !testutil.Poll(5*time.Second, func() bool { ents, _ = os.ReadDir(dir); return len(ents) == 0 }) {
		t.Errorf("FIFOs left: %v", ents)
	}
}

// TestStdioBridge plays the host and the in-guest Task API around the
// bridge: output written to the guest FIFO reaches the host, then end of
// file when the writer closes; input the host sends reaches the reader
// of the guest FIFO, then end of file when the host closes. Once the
// output is all acknowledged and the input closed, the streams are gone
// and their FIFOs removed.
func TestStdioBridge(t *testing.T) {
	b := newTestBridge(t)
	mc, _ := stdioSession(t, b)
	ctx := testCtx(t)

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

	if got := readN(t, out, 0, 7); string(got) != "output\n" {
		t.Errorf("host read %q; want output", got)
	}
	if rest, err := io.ReadAll(out); err != nil || len(rest) != 0 {
		t.Errorf("after the output: %q, %v; want end of file", rest, err)
	}
	if _, err := in.Write([]byte("input")); err != nil {
		t.Fatal(err)
	}
	in.Close() // CloseIO: the process reads end of file
	if s := <-procDone; s != "input" {
		t.Errorf("process read %q, want input", s)
	}
	if !testutil.Poll(5*time.Second, func() bool { return b.count() == 0 }) {
		t.Errorf("%d streams still held", b.count())
	}
	dirEmpty(t, b.dir)
}

// TestStdioResume: a host that goes away leaves the output it did not
// acknowledge, and what the process writes while no host is attached,
// with the agent; the next session resumes from the host's offset and
// gets every byte once, in order, then end of file. The process keeps
// its stdin across the sessions: input sent by both reaches it, then end
// of file when the second host closes it.
func TestStdioResume(t *testing.T) {
	b := newTestBridge(t)
	mc, end := stdioSession(t, b)
	ctx := testCtx(t)
	outH := agentmux.StdioHeader{Container: "c", Stream: agentmux.Stdout}
	inH := agentmux.StdioHeader{Container: "c", Stream: agentmux.Stdin}
	out, outPath, err := mc.DialStdio(ctx, outH)
	if err != nil {
		t.Fatal(err)
	}
	in, inPath, err := mc.DialStdio(ctx, inH)
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(outPath, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	inRead := make(chan string, 1)
	go func() {
		r, err := os.Open(inPath)
		if err != nil {
			inRead <- err.Error()
			return
		}
		data, _ := io.ReadAll(r)
		r.Close()
		inRead <- string(data)
	}()

	if _, err := w.Write([]byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	// The host gets all ten bytes but has delivered only four.
	buf := make([]byte, 10)
	if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "0123456789" {
		t.Fatalf("first session read %q, %v", buf, err)
	}
	if err := agentmux.WriteAck(out, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Write([]byte("first ")); err != nil {
		t.Fatal(err)
	}
	// Wait until the agent applied the ack before the host goes away.
	if !testutil.Poll(5*time.Second, func() bool {
		b.mu.Lock()
		o := b.streams[outH].(*outStream)
		b.mu.Unlock()
		o.mu.Lock()
		defer o.mu.Unlock()
		return o.base == 4
	}) {
		t.Fatal("ack not applied")
	}
	end()

	// No host: the process keeps writing; nothing is lost.
	if _, err := w.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	mc2, _ := stdioSession(t, b)
	if _, err := mc2.ResumeStdio(ctx, outH, 2); err == nil {
		t.Error("resume before the acknowledged offset accepted")
	}
	if _, err := mc2.ResumeStdio(ctx, outH, 99); err == nil {
		t.Error("resume beyond the output accepted")
	}
	out2, err := mc2.ResumeStdio(ctx, outH, 4)
	if err != nil {
		t.Fatal(err)
	}
	if got := readN(t, out2, 4, 9); string(got) != "456789abc" {
		t.Errorf("resumed read %q, want 456789abc", got)
	}
	w.Close() // the process's writers are gone: end of file
	if rest, err := io.ReadAll(out2); err != nil || len(rest) != 0 {
		t.Errorf("after the output: %q, %v; want end of file", rest, err)
	}
	in2, err := mc2.ResumeStdio(ctx, inH, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in2.Write([]byte("second")); err != nil {
		t.Fatal(err)
	}
	in2.Close()
	if got := <-inRead; got != "first second" {
		t.Errorf("process read %q, want %q", got, "first second")
	}
	if !testutil.Poll(5*time.Second, func() bool { return b.count() == 0 }) {
		t.Errorf("%d streams still held", b.count())
	}
	if _, err := mc2.ResumeStdio(ctx, outH, 13); !errors.Is(err, agentmux.ErrStdioGone) {
		t.Errorf("resume of a finished stream = %v, want ErrStdioGone", err)
	}
	dirEmpty(t, b.dir)
}

// TestStdioBackPressure: the agent holds at most its bound of output the
// host has not acknowledged; the rest waits in the process's pipe, and
// reaches the host, intact, as it acknowledges.
func TestStdioBackPressure(t *testing.T) {
	b := newTestBridge(t)
	b.hold = 1000
	mc, _ := stdioSession(t, b)
	ctx := testCtx(t)
	out, path, err := mc.DialStdio(ctx, agentmux.StdioHeader{Container: "c", Stream: agentmux.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 300<<10) // more than the pipe holds
	for i := range data {
		data[i] = byte(i * 7)
	}
	wrote := make(chan error, 1)
	go func() {
		w, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err == nil {
			_, err = w.Write(data)
			w.Close()
		}
		wrote <- err
	}()
	// Without acknowledgements the host gets what the agent holds, no
	// more.
	got := make([]byte, 0, len(data))
	buf := make([]byte, 64<<10)
	for len(got) < 1000 {
		n, err := out.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	_ = out.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var ne net.Error
	if n, err := out.Read(buf); n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("host got %d more bytes (%v) beyond the agent's bound without acknowledging", n, err)
	}
	select {
	case err := <-wrote:
		t.Fatalf("the process wrote everything (%v) though the host acknowledged nothing", err)
	default:
	}
	_ = out.SetReadDeadline(time.Time{})
	if len(got) != 1000 {
		t.Fatalf("host got %d bytes, want the agent's bound of 1000", len(got))
	}
	if err := agentmux.WriteAck(out, uint64(len(got))); err != nil {
		t.Fatal(err)
	}
	got = append(got, readN(t, out, uint64(len(got)), len(data)-len(got))...)
	if !bytes.Equal(got, data) {
		t.Error("output corrupted under back pressure")
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
}

// TestStdioRelease: the host's release, and a Delete of the process in
// the guest, drop streams (a container's Delete: its execs' too), close
// and remove their FIFOs; a resume then finds them gone. A session that
// ends while a process never opened its FIFOs keeps the streams (for the
// next session) and does not hang the agent.
func TestStdioRelease(t *testing.T) {
	b := newTestBridge(t)
	mc, end := stdioSession(t, b)
	ctx := testCtx(t)
	hs := []agentmux.StdioHeader{
		{Container: "c", Stream: agentmux.Stdin},
		{Container: "c", Stream: agentmux.Stdout},
		{Container: "c", Exec: "e", Stream: agentmux.Stdout},
		{Container: "c", Exec: "e", Stream: agentmux.Stderr},
		{Container: "d", Stream: agentmux.Stdout},
	}
	for _, h := range hs {
		if _, _, err := mc.DialStdio(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	end() // handlers return although no FIFO was opened by a process
	if n := b.count(); n != len(hs) {
		t.Fatalf("%d streams held after the session ended, want %d", n, len(hs))
	}
	b.releaseProcess("c", "e")
	if n := b.count(); n != 3 {
		t.Errorf("%d streams after the exec's delete, want 3", n)
	}
	b.releaseProcess("c", "")
	if n := b.count(); n != 1 {
		t.Errorf("%d streams after the container's delete, want 1", n)
	}
	mc2, _ := stdioSession(t, b)
	for _, h := range hs[:4] {
		if _, err := mc2.ResumeStdio(ctx, h, 0); !errors.Is(err, agentmux.ErrStdioGone) {
			t.Errorf("resume %s = %v, want ErrStdioGone", h, err)
		}
	}
	d, err := mc2.ResumeStdio(ctx, hs[4], 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := agentmux.WriteAck(d, agentmux.AckRelease); err != nil {
		t.Fatal(err)
	}
	if !testutil.Poll(5*time.Second, func() bool { return b.count() == 0 }) {
		t.Errorf("%d streams held after the release", b.count())
	}
	dirEmpty(t, b.dir)
}
