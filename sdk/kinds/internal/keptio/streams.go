package keptio

import (
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/hoststdio"
)

// Streams are a process's stdio copied through pipes: its output from
// the read ends of the pipes it writes to, to the stdio paths; its input
// from the stdin path to the write end of its stdin pipe.
type Streams struct {
	set *Set
	// outs are closed when the output copies ended.
	outs []<-chan struct{}
}

// NewStreams returns the streams kept in set, none copied yet.
func NewStreams(set *Set) *Streams { return &Streams{set: set} }

// Output copies src (taken over: the read end of the pipe the process
// writes stream, "stdout" or "stderr", to) to the stdio path (a FIFO, with
// a read end held so that the process never gets EPIPE, or a file). When
// the process's end closes, the copy ends and so does the path's writer.
func (s *Streams) Output(stream string, src *os.File, path string) error {
	if _, err := s.set.Add(stream+"-src", src); err != nil {
		return err
	}
	p, isFile, err := hoststdio.Path(path)
	if err != nil {
		return err
	}
	if !isFile && isFifo(p) {
		if err := s.set.open(stream+"-hold", p, unix.O_RDONLY|unix.O_NONBLOCK); err != nil {
			return err
		}
		if err := s.set.open(stream, p, unix.O_WRONLY|unix.O_NONBLOCK); err != nil {
			return err
		}
	} else if err := s.set.open(stream, p, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT); err != nil {
		return err
	}
	return s.copyOut(stream)
}

func (s *Streams) copyOut(stream string) error {
	done, err := s.set.Copy(stream, stream+"-src", func() {
		_ = s.set.Release(stream, stream+"-hold", stream+"-src")
	})
	if err == nil {
		s.outs = append(s.outs, done)
	}
	return err
}

// Input copies the stdin path (a FIFO, whose write end is held until
// CloseInput, or a file) to dst (taken over: the write end of the
// process's stdin pipe). When the path ends, so does the process's stdin.
func (s *Streams) Input(dst *os.File, path string) error {
	if _, err := s.set.Add("stdin-dst", dst); err != nil {
		return err
	}
	p, _, err := hoststdio.Path(path)
	if err != nil {
		return err
	}
	if err := s.set.open("stdin", p, unix.O_RDONLY|unix.O_NONBLOCK); err != nil {
		return err
	}
	if isFifo(p) {
		if err := s.set.open("stdin-hold", p, unix.O_WRONLY|unix.O_NONBLOCK); err != nil {
			return err
		}
	}
	return s.copyIn()
}

func (s *Streams) copyIn() error {
	_, err := s.set.Copy("stdin-dst", "stdin", func() {
		_ = s.set.Release("stdin", "stdin-dst", "stdin-hold")
	})
	return err
}

// CloseInput lets go of the held write end of the stdin FIFO: the process
// reads end of file once the other writers are gone too.
func (s *Streams) CloseInput() error { return s.set.Release("stdin-hold") }

// Resume takes back the streams an earlier process kept in set and
// resumes their copies.
func (s *Streams) Resume() error {
	for _, stream := range []string{"stdout", "stderr"} {
		if s.set.Resume(stream+"-src") == nil {
			continue
		}
		s.set.Resume(stream + "-hold")
		if s.set.Resume(stream) == nil {
			_ = s.set.Release(stream+"-src", stream+"-hold")
			continue
		}
		if err := s.copyOut(stream); err != nil {
			return err
		}
	}
	if s.set.Resume("stdin") != nil {
		s.set.Resume("stdin-hold")
		if s.set.Resume("stdin-dst") == nil {
			return s.set.Release("stdin", "stdin-hold")
		}
		return s.copyIn()
	}
	return nil
}

// Drained waits up to timeout for the output copies to end (the process
// exited and closed its ends).
func (s *Streams) Drained(timeout time.Duration) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for _, done := range s.outs {
		select {
		case <-done:
		case <-t.C:
			return
		}
	}
}

// Detach stops the copies and leaves the streams to the next process.
func (s *Streams) Detach() { s.set.Detach() }

// Close releases the streams.
func (s *Streams) Close() error { return s.set.Close() }
