//go:build linux

// Package unixsock listens on unix sockets that only their owner can
// reach from the moment they exist.
//
// net.Listen followed by chmod leaves a window in which the socket file
// has the mode the umask gives (0755 with the usual 022) and anyone may
// connect. Linux creates a socket's file with the mode of the socket's own
// inode (masked by the umask) at bind: a socket fchmod-ed to 0600 before
// bind is never reachable by others. The umask is not touched (it is the
// process's, shared by every thread).
package unixsock

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Listen listens on a unix stream socket at path, of mode 0600 from its
// creation. Closing the listener removes the socket file, as with
// net.Listen.
func Listen(path string) (*net.UnixListener, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: socket: %w", path, err)
	}
	fail := func(op string, err error) (*net.UnixListener, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("listen on %s: %s: %w", path, op, err)
	}
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return fail("fchmod", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return fail("bind", err)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		_ = os.Remove(path)
		return fail("listen", err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(true)
	return ul, nil
}
