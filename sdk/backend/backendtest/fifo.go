package backendtest

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/fifo"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// capture is a FIFO whose writes are collected, like containerd's CRI
// log FIFOs.
type capture struct {
	path string
	mu   sync.Mutex
	buf  bytes.Buffer
}

func (c *capture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// until returns what was captured once it contains want, or after timeout.
// Output is in the FIFO when the exit is reported, but this side's copy
// of it may still be under way.
func (c *capture) until(want string, timeout time.Duration) string {
	testutil.Poll(timeout, func() bool { return strings.Contains(c.String(), want) })
	return c.String()
}

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

// newCapture creates a FIFO in dir and copies everything written to it.
func newCapture(t *testing.T, dir, name string) *capture {
	t.Helper()
	c := &capture{path: filepath.Join(dir, name)}
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
