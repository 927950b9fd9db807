package wasm

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

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// fifoOpenTimeout bounds how long Start waits for the reader of an output
// FIFO to appear.
const fifoOpenTimeout = 30 * time.Second

// runnerStdio holds the files a runner gets as fds 0, 1 and 2, and the
// write end of a stdin FIFO that the backend keeps open until CloseStdin,
// as containerd's shims do: a client may close and reopen its end of the
// FIFO without the module seeing end of file.
type runnerStdio struct {
	files     [3]*os.File
	stdinHold *os.File
}

// closeChildEnds closes the parent's copies of the runner's fds.
func (r *runnerStdio) closeChildEnds() {
	for i, f := range r.files {
		if f != nil {
			f.Close()
			r.files[i] = nil
		}
	}
}

// close closes everything.
func (r *runnerStdio) close() {
	r.closeChildEnds()
	if r.stdinHold != nil {
		r.stdinHold.Close()
		r.stdinHold = nil
	}
}

// openStdio opens s for a runner. Each path is a FIFO (as containerd and
// the API server make them), a plain file, or a "fifo://" or "file://"
// URI; an empty one means /dev/null.
func openStdio(ctx context.Context, s backend.Stdio) (_ *runnerStdio, retErr error) {
	if s.Terminal {
		return nil, fmt.Errorf("terminals: %w", errdefs.ErrNotImplemented)
	}
	r := &runnerStdio{}
	defer func() {
		if retErr != nil {
			r.close()
		}
	}()
	var err error
	if r.files[0], r.stdinHold, err = openInput(s.Stdin); err != nil {
		return nil, fmt.Errorf("open stdin %q: %w", s.Stdin, err)
	}
	if r.files[1], err = openOutput(ctx, s.Stdout); err != nil {
		return nil, fmt.Errorf("open stdout %q: %w", s.Stdout, err)
	}
	if r.files[2], err = openOutput(ctx, s.Stderr); err != nil {
		return nil, fmt.Errorf("open stderr %q: %w", s.Stderr, err)
	}
	return r, nil
}

// stdioPath parses a stdio name: a path, or a fifo:// or file:// URI.
func stdioPath(name string) (path string, isFile bool, err error) {
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

func openInput(name string) (*os.File, *os.File, error) {
	if name == "" {
		f, err := os.Open(os.DevNull)
		return f, nil, err
	}
	p, _, err := stdioPath(name)
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

func openOutput(ctx context.Context, name string) (*os.File, error) {
	if name == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	p, isFile, err := stdioPath(name)
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
// it, or fails when ctx ends or fifoOpenTimeout passes.
func openFifoWriter(ctx context.Context, p string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, fifoOpenTimeout)
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
