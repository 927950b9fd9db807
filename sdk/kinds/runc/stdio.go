package runc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// A process's standard streams are the FIFOs (or files) containerd hands
// over, passed to runc as they are: the container writes into the output
// FIFOs and reads from the stdin FIFO itself, with no copy and no pipe in
// between, so that neither its output nor its input depends on this
// process staying alive. What this process does keep is a FIFOHolder's
// ends of the FIFOs:
//
//   - an output FIFO's read end, never read from, for the process's life:
//     the FIFO always has a reader, so the container's writes never fail
//     with EPIPE (or SIGPIPE) while containerd is away or restarting; they
//     wait in the FIFO for containerd's reader instead;
//   - a stdin FIFO's write end until CloseStdin, so that the container
//     reads end of file only after CloseStdin and once containerd's writer
//     closed too, whatever containerd does with its own end meanwhile.
//
// Terminals are the exception: the pty master has to be copied to and
// from the FIFOs, which this process does (package keptio), keeping the
// master and the FIFO ends in Config.FDStore so that the next process
// resumes the copies; without a store they end with this process. (A
// terminal whose output goes to a logging binary is copied by containerd's
// console copy and ends with this process.)

// FIFOHolder keeps ends of a process's stdio FIFOs open on behalf of the
// runc kind: an output FIFO's read end for the process's life, a stdin
// FIFO's write end until CloseStdin (see the comment at the top of
// stdio.go). The runc kind never reads from or writes to what it holds:
// holding is all there is, so the ends may live in another process, such
// as a supervisor that outlives the sandboxer.
type FIFOHolder interface {
	// Hold opens the FIFO at path with flag (unix.O_RDONLY or
	// unix.O_WRONLY, with unix.O_NONBLOCK: the open must not wait; the
	// runc kind asks for a write end only while it has the FIFO open for
	// reading, so that it does not fail with ENXIO) and keeps it open
	// until release is called. release is called at most once.
	Hold(path string, flag int) (release func() error, err error)
}

// LocalFIFOHolder is the default FIFOHolder: the ends are held by this
// process, so they last as long as it does.
type LocalFIFOHolder struct{}

// Hold opens path with flag in this process.
func (LocalFIFOHolder) Hold(path string, flag int) (func() error, error) {
	fd, err := unix.Open(path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var once sync.Once
	var cerr error
	return func() error {
		once.Do(func() { cerr = unix.Close(fd) })
		return cerr
	}, nil
}

// storeHolder is the FIFOHolder of a backend with an FDStore: the held
// ends live in the store, named after the FIFO and the direction, so that
// the next process adopts them (see Adopt) instead of opening new ones.
type storeHolder struct {
	store backend.FDStore

	mu   sync.Mutex
	refs map[string]int
}

func newStoreHolder(store backend.FDStore) *storeHolder {
	return &storeHolder{store: store, refs: map[string]int{}}
}

func holdName(path string, flag int) string {
	if flag&unix.O_ACCMODE == unix.O_WRONLY {
		return "runc/hold/w" + path
	}
	return "runc/hold/r" + path
}

// Hold opens path and keeps it in the store (or adopts what an earlier
// process kept there).
func (h *storeHolder) Hold(path string, flag int) (func() error, error) {
	name := holdName(path, flag)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.refs[name] == 0 {
		if f := h.store.Take(name); f != nil {
			f.Close() // the store's copy is the hold
		} else {
			fd, err := unix.Open(path, flag|unix.O_CLOEXEC, 0)
			if err != nil {
				return nil, &os.PathError{Op: "open", Path: path, Err: err}
			}
			f := os.NewFile(uintptr(fd), path)
			err = h.store.Store(name, f)
			f.Close()
			if err != nil {
				return nil, err
			}
		}
	}
	h.refs[name]++
	return h.releaser(name), nil
}

// Adopt takes over a hold an earlier process kept, if there is one.
func (h *storeHolder) Adopt(path string, flag int) (func() error, bool) {
	name := holdName(path, flag)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.refs[name] == 0 {
		f := h.store.Take(name)
		if f == nil {
			return nil, false
		}
		f.Close()
	}
	h.refs[name]++
	return h.releaser(name), true
}

func (h *storeHolder) releaser(name string) func() error {
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.refs[name]--; h.refs[name] <= 0 {
				delete(h.refs, name)
				err = h.store.Remove(name)
			}
		})
		return err
	}
}

// adopter is a FIFOHolder that can take over the holds of an earlier
// process.
type adopter interface {
	Adopt(path string, flag int) (release func() error, ok bool)
}

// keptTerminal tells whether a terminal's copy is this package's (its
// output is a FIFO or file), not containerd's console copy (a logging
// binary).
func keptTerminal(s backend.Stdio) bool {
	if !s.Terminal {
		return false
	}
	u, err := url.Parse(s.Stdout)
	return err != nil || u.Scheme == "" || u.Scheme == "fifo" || u.Scheme == "file"
}

// procIO is the host side of a process's standard streams. It is the
// go-runc IO of `runc create` and `runc exec`: runc hands its own stdio to
// the container's process.
type procIO struct {
	// stdin, stdout and stderr are the files the process gets (nil: runc
	// gets /dev/null). They are closed here once runc started.
	stdin, stdout, stderr *os.File
	// bin is a logging binary's IO (a binary:// stdout), or nil.
	bin gorunc.IO

	mu sync.Mutex
	// outHolds release the held read ends of the output FIFOs.
	outHolds []func() error
	// inHold releases the held write end of the stdin FIFO.
	inHold func() error
}

var _ gorunc.IO = (*procIO)(nil)

// Set gives runc the process's stdio.
func (p *procIO) Set(cmd *exec.Cmd) {
	if p.bin != nil {
		p.bin.Set(cmd)
	}
	if p.stdin != nil {
		cmd.Stdin = p.stdin
	}
	if p.stdout != nil {
		cmd.Stdout = p.stdout
	}
	if p.stderr != nil {
		cmd.Stderr = p.stderr
	}
}

// Stdin is nil: nothing is copied.
func (p *procIO) Stdin() io.WriteCloser { return nil }

// Stdout is nil: nothing is copied.
func (p *procIO) Stdout() io.ReadCloser { return nil }

// Stderr is nil: nothing is copied.
func (p *procIO) Stderr() io.ReadCloser { return nil }

// Close releases everything: the process's files, the held FIFO ends and
// a logging binary.
func (p *procIO) Close() error {
	if p == nil {
		return nil
	}
	p.closeChildEnds()
	err := p.closeStdin()
	p.mu.Lock()
	holds := p.outHolds
	p.outHolds = nil
	p.mu.Unlock()
	for _, release := range holds {
		err = errors.Join(err, release())
	}
	if p.bin != nil {
		err = errors.Join(err, p.bin.Close())
	}
	return err
}

// closeChildEnds closes this process's copies of the files runc passed on.
func (p *procIO) closeChildEnds() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range []**os.File{&p.stdin, &p.stdout, &p.stderr} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
	if c, ok := p.bin.(gorunc.StartCloser); ok {
		_ = c.CloseAfterStart()
	}
}

// closeStdin releases the held write end of the stdin FIFO (CloseStdin):
// the process reads end of file once the other writers are gone too.
func (p *procIO) closeStdin() error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	release := p.inHold
	p.inHold = nil
	p.mu.Unlock()
	if release == nil {
		return nil
	}
	return release()
}

// openIO opens a process's stdio: for a terminal only the hold of its
// stdin FIFO (the console copy opens the rest). ns is the containerd
// namespace a logging binary is told.
func openIO(ctx context.Context, h FIFOHolder, s backend.Stdio, id, ns string) (_ *procIO, retErr error) {
	p := &procIO{}
	defer func() {
		if retErr != nil {
			_ = p.Close()
		}
	}()
	if s.Stdin == "" && s.Stdout == "" && s.Stderr == "" {
		// Like containerd's null IO: /dev/null opened for reading as
		// stdout and stderr (and os/exec's /dev/null as stdin).
		f, err := os.Open(os.DevNull)
		if err != nil {
			return nil, err
		}
		p.stdout, p.stderr = f, f
		return p, nil
	}
	if keptTerminal(s) {
		return p, nil // the terminal keeps its FIFO ends itself
	}
	if s.Stdin != "" {
		in, err := p.openStdin(h, s.Stdin)
		if err != nil {
			return nil, fmt.Errorf("open stdin %q: %w", s.Stdin, err)
		}
		if s.Terminal {
			in.Close() // the console copy opens its own
		} else {
			p.stdin = in
		}
	}
	if s.Terminal {
		return p, nil
	}
	u, err := url.Parse(s.Stdout)
	if err != nil {
		return nil, fmt.Errorf("unable to parse stdout uri: %w", err)
	}
	switch u.Scheme {
	case "", "fifo":
		if u.Scheme == "" {
			u.Path = s.Stdout
		}
		if p.stdout, err = p.openOutput(h, u.Path); err != nil {
			return nil, fmt.Errorf("open stdout %q: %w", s.Stdout, err)
		}
		if s.Stderr == s.Stdout {
			p.stderr = p.stdout // one file as both: like 2>&1
			return p, nil
		}
		if p.stderr, err = p.openOutput(h, s.Stderr); err != nil {
			return nil, fmt.Errorf("open stderr %q: %w", s.Stderr, err)
		}
	case "file":
		// A log file for both streams, as containerd's shim does.
		if err := os.MkdirAll(filepath.Dir(u.Path), 0o755); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(u.Path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, err
		}
		p.stdout, p.stderr = f, f
	case "binary", "binary-v2":
		if _, err := namespaces.NamespaceRequired(ctx); err != nil {
			ctx = namespaces.WithNamespace(ctx, ns)
		}
		if p.bin, err = process.NewBinaryIO(ctx, id, u); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown STDIO scheme %s", u.Scheme)
	}
	return p, nil
}

// openStdin opens the read end of the stdin FIFO at path for the process,
// blocking as a process expects it, and holds a write end; a plain file is
// just opened.
func (p *procIO) openStdin(h FIFOHolder, path string) (*os.File, error) {
	if !isFifo(path) {
		return os.Open(path)
	}
	// The read end first: a non-blocking open for reading needs no
	// writer, and the hold's non-blocking open for writing needs a reader.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	release, err := h.Hold(path, unix.O_WRONLY|unix.O_NONBLOCK)
	if err == nil {
		err = unix.SetNonblock(fd, false)
	}
	if err != nil {
		unix.Close(fd)
		if release != nil {
			_ = release()
		}
		return nil, err
	}
	p.mu.Lock()
	p.inHold = release
	p.mu.Unlock()
	return os.NewFile(uintptr(fd), path), nil
}

// openOutput opens path for the process to write to: a FIFO's write end,
// after a held read end; a plain file (which must exist) to append to.
func (p *procIO) openOutput(h FIFOHolder, path string) (*os.File, error) {
	if !isFifo(path) {
		return os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	}
	// The held read end first: then the write end opens at once, and
	// the FIFO has a reader for as long as the hold lasts.
	release, err := h.Hold(path, unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.outHolds = append(p.outHolds, release)
	p.mu.Unlock()
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// recoverIO holds again the FIFO ends of a process that already runs (a
// container recovered after a restart). A holder that kept them (an
// FDStore's) hands them over: the output FIFOs' read ends and the stdin
// FIFO's write end, which it keeps until CloseStdin. Otherwise the read
// ends of the output FIFOs are held anew where someone still reads them
// (containerd); a FIFO that is gone, or whose reader went with the
// previous sandboxer (a streamed-stdio bridge), is left alone: a held read
// end there would make the container block once the FIFO is full instead
// of failing to write. Stdin is not held anew: CloseStdin may have come
// before the restart.
func recoverIO(h FIFOHolder, s backend.Stdio) *procIO {
	p := &procIO{}
	if s.Terminal {
		return p
	}
	ad, _ := h.(adopter)
	for i, path := range []string{s.Stdout, s.Stderr} {
		if path == "" || (i == 1 && path == s.Stdout) || !isFifo(path) {
			continue
		}
		if ad != nil {
			if release, ok := ad.Adopt(path, unix.O_RDONLY|unix.O_NONBLOCK); ok {
				p.outHolds = append(p.outHolds, release)
				continue
			}
		}
		// Opening for writing without waiting succeeds only if the FIFO
		// has a reader.
		probe, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		if release, err := h.Hold(path, unix.O_RDONLY|unix.O_NONBLOCK); err == nil {
			p.outHolds = append(p.outHolds, release)
		}
		unix.Close(probe)
	}
	if ad != nil && s.Stdin != "" {
		if release, ok := ad.Adopt(s.Stdin, unix.O_WRONLY|unix.O_NONBLOCK); ok {
			p.inHold = release
		}
	}
	return p
}

func isFifo(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode()&os.ModeNamedPipe != 0
}
