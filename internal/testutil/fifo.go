package testutil

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/fifo"
)

// Capture is a FIFO whose writes are collected, like containerd's CRI log
// FIFOs: give its Path to a process as stdout or stderr.
type Capture struct {
	Buffer
	path string
}

// NewCapture creates a FIFO named name in dir and copies everything
// written to it until the test ends.
func NewCapture(t testing.TB, dir, name string) *Capture {
	t.Helper()
	c := &Capture{path: filepath.Join(dir, name)}
	f, err := fifo.OpenFifo(context.Background(), c.path, syscall.O_RDONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		t.Fatalf("create fifo: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(c, f)
	}()
	t.Cleanup(func() {
		f.Close()
		<-done
	})
	return c
}

// Path is the FIFO's path.
func (c *Capture) Path() string { return c.path }

// Until returns what was captured once it contains want, or after timeout
// (see [Poll]). Output is in the FIFO when an exit is reported, but this
// side's copy of it may still be under way.
func (c *Capture) Until(want string, timeout time.Duration) string {
	Poll(timeout, func() bool { return strings.Contains(c.String(), want) })
	return c.String()
}

// Pipe returns an os.Pipe whose ends are closed when the test ends.
func Pipe(t testing.TB) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}
