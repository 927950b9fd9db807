// Package hoststdio opens the host side of a process's standard streams
// as containerd and Magnetar's API server hand them to a backend: FIFO
// paths, plain files, or fifo:// and file:// URIs.
package hoststdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	"golang.org/x/sys/unix"
)

// FifoOpenTimeout bounds how long OpenOutput waits for the reader of an
// output FIFO to appear.
const FifoOpenTimeout = 30 * time.Second

// Path parses a stdio name: a path, or a fifo:// or file:// URI; isFile
// is true for file:// (a log file to append to).
func Path(name string) (path string, isFile bool, err error) {
	if !strings.Contains(name, "://") {
		return name, false, nil
	}
	u, err := url.Parse(name)
	if err != nil {
		return "", false, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	switch u.Scheme {
	case "fifo":
		return u.Path, false, nil
	case "file":
		return u.Path, true, nil
	}
	return "", false, fmt.Errorf("stdio scheme %q: %w", u.Scheme, errdefs.ErrNotImplemented)
}

// OpenInput opens a stdin path for a child process: "" is /dev/null; a
// FIFO gives its read end and a write end to hold open until the caller's
// CloseStdin (as containerd's shims do), so that a client may reopen its
// end without the child seeing end of file; a plain file is read.
func OpenInput(name string) (*os.File, *os.File, error) {
	if name == "" {
		f, err := os.Open(os.DevNull)
		return f, nil, err
	}
	p, _, err := Path(name)
	if err != nil {
		return nil, nil, err
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, nil, fmt.Errorf("%v: %w", err, errdefs.ErrNotFound)
	}
	if st.Mode()&os.ModeNamedPipe == 0 {
		f, err := os.Open(p)
		return f, nil, err
	}
	// The read end for the runner, and a write end held until CloseStdin.
	// Both open at once: the held write end is the writer the read end
	// waits for.
	rfd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	wfd, err := unix.Open(p, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(rfd)
		return nil, nil, err
	}
	if err := unix.SetNonblock(rfd, false); err != nil {
		unix.Close(rfd)
		unix.Close(wfd)
		return nil, nil, err
	}
	return os.NewFile(uintptr(rfd), p), os.NewFile(uintptr(wfd), p+" (held)"), nil
}

// OpenOutput opens a stdout or stderr path for writing: "" is /dev/null; a
// FIFO's write end is opened once its reader is there (waiting up to
// FifoOpenTimeout, like containerd's shims); a file (or file:// URI, or a
// path that does not exist yet) is created if need be and appended to.
func OpenOutput(ctx context.Context, name string) (*os.File, error) {
	if name == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	p, isFile, err := Path(name)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(p)
	switch {
	case isFile || errors.Is(err, os.ErrNotExist):
		// A log file: created if need be, appended to.
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		return os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	case err != nil:
		return nil, err
	case st.Mode()&os.ModeNamedPipe == 0:
		return os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	}
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENXIO) {
		// No reader yet: wait for one, like containerd's shims do.
		fd, err = openFifoWriter(ctx, p)
	}
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), p), nil
}

// openFifoWriter opens the write end of the FIFO at p once a reader opens
// it, or fails when ctx ends or FifoOpenTimeout passes.
func openFifoWriter(ctx context.Context, p string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, FifoOpenTimeout)
	defer cancel()
	rwc, err := fifo.OpenFifo(ctx, p, syscall.O_WRONLY, 0)
	if err != nil {
		return -1, fmt.Errorf("wait for a reader: %w", err)
	}
	defer rwc.Close()
	return dupFd(rwc)
}

// dupFd duplicates the descriptor behind a containerd fifo.
func dupFd(rwc io.ReadWriteCloser) (int, error) {
	sc, ok := rwc.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("fifo has no file descriptor: %w", errdefs.ErrNotImplemented)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	return nfd, derr
}
