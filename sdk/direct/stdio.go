package direct

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// Stream is an output stream of a process.
type Stream int

// Output streams; the numbers are those of the API's OutputStream.
const (
	Stdout Stream = 1
	Stderr Stream = 2
)

// procIO is the host side of one process's stdio: FIFOs the backend opens,
// the ring its output is copied to, and the stdin writer.
//
// The output FIFOs live in the container's directory and the ring in
// <container dir>/output/<process>: both outlive this process, so that
// the next service (after a restart of the sandboxer) opens the FIFOs
// again and goes on filling the same ring. What the process wrote while
// nobody copied waits in the FIFOs (whose read ends the kind holds).
type procIO struct {
	stdio backend.Stdio
	ring  *ring

	// readers are the read ends of the output FIFOs (under rmu); exited
	// is set once the process exited, stopped when the copies are to stop.
	rmu     sync.Mutex
	readers []*os.File
	exited  atomic.Bool
	stopped atomic.Bool
	wg      sync.WaitGroup

	mu    sync.Mutex
	stdin io.WriteCloser
}

// ringDir is where the ring of a process is, the init for an empty execID.
func ringDir(containerDir, execID string) string {
	name := "init"
	if execID != "" {
		name = "exec-" + execID
	}
	return filepath.Join(containerDir, "output", name)
}

// newProcIO creates the FIFOs for a process in dir and its ring, and
// starts copying its output. prefix distinguishes exec'd processes from
// the init.
func (s *Service) newProcIO(dir, execID string, openStdin, terminal bool) (_ *procIO, retErr error) {
	prefix := ""
	if execID != "" {
		prefix = "exec-" + execID + "-"
	}
	p := &procIO{}
	defer func() {
		if retErr != nil {
			p.close()
		}
	}()
	p.stdio.Terminal = terminal
	p.stdio.Stdout = filepath.Join(dir, prefix+"stdout")
	if !terminal {
		p.stdio.Stderr = filepath.Join(dir, prefix+"stderr")
	}
	for _, path := range []string{p.stdio.Stdout, p.stdio.Stderr} {
		if path == "" {
			continue
		}
		// An exec ID may be used again once its process is gone.
		if err := unix.Mkfifo(path, 0o600); err != nil && !(errors.Is(err, unix.EEXIST) && isFIFO(path)) {
			return nil, fmt.Errorf("create fifo %s: %w", path, err)
		}
	}
	if err := os.RemoveAll(ringDir(dir, execID)); err != nil {
		return nil, err
	}
	r, err := openRing(ringDir(dir, execID), s.ringSize)
	if err != nil {
		return nil, fmt.Errorf("open output ring: %w", err)
	}
	p.ring = r
	if err := p.startCopies(); err != nil {
		return nil, err
	}
	if openStdin {
		path := filepath.Join(dir, prefix+"stdin")
		w, err := fifo.OpenFifo(context.Background(), path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create stdin fifo: %w", err)
		}
		p.stdin = w
		p.stdio.Stdin = path
	}
	return p, nil
}

// recoverProcIO takes over the output of a process made by an earlier
// service: its ring, and the copies from its output FIFOs where they are
// still there. Its stdin is not reopened (WriteStdin then fails).
func (s *Service) recoverProcIO(dir, execID string, stdio backend.Stdio) (_ *procIO, retErr error) {
	p := &procIO{stdio: backend.Stdio{Stdout: stdio.Stdout, Stderr: stdio.Stderr, Terminal: stdio.Terminal}}
	defer func() {
		if retErr != nil {
			p.close()
		}
	}()
	for _, path := range []*string{&p.stdio.Stdout, &p.stdio.Stderr} {
		// Only the FIFOs this package made: in the container's directory.
		if *path != "" && (filepath.Dir(*path) != dir || !isFIFO(*path)) {
			*path = ""
		}
	}
	r, err := openRing(ringDir(dir, execID), s.ringSize)
	if err != nil {
		return nil, fmt.Errorf("open output ring: %w", err)
	}
	p.ring = r
	return p, p.startCopies()
}

func isFIFO(path string) bool {
	st, err := os.Lstat(path)
	return err == nil && st.Mode().Type() == os.ModeNamedPipe
}

// startCopies opens the read ends of the output FIFOs and copies them
// into the ring.
func (p *procIO) startCopies() error {
	streams := []Stream{Stdout, Stderr}
	for i, path := range []string{p.stdio.Stdout, p.stdio.Stderr} {
		if path == "" || (i == 1 && path == p.stdio.Stdout) {
			continue
		}
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: path, Err: err}
		}
		f := os.NewFile(uintptr(fd), path)
		p.rmu.Lock()
		p.readers = append(p.readers, f)
		p.rmu.Unlock()
		p.ring.streamStarted()
		stream := streams[i]
		p.wg.Go(func() {
			defer p.ring.streamDone()
			_ = p.copy(stream, f)
		})
	}
	return nil
}

// copy moves what the process writes to f into the ring until the FIFO
// has no writer left (after a writer was seen, or after the process
// exited) and nothing buffered, or until the copies stop.
//
// A FIFO read end opened without waiting reads end of file before any
// writer opened it, too; poll(2) tells the two apart (POLLHUP only once a
// writer was there), and once the process exited an empty FIFO without
// writers is its end either way.
func (p *procIO) copy(stream Stream, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	for {
		var done bool
		var cerr error
		err := rc.Read(func(fd uintptr) bool {
			for {
				if p.stopped.Load() {
					done = true
					return true
				}
				k, err := unix.IoctlGetInt(int(fd), unix.TIOCINQ) // FIONREAD
				if err != nil {
					cerr, done = err, true
					return true
				}
				if k > 0 {
					if _, err := p.ring.spliceFrom(stream, int(fd), k); err != nil && !errors.Is(err, unix.EAGAIN) {
						cerr, done = err, true
						return true
					}
					continue
				}
				pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				if _, err := unix.Poll(pfd, 0); err != nil && !errors.Is(err, unix.EINTR) {
					cerr, done = err, true
					return true
				}
				switch {
				case pfd[0].Revents&unix.POLLIN != 0:
					continue
				case pfd[0].Revents&unix.POLLHUP != 0 || p.exited.Load():
					done = true
					return true
				}
				return false
			}
		})
		if done {
			return cerr
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// Woken by markExited or stop: look again.
			_ = f.SetReadDeadline(time.Time{})
			continue
		}
		return err
	}
}

// wake makes the copies look at the FIFOs and the flags again.
func (p *procIO) wake() {
	p.rmu.Lock()
	defer p.rmu.Unlock()
	for _, f := range p.readers {
		_ = f.SetReadDeadline(time.Now())
	}
}

// markExited tells the copies that the process exited: an empty FIFO
// without writers is now the end of its output.
func (p *procIO) markExited() {
	p.exited.Store(true)
	p.wake()
}

// write sends data to the process's stdin; eof closes it afterwards.
func (p *procIO) write(data []byte, eof bool) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdin == nil {
		if len(data) == 0 && eof {
			return 0, nil
		}
		return 0, fmt.Errorf("process has no open stdin (create it with open_stdin; a restarted sandboxer keeps none): %w", errdefs.ErrFailedPrecondition)
	}
	n, err := p.stdin.Write(data)
	if err != nil {
		return n, fmt.Errorf("write stdin: %w", err)
	}
	if eof {
		err = p.stdin.Close()
		p.stdin = nil
	}
	return n, err
}

func (p *procIO) closeStdin() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdin == nil {
		return nil
	}
	err := p.stdin.Close()
	p.stdin = nil
	return err
}

// close stops the copies (what the FIFOs still hold stays there for the
// next reader) and closes the ring and the stdin writer.
func (p *procIO) close() {
	_ = p.closeStdin()
	p.stopped.Store(true)
	p.wake()
	p.wg.Wait()
	p.rmu.Lock()
	for _, r := range p.readers {
		r.Close()
	}
	p.readers = nil
	p.rmu.Unlock()
	if p.ring != nil {
		p.ring.close()
	}
}
