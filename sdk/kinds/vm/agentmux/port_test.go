package agentmux_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
)

// portAgent serves sessions on conn with a port dialer that reaches the
// test's own loopback, as the agent reaches the guest's.
func portAgent(t *testing.T, conn io.ReadWriteCloser, dial agentmux.PortDialer) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := agentmux.Accept(conn)
		if err != nil {
			return
		}
		var opts []agentmux.ListenOption
		if dial != nil {
			opts = append(opts, agentmux.WithPortDialer(dial))
		}
		l, err := agentmux.Listen(c, nil, opts...)
		if err != nil {
			return
		}
		srv, _ := ttrpc.NewServer()
		agentv1.RegisterTTRPCAgentServiceService(srv, agent{})
		_ = srv.Serve(context.Background(), l)
		srv.Close()
		l.Close()
		l.Wait()
	}()
	return done
}

func loopbackDialer(ctx context.Context, port int) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
}

// listenLoopback serves each connection with fn on a loopback port.
func listenLoopback(t *testing.T, fn func(net.Conn)) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				fn(c)
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// echoServer copies what it reads back, then half-closes at end of file.
func echoServer(c net.Conn) {
	_, _ = io.Copy(c, c)
	_ = c.(*net.TCPConn).CloseWrite()
}

// halfCloseEcho writes data, half-closes and reads until end of file.
func halfCloseEcho(c net.Conn, data []byte) ([]byte, error) {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := <-errc; err != nil {
		return got, err
	}
	return got, rerr
}

// TestPortEcho: many concurrent connections, each sending more than a
// window and reading it back after a half close, byte for byte; a
// refused port; a port out of range.
func TestPortEcho(t *testing.T) {
	a, h := net.Pipe()
	done := portAgent(t, a, loopbackDialer)
	c := dialHost(t, h)
	defer func() {
		c.Close()
		h.Close()
		a.Close()
		<-done
	}()
	port := listenLoopback(t, echoServer)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			conn, err := c.DialPort(ctx, port)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			data := make([]byte, 300<<10+i*977)
			rand.Read(data)
			got, err := halfCloseEcho(conn, data)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("conn %d: %d of %d bytes back, equal=%v, %v", i, len(got), len(data), bytes.Equal(got, data), err)
			}
		})
	}
	wg.Wait()

	// Nothing listens: refused, told apart from other failures.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().(*net.TCPAddr).Port
	l.Close()
	if _, err := c.DialPort(ctx, closed); !errors.Is(err, agentmux.ErrPortRefused) {
		t.Errorf("DialPort to a closed port = %v, want ErrPortRefused", err)
	}
	for _, bad := range []int{0, -1, 65536} {
		if _, err := c.DialPort(ctx, bad); err == nil {
			t.Errorf("DialPort(%d) succeeded", bad)
		}
	}
	health(t, c) // ttrpc still works alongside
}

// TestPortClose: the host's Close reaches the process in the guest (end
// of file after the bytes written before, as a socket's close), also when
// the process does not read and the stream's window is full (the
// connection is then dropped); a process that closes is seen by the host.
func TestPortClose(t *testing.T) {
	a, h := net.Pipe()
	done := portAgent(t, a, loopbackDialer)
	c := dialHost(t, h)
	defer func() {
		c.Close()
		h.Close()
		a.Close()
		<-done
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// A reader: it gets the bytes, then end of file.
	got := make(chan []byte, 1)
	port := listenLoopback(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		got <- b
	})
	conn, err := c.DialPort(ctx, port)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if b := <-got; string(b) != "last words" {
		t.Errorf("the process read %q before end of file, want %q", b, "last words")
	}
	if _, err := conn.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close = %v, want net.ErrClosed", err)
	}

	// A process that never reads, and a host that filled the window.
	ended := make(chan error, 1)
	stuck := listenLoopback(t, func(c net.Conn) {
		// It writes without ever reading: its writes block once the
		// host stops reading, and fail once the connection was reset.
		if _, err := c.Write([]byte("tick")); err != nil {
			ended <- err
			return
		}
		junk := make([]byte, 64<<10)
		for {
			if _, err := c.Write(junk); err != nil {
				ended <- err
				return
			}
		}
	})
	conn, err = c.DialPort(ctx, stuck)
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		big := make([]byte, 16<<20)
		_, _ = conn.Write(big) // blocks: nobody reads in the guest
	}()
	b := make([]byte, 4)
	if _, err := io.ReadFull(conn, b); err != nil || string(b) != "tick" {
		t.Fatalf("read %q, %v", b, err)
	}
	conn.Close()
	select {
	case <-ended:
	case <-ctx.Done():
		t.Fatal("the guest connection of a closed port stream stays open")
	}
	<-wrote

	// The process closes: the host reads end of file.
	port = listenLoopback(t, func(c net.Conn) { _, _ = c.Write([]byte("bye")) })
	conn, err = c.DialPort(ctx, port)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(conn); err != nil || string(b) != "bye" {
		t.Errorf("ReadAll = %q, %v", b, err)
	}
	conn.Close()
}

// TestPortSessionEnd: when the session ends (the VM stopped) the host's
// reads fail with ErrSessionClosed, not end of file, and the guest
// connections are dropped.
func TestPortSessionEnd(t *testing.T) {
	a, h := net.Pipe()
	done := portAgent(t, a, loopbackDialer)
	c := dialHost(t, h)
	ended := make(chan struct{})
	port := listenLoopback(t, func(c net.Conn) {
		_, _ = io.Copy(io.Discard, c)
		close(ended)
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := c.DialPort(ctx, port)
	if err != nil {
		t.Fatal(err)
	}
	rerr := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 1))
		rerr <- err
	}()
	c.Close()
	if err := <-rerr; !errors.Is(err, agentmux.ErrSessionClosed) {
		t.Errorf("Read after the session ended = %v, want ErrSessionClosed", err)
	}
	h.Close()
	a.Close()
	<-done
	select {
	case <-ended:
	case <-ctx.Done():
		t.Fatal("the guest connection outlived the session")
	}
}

// TestPortNotServed: an agent without a port dialer refuses port streams.
func TestPortNotServed(t *testing.T) {
	a, h := net.Pipe()
	done := portAgent(t, a, nil)
	c := dialHost(t, h)
	defer func() {
		c.Close()
		h.Close()
		a.Close()
		<-done
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.DialPort(ctx, 80); err == nil || errors.Is(err, agentmux.ErrPortRefused) {
		t.Errorf("DialPort without a dialer = %v, want not served", err)
	}
}
