package sdk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
)

// portChunk is the most one DialPort message carries.
const portChunk = 32 << 10

// DialPort connects to TCP port on the sandbox's loopback (a server that a
// process in the sandbox runs) through the sandboxer, and returns the
// connection. It is a local socket (with deadlines and CloseWrite, which
// the process sees as end of file) whose bytes the sandboxer carries; it
// ends when the process closes its side, or with the sandbox. Nothing
// listening on the port fails with an error that errdefs.IsUnavailable
// matches. Connections are independent: open as many as needed.
func (s *Sandbox) DialPort(ctx context.Context, port int) (net.Conn, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("DialPort: port %d is not between 1 and 65535: %w", port, errdefs.ErrInvalidArgument)
	}
	// The stream lives as long as the connection, not as ctx.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stream, err := s.client.bidi.DialPort(sctx)
	if err != nil {
		cancel()
		return nil, fromAPI(err)
	}
	fail := func(err error) (net.Conn, error) {
		stream.Close()
		cancel()
		return nil, err
	}
	if err := stream.Send(&sandboxv1.DialPortRequest{Target: &sandboxv1.DialPortTarget{SandboxId: s.ID, Port: uint32(port)}}); err != nil {
		return fail(fromAPI(err))
	}
	// The first answer says whether the connection was made.
	connected := make(chan error, 1)
	go func() {
		_, err := stream.Receive()
		connected <- err
	}()
	select {
	case err := <-connected:
		if err != nil {
			return fail(fromAPI(err))
		}
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	user, ours, err := socketPair()
	if err != nil {
		return fail(err)
	}
	pc := &portConn{UnixConn: user}
	var wg sync.WaitGroup
	// The process's bytes to the user, until the process closes its side
	// (the user reads end of file) or the user's end is gone.
	wg.Go(func() {
		for {
			msg, err := stream.Receive()
			if err != nil {
				if errors.Is(err, io.EOF) {
					_ = ours.CloseWrite()
				}
				return
			}
			if _, err := ours.Write(msg.GetData()); err != nil {
				return
			}
			if msg.GetClosed() {
				// The process closed its side: the user reads end of
				// file, and may still write until it closes its own.
				_ = ours.CloseWrite()
				return
			}
		}
	})
	// The user's bytes to the process, until the user closes (or
	// half-closes) its end: the process then reads end of file.
	wg.Go(func() {
		buf := make([]byte, portChunk)
		for {
			n, err := ours.Read(buf)
			if n > 0 {
				if serr := stream.Send(&sandboxv1.DialPortRequest{Data: bytes.Clone(buf[:n])}); serr != nil {
					return
				}
			}
			if err != nil {
				_ = stream.CloseSend()
				if pc.closed.Load() {
					// Closed, not half-closed: the answers are not wanted.
					cancel()
				}
				return
			}
		}
	})
	go func() {
		wg.Wait()
		ours.Close()
		stream.Close()
		cancel()
	}()
	return pc, nil
}

// portConn is the user's end of a DialPort connection.
type portConn struct {
	*net.UnixConn
	closed atomic.Bool
}

// Close closes the connection: what was written is still delivered, then
// the stream ends without waiting for the process's side.
func (c *portConn) Close() error {
	c.closed.Store(true)
	return c.UnixConn.Close()
}

// socketPair returns the two ends of a connected local stream socket.
func socketPair() (user, ours *net.UnixConn, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	conv := func(fd int, name string) (*net.UnixConn, error) {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			return nil, err
		}
		return c.(*net.UnixConn), nil
	}
	if user, err = conv(fds[0], "port"); err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	if ours, err = conv(fds[1], "port-relay"); err != nil {
		user.Close()
		return nil, nil, err
	}
	return user, ours, nil
}
