package gvisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

var _ backend.PortDialer = (*sandbox)(nil)

// DialPort connects to TCP port on the sandbox's loopback, in gVisor's own
// network stack: `runsc port-forward --stream` connects to a unix socket
// of ours and hands its end to the sentry, which connects to the port and
// carries the connection; the end we accept is the connection.
func (s *sandbox) DialPort(ctx context.Context, port int) (net.Conn, error) {
	if s.st.Network == networkHost {
		// The host's stack: its loopback is the host's.
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("nothing listens on port %d: %w", port, errdefs.ErrUnavailable)
		}
		return c, err
	}
	if s.st.Network == networkNone {
		// runsc port-forward reaches gVisor's netstack only when it runs
		// on a network namespace's interfaces (--network=sandbox).
		return nil, fmt.Errorf("a gvisor sandbox without a network (loopback only) has no port forwarding in runsc; give it a network namespace: %w", errdefs.ErrNotImplemented)
	}
	// A short, private path: unix socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp(s.b.cfg.Root, "pf-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	type accepted struct {
		c   *net.UnixConn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.AcceptUnix()
		ch <- accepted{c, err}
	}()
	// The root container (the pod init) is always there.
	if err := s.runsc(ctx, "port-forward", "--stream", path, s.cfg.ID, strconv.Itoa(port)); err != nil {
		ln.Close()
		if a := <-ch; a.c != nil {
			a.c.Close()
		}
		if strings.Contains(err.Error(), "refused") {
			return nil, fmt.Errorf("nothing listens on port %d in the sandbox: %w", port, errdefs.ErrUnavailable)
		}
		return nil, err
	}
	select {
	case a := <-ch:
		if a.err != nil {
			return nil, fmt.Errorf("port %d: runsc gave no connection: %w", port, a.err)
		}
		return a.c, nil
	case <-ctx.Done():
		ln.Close()
		if a := <-ch; a.c != nil {
			a.c.Close()
		}
		return nil, errors.Join(ctx.Err(), errdefs.ErrUnavailable)
	}
}
