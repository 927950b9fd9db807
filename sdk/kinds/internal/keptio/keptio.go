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
// A copy that is detached (the sandboxer stops for an upgrade) stops
// reading and finishes its write first, so that nothing is lost; a
// sandboxer killed between a read and its write loses what it read.
package keptio

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
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
	done     chan struct{}
}

func (c *copier) run(ended func()) {
	defer close(c.done)
	buf := make([]byte, 32<<10)
	for {
		n, err := c.src.Read(buf)
		if n > 0 {
			if _, werr := c.dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			if !c.stopped.Load() && ended != nil {
				ended()
			}
			return
		}
	}
}

// stop interrupts the read; a write under way gets detachWriteGrace.
func (c *copier) stop() {
	c.stopped.Store(true)
	_ = c.src.SetReadDeadline(time.Now())
	_ = c.dst.SetWriteDeadline(time.Now().Add(detachWriteGrace))
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
