package agentmux_test

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
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
)

type agent struct {
	agentv1.TTRPCAgentServiceService
}

func (agent) Health(context.Context, *agentv1.HealthRequest) (*agentv1.HealthResponse, error) {
	return &agentv1.HealthResponse{Version: "test"}, nil
}

// serveAgent serves sessions on conn the way the agent does: handshake,
// then ttrpc and stdio streams, until conn fails. It returns when done.
func serveAgent(conn io.ReadWriteCloser, stdio agentmux.StdioHandler) error {
	c, err := agentmux.Accept(conn)
	if err != nil {
		return err
	}
	l, err := agentmux.Listen(c, stdio)
	if err != nil {
		return err
	}
	srv, _ := ttrpc.NewServer()
	agentv1.RegisterTTRPCAgentServiceService(srv, agent{})
	err = srv.Serve(context.Background(), l)
	srv.Close()
	l.Close()
	l.Wait()
	return err
}

func dialHost(t *testing.T, conn net.Conn) *agentmux.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := agentmux.Handshake(ctx, conn); err != nil {
		t.Fatal(err)
	}
	c, err := agentmux.NewClient(conn)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func health(t *testing.T, c *agentmux.Client) {
	t.Helper()
	s, err := c.Dial()
	if err != nil {
		t.Fatal(err)
	}
	cl := ttrpc.NewClient(s)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := agentv1.NewTTRPCAgentServiceClient(cl).Health(ctx, &agentv1.HealthRequest{})
	if err != nil || res.GetVersion() != "test" {
		t.Fatalf("Health = %v, %v", res, err)
	}
}

// TestTTRPCOverOneStream runs two ttrpc clients over one byte stream (a
// unix socket standing in for the virtio-serial port).
func TestTTRPCOverOneStream(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "port.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		_ = serveAgent(conn, nil)
	}()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := dialHost(t, conn)
	defer c.Close()
	for range 2 {
		health(t, c)
	}
}

// TestReconnectOverStalePort models the virtio-serial port: a socket
// pair whose ends outlive the connections that use them (each use is a
// dup of the end), so that bytes of a new host reach the agent's previous
// session, which has not seen the old host go. The new host must be
// served at once, without waiting.
func TestReconnectOverStalePort(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	agentEnd, hostEnd := os.NewFile(uintptr(fds[0]), "agent"), os.NewFile(uintptr(fds[1]), "host")
	defer hostEnd.Close()
	open := func(f *os.File) net.Conn {
		c, err := net.FileConn(f) // a dup
		if err != nil {
			t.Error(err)
			return nil
		}
		return c
	}
	var mu sync.Mutex
	var cur net.Conn
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		// The agent: a session after another, each on a fresh open
		// of its end of the port.
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c := open(agentEnd)
			if c == nil {
				return
			}
			mu.Lock()
			cur = c
			mu.Unlock()
			_ = serveAgent(c, nil)
			c.Close()
		}
	}()
	for i := range 3 {
		conn := open(hostEnd)
		c := dialHost(t, conn)
		health(t, c)
		if i == 1 {
			// Junk of a half-written frame, as a dying host might
			// leave.
			_, _ = conn.Write([]byte{0, 1, 0})
		}
		_ = c.Close() // closes only this dup: the agent does not see it
	}
	close(stop)
	mu.Lock()
	cur.Close()
	mu.Unlock()
	agentEnd.Close()
	<-done
}

// TestHandshakeSkipsJunk: bytes before the hello (agent side) and before
// the ack (host side) are skipped, and bytes right after "go" are kept.
func TestHandshakeSkipsJunk(t *testing.T) {
	a, h := net.Pipe()
	defer a.Close()
	defer h.Close()
	got := make(chan string, 1)
	go func() {
		c, err := agentmux.Accept(a)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		b := make([]byte, 5)
		_, err = io.ReadFull(c, b)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- string(b)
	}()
	go func() { _, _ = a.Write([]byte("stale frames from the agent")) }()
	if _, err := h.Write([]byte("MGNTHELjunk\x00\x00")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := agentmux.Handshake(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "after" {
		t.Fatalf("agent read %q after the handshake, want %q", s, "after")
	}
}

func TestHandshakeHonoursContext(t *testing.T) {
	a, h := net.Pipe()
	defer a.Close()
	defer h.Close()
	go func() { _, _ = io.Copy(io.Discard, a) }() // a port nobody answers on
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := agentmux.Handshake(ctx, h); err == nil {
		t.Fatal("handshake without an agent succeeded")
	}
}

// TestStdioStreams opens stdio streams: the handler answers with a path,
// echoes stdin-like input back upper-cased on "stdout" streams and
// half-closes; bad headers are refused.
func TestStdioStreams(t *testing.T) {
	a, h := net.Pipe()
	var served sync.WaitGroup
	handler := func(ctx context.Context, conn net.Conn, req agentmux.StdioRequest) {
		served.Add(1)
		defer served.Done()
		defer conn.Close()
		if req.Mode != agentmux.StdioOpen {
			_ = agentmux.ReplyStdio(conn, "", fmt.Errorf("mode %d", req.Mode))
			return
		}
		if err := agentmux.ReplyStdio(conn, "/fifo/"+req.String(), nil); err != nil {
			return
		}
		b, _ := io.ReadAll(conn)
		_, _ = conn.Write(bytes.ToUpper(b))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = serveAgent(a, handler)
	}()
	c := dialHost(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, path, err := c.DialStdio(ctx, agentmux.StdioHeader{Container: "c1", Exec: "e1", Stream: agentmux.Stdout})
	if err != nil {
		t.Fatal(err)
	}
	if path != "/fifo/c1/e1/stdout" {
		t.Errorf("path = %q", path)
	}
	if _, err := st.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	st.Close() // half close: the reply still arrives
	b, err := io.ReadAll(st)
	if err != nil || string(b) != "HELLO" {
		t.Errorf("read %q, %v; want HELLO", b, err)
	}
	for _, bad := range []agentmux.StdioHeader{
		{Container: "../x", Stream: agentmux.Stdin},
		{Container: "", Stream: agentmux.Stdin},
		{Container: "c", Stream: 7},
	} {
		if _, _, err := c.DialStdio(ctx, bad); err == nil {
			t.Errorf("header %+v accepted", bad)
		}
	}
	health(t, c) // ttrpc still works alongside
	c.Close()
	h.Close()
	a.Close()
	<-done
	served.Wait()
}

func TestStdioRefusedWithoutHandler(t *testing.T) {
	a, h := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = serveAgent(a, nil)
	}()
	c := dialHost(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := c.DialStdio(ctx, agentmux.StdioHeader{Container: "c", Stream: agentmux.Stdout}); err == nil || !strings.Contains(err.Error(), "not served") {
		t.Errorf("DialStdio = %v, want refused", err)
	}
	c.Close()
	h.Close()
	a.Close()
	<-done
}

// TestStdioResume: a resume request carries its offset to the handler;
// the handler's ErrStdioGone reaches the host as ErrStdioGone; on the
// agent a read tells the host's close (io.EOF) from the session's end
// (ErrSessionClosed); acknowledgements round-trip.
func TestStdioResume(t *testing.T) {
	a, h := net.Pipe()
	type seen struct {
		req     agentmux.StdioRequest
		acks    []uint64
		readErr error
	}
	got := make(chan seen, 4)
	// replied: a handler's reply was sent whole (yamux may report a write
	// that raced with the session's end as failed although it arrived).
	replied := make(chan struct{}, 4)
	handler := func(ctx context.Context, conn net.Conn, req agentmux.StdioRequest) {
		defer conn.Close()
		if req.Container == "gone" {
			_ = agentmux.ReplyStdio(conn, "", fmt.Errorf("%s: %w", req.StdioHeader, agentmux.ErrStdioGone))
			return
		}
		if err := agentmux.ReplyStdio(conn, "/fifo", nil); err != nil {
			return
		}
		replied <- struct{}{}
		s := seen{req: req}
		for {
			off, err := agentmux.ReadAck(conn)
			if err != nil {
				s.readErr = err
				break
			}
			s.acks = append(s.acks, off)
		}
		got <- s
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = serveAgent(a, handler)
	}()
	c := dialHost(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.ResumeStdio(ctx, agentmux.StdioHeader{Container: "gone", Stream: agentmux.Stdout}, 5); !errors.Is(err, agentmux.ErrStdioGone) {
		t.Errorf("resume of a gone stream = %v, want ErrStdioGone", err)
	}
	st, err := c.ResumeStdio(ctx, agentmux.StdioHeader{Container: "c", Exec: "e", Stream: agentmux.Stderr}, 1<<40+3)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []uint64{7, 1 << 40, agentmux.AckRelease} {
		if err := agentmux.WriteAck(st, off); err != nil {
			t.Fatal(err)
		}
	}
	st.Close() // the host's close: io.EOF on the agent
	s := <-got
	if s.req.Mode != agentmux.StdioResume || s.req.Offset != 1<<40+3 || s.req.Container != "c" || s.req.Exec != "e" || s.req.Stream != agentmux.Stderr {
		t.Errorf("request = %+v", s.req)
	}
	if fmt.Sprint(s.acks) != fmt.Sprint([]uint64{7, 1 << 40, agentmux.AckRelease}) || !errors.Is(s.readErr, io.EOF) {
		t.Errorf("acks %v, end %v; want 7, 2^40, release, then io.EOF", s.acks, s.readErr)
	}

	// A session that ends: ErrSessionClosed.
	if _, _, err := c.DialStdio(ctx, agentmux.StdioHeader{Container: "c", Stream: agentmux.Stdout}); err != nil {
		t.Fatal(err)
	}
	<-replied // the resumed stream's
	<-replied // this one's
	c.Close()
	h.Close()
	if s := <-got; s.req.Mode != agentmux.StdioOpen || !errors.Is(s.readErr, agentmux.ErrSessionClosed) {
		t.Errorf("stream of an ended session: mode %d, read %v; want open, ErrSessionClosed", s.req.Mode, s.readErr)
	}
	a.Close()
	<-done
}
