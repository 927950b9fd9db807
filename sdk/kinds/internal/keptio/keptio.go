// Package keptio copies a process's standard streams in the sandboxer in
// a way that survives a restart of the sandboxer: every descriptor the
// copies need (a terminal's pty master, the ends of stdio FIFOs and
// pipes, and the FIFO ends held so that neither side sees end of file or
// EPIPE) is kept in a [backend.FDStore] as well, under a name, so that
// while no sandboxer runs the container's writes wait in the pty or pipe
// (it blocks once they are full) instead of failing, containerd's readers
// see no end of file, and the next sandboxer takes the descriptors back
// and resumes the copies. Without a store the copies end with the
// process, as containerd's do.
//
// The copies move the bytes with splice(2) (one end is always a pipe: a
// FIFO, or the pipes the gvisor kind reads), from the pty or pipe into
// the other in one system call, never through this process's memory: a
// sandboxer killed at any point loses and repeats nothing, every byte is
// either still in the source or already in the destination, and a
// detached copy (the sandboxer stops for an upgrade) just stops. Where
// the kernel refuses to splice (a terminal on Linux 5.10, which lost
// splice from ttys until 5.11; a destination file opened to append) the
// copy goes through a buffer: a detached copy finishes its write first,
// and one killed between a read and its write loses what it read.
package keptio

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// detachWriteGrace bounds how long a detached copy may take to finish
// its last write (the reader may be gone).
const detachWriteGrace = 2 * time.Second

// Set is the kept descriptors and copies of one process's stdio, named
// prefix + "/" + role in the store. It is safe for concurrent use.
type Set struct {
	store  backend.FDStore
	prefix string

	mu     sync.Mutex
	files  map[string]*os.File // role -> this process's (pollable) copy
	copies []*copier
}

// NewSet returns an empty set; store may be nil (nothing is kept beyond
// this process).
func NewSet(store backend.FDStore, prefix string) *Set {
	return &Set{store: store, prefix: prefix, files: map[string]*os.File{}}
}

func (s *Set) name(role string) string { return s.prefix + "/" + role }

// Add keeps f as role: in the store, and in this process as a pollable
// copy, which it returns. f is closed.
func (s *Set) Add(role string, f *os.File) (*os.File, error) {
	p, err := pollable(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.name(role), err)
	}
	if s.store != nil {
		if err := s.store.Store(s.name(role), p); err != nil {
			p.Close()
			return nil, fmt.Errorf("keep %s: %w", s.name(role), err)
		}
	}
	s.mu.Lock()
	if old := s.files[role]; old != nil {
		old.Close()
	}
	s.files[role] = p
	s.mu.Unlock()
	return p, nil
}

// Resume takes back role from the store, as an earlier process kept it,
// and returns this process's pollable copy; nil when there is none.
func (s *Set) Resume(role string) *os.File {
	if s.store == nil {
		return nil
	}
	f := s.store.Take(s.name(role))
	if f == nil {
		return nil
	}
	p, err := pollable(f)
	if err != nil {
		_ = s.store.Remove(s.name(role))
		return nil
	}
	s.mu.Lock()
	s.files[role] = p
	s.mu.Unlock()
	return p
}

// Get returns this process's copy of role, or nil.
func (s *Set) Get(role string) *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.files[role]
}

// Has tells whether role is kept.
func (s *Set) Has(role string) bool { return s.Get(role) != nil }

// Release closes roles here and in the store.
func (s *Set) Release(roles ...string) error {
	var errs []error
	for _, role := range roles {
		s.mu.Lock()
		f := s.files[role]
		delete(s.files, role)
		s.mu.Unlock()
		if f == nil {
			continue
		}
		f.Close()
		if s.store != nil {
			errs = append(errs, s.store.Remove(s.name(role)))
		}
	}
	return errors.Join(errs...)
}

// Copy copies role src to role dst until src ends (end of file, or EIO
// from a pty master whose terminal is closed) or dst fails; then it calls
// ended, unless the set was detached.
// The result is closed when the copy ended.
func (s *Set) Copy(dst, src string, ended func()) (<-chan struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, r := s.files[dst], s.files[src]
	if d == nil || r == nil {
		return nil, fmt.Errorf("copy %s to %s: not kept", s.name(src), s.name(dst))
	}
	c := &copier{src: r, dst: d, done: make(chan struct{})}
	s.copies = append(s.copies, c)
	go c.run(ended)
	return c.done, nil
}

// Detach stops the copies (each finishes the write under way) and closes
// this process's copies of the descriptors; the store keeps them for the
// next process, which resumes.
func (s *Set) Detach() {
	s.stopCopies()
	s.mu.Lock()
	defer s.mu.Unlock()
	for role, f := range s.files {
		f.Close()
		delete(s.files, role)
	}
}

// Close stops the copies and releases everything, in the store too.
func (s *Set) Close() error {
	s.stopCopies()
	s.mu.Lock()
	roles := make([]string, 0, len(s.files))
	for role := range s.files {
		roles = append(roles, role)
	}
	s.mu.Unlock()
	return s.Release(roles...)
}

func (s *Set) stopCopies() {
	s.mu.Lock()
	copies := s.copies
	s.copies = nil
	s.mu.Unlock()
	for _, c := range copies {
		c.stop()
	}
}

// copier copies src to dst.
type copier struct {
	src, dst *os.File
	stopped  atomic.Bool
	buffered atomic.Bool // copying through memory (no splice)
	done     chan struct{}
}

// testHookMoved, when set (by tests), is called after each chunk of n
// bytes left src: after a splice, or, when copying through memory, after
// the read and before the write.
var testHookMoved func(n int)

func (c *copier) run(ended func()) {
	defer close(c.done)
	err := c.splice()
	if errors.Is(err, errNoSplice) {
		c.buffered.Store(true)
		err = c.copyBuffer()
	}
	if err != nil && !c.stopped.Load() && ended != nil {
		ended()
	}
}

// errNoSplice: the kernel cannot splice from src to dst (a terminal on
// Linux 5.10, which lost splice from ttys until 5.11; a destination file
// opened to append).
var errNoSplice = errors.New("splice not supported")

// spliceChunk is the most a splice asks to move at once (a pipe holds
// 64 KiB by default).
const spliceChunk = 1 << 20

// splice moves src to dst with splice(2), which one end being a pipe
// allows (a FIFO, or the pipes the gvisor kind reads): the bytes go from
// the pty or pipe into the other in one system call, never through this
// process's memory, so that a kill of the process at any point loses and
// repeats nothing. It returns the error that ended the copy (io.EOF at
// the end of src), or errNoSplice before anything moved when the kernel
// refuses.
func (c *copier) splice() error {
	src, err := c.src.SyscallConn()
	if err != nil {
		return err
	}
	dst, err := c.dst.SyscallConn()
	if err != nil {
		return err
	}
	moved := false
	tty := isTerminal(src)
	zeros := 0
	for {
		var n int
		var serr error
		dstFull := false
		rerr := src.Read(func(sfd uintptr) bool {
			cerr := dst.Control(func(dfd uintptr) {
				var m int64
				m, serr = unix.Splice(int(sfd), nil, int(dfd), nil, spliceChunk, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
				n = int(m)
				if n == 0 && serr == nil && tty {
					// A terminal's end is EIO (the other side closed)
					// or a hang-up (POLLHUP); an empty splice while it
					// is readable is tried again (an edge-triggered
					// wait would not wake), a bounded number of times;
					// while it is not readable, the copy waits.
					if in, _ := ready(int(sfd), -1); !in {
						serr = unix.EAGAIN
						return
					} else if !hungUp(int(sfd)) && zeros < maxZeros {
						zeros++
						serr = unix.EINTR
						return
					}
				}
				if serr != unix.EAGAIN {
					return
				}
				// Either end may be why: wait for the one that is not
				// ready (an edge after this poll wakes the wait).
				in, out := ready(int(sfd), int(dfd))
				switch {
				case !out:
					dstFull = true
				case in:
					serr = unix.EINTR // both ready now: again
				}
			})
			if cerr != nil {
				serr = cerr
			}
			return dstFull || serr != unix.EAGAIN
		})
		switch {
		case rerr != nil:
			return rerr
		case dstFull:
			if werr := dst.Write(func(dfd uintptr) bool { _, out := ready(-1, int(dfd)); return out }); werr != nil {
				return werr
			}
			continue
		case serr == unix.EINTR:
			continue
		case (serr == unix.EINVAL || serr == unix.ENOSYS) && !moved:
			return errNoSplice
		case serr != nil:
			return serr
		case n == 0:
			return io.EOF
		}
		moved, zeros = true, 0
		if testHookMoved != nil {
			testHookMoved(n)
		}
	}
}

// maxZeros bounds the empty splices in a row from a terminal that is
// readable and not hung up before the copy takes it as ended.
const maxZeros = 64

// ready polls whether rfd has something to read (or is at its end, or
// failed) and wfd room to write, without waiting; -1 is not polled.
func ready(rfd, wfd int) (in, out bool) {
	fds := []unix.PollFd{{Fd: int32(rfd), Events: unix.POLLIN}, {Fd: int32(wfd), Events: unix.POLLOUT}}
	for {
		if _, err := unix.Poll(fds, 0); err != unix.EINTR {
			break
		}
	}
	return rfd >= 0 && fds[0].Revents != 0, wfd >= 0 && fds[1].Revents != 0
}

// hungUp tells whether fd's other side hung up.
func hungUp(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	_, _ = unix.Poll(fds, 0)
	return fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0
}

// isTerminal tells whether rc is a terminal.
func isTerminal(rc syscall.RawConn) bool {
	tty := false
	_ = rc.Control(func(fd uintptr) {
		_, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
		tty = err == nil
	})
	return tty
}

// copyBuffer copies src to dst through a buffer, where splice cannot: a
// kill between a read and its write loses what was read.
func (c *copier) copyBuffer() error {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.src.Read(buf)
		if n > 0 {
			if testHookMoved != nil {
				testHookMoved(n)
			}
			if _, werr := c.dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			return err
		}
	}
}

// stop interrupts the copy: a splice needs no grace (nothing is held in
// this process); a write of what a buffered copy read gets
// detachWriteGrace.
func (c *copier) stop() {
	c.stopped.Store(true)
	_ = c.src.SetReadDeadline(time.Now())
	grace := time.Duration(0)
	if c.buffered.Load() {
		grace = detachWriteGrace
	}
	_ = c.dst.SetWriteDeadline(time.Now().Add(grace))
	<-c.done
}

// pollable returns a non-blocking copy of f that Go's poller drives, so
// that reads and writes can be interrupted with deadlines; f is closed.
// O_NONBLOCK is set on the open file description, which only the
// sandboxer and the store use.
func pollable(f *os.File) (*os.File, error) {
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var derr error
	err = rc.Control(func(fd uintptr) {
		if nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0); derr == nil {
			if derr = unix.SetNonblock(nfd, true); derr != nil {
				unix.Close(nfd)
			}
		}
	})
	if err = errors.Join(err, derr); err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}
