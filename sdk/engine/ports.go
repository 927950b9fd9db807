package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// DialPort connects to TCP port on 127.0.0.1 in a ready sandbox's network
// namespace: a kind that reaches its sandboxes another way implements
// [backend.PortDialer]; otherwise the connection is made from the host in
// the namespace of the sandbox's own process, or of a running container's
// (a sandbox on the host's network: the host's). Nothing listening is
// errdefs.ErrUnavailable.
func (e *Engine) DialPort(ctx context.Context, id string, port int) (net.Conn, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("port %d is not between 1 and 65535: %w", port, errdefs.ErrInvalidArgument)
	}
	sb, err := e.get(id)
	if err != nil {
		return nil, err
	}
	if err := sb.checkNotPaused(); err != nil {
		return nil, err
	}
	st := sb.status()
	if st.State != SandboxReady {
		return nil, fmt.Errorf("sandbox %q is %s, not ready: %w", id, st.State, errdefs.ErrFailedPrecondition)
	}
	sb.mu.Lock()
	impl := sb.impl
	sb.mu.Unlock()
	if d, ok := impl.(backend.PortDialer); ok {
		return d.DialPort(ctx, port)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if st.HostNetwork {
		return dialTCP(ctx, addr)
	}
	if sb.ownNetworkStack() {
		return nil, fmt.Errorf("sandbox %q: reaching the ports of a %s sandbox is not implemented yet: %w", id, st.Kind, errdefs.ErrNotImplemented)
	}
	pid := e.netnsPid(ctx, st)
	if pid == 0 {
		return nil, fmt.Errorf("sandbox %q: no process of it to reach its network from (start a container first): %w", id, errdefs.ErrFailedPrecondition)
	}
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, fmt.Errorf("sandbox %q: open its network namespace: %w", id, err)
	}
	defer ns.Close()
	if isHostNetNS(ns) {
		// A kind whose processes stay in the host's namespace (wasm:
		// instances in a shared runner, WASI preview 1 has no sockets):
		// 127.0.0.1 there is the host's, never the sandbox's.
		return nil, fmt.Errorf("sandbox %q (%s) has no network namespace of its own: it has no ports to reach: %w", id, st.Kind, errdefs.ErrNotImplemented)
	}
	return dialInNetNS(ctx, ns, addr)
}

// ownNetNS is the identity (device, inode) of this process's network
// namespace, read once at start: later, /proc/self/ns/net can be the
// namespace of a sandbox that a thread of ours (the main one among them)
// joined for a moment to dial in it.
var ownNetNS = func() [2]uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return [2]uint64{}
	}
	return [2]uint64{st.Dev, st.Ino}
}()

// isHostNetNS reports whether ns is the network namespace of the host
// (pid 1's) or of this process (unknown: true, the safe answer).
func isHostNetNS(ns *os.File) bool {
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		return true
	}
	if ownNetNS == [2]uint64{} || ownNetNS == [2]uint64{st.Dev, st.Ino} {
		return true
	}
	var hst unix.Stat_t
	return unix.Stat("/proc/1/ns/net", &hst) == nil && hst.Dev == st.Dev && hst.Ino == st.Ino
}

func dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil, fmt.Errorf("nothing listens on %s: %w", addr, errdefs.ErrUnavailable)
	}
	return c, err
}

// dialInNetNS makes a TCP connection from the network namespace ns: the
// socket is created (and belongs to ns for its life) on a thread that
// joined ns, which returns to this process's namespace afterwards, or is
// thrown away when it cannot.
func dialInNetNS(ctx context.Context, ns *os.File, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer own.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("enter the sandbox's network namespace: %w", err)}
			return
		}
		c, err := dialTCP(ctx, addr)
		if unix.Setns(int(own.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else the thread ends with this goroutine, still locked
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// ownNetworkStack reports whether the sandbox's TCP sockets are not the
// host kernel's (a VM's guest kernel), so that a connection made from the
// host in its namespace would not reach them. The vm kind reaches them
// through its guest agent and gVisor's netstack through runsc (both
// [backend.PortDialer]); this guards against a kind that does not.
func (s *sandbox) ownNetworkStack() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rec.Kind == "vm"
}
