package vm

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
)

// capture is a FIFO whose writes are collected.
type capture struct {
	path string
	mu   sync.Mutex
	buf  bytes.Buffer
}

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *capture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func (c *capture) eventually(want string) string {
	for range 100 {
		if s := c.String(); strings.Contains(s, want) {
			return s
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c.String()
}

func newFifo(t *testing.T, name string) *capture {
	t.Helper()
	c := &capture{path: filepath.Join(t.TempDir(), name)}
	f, err := fifo.OpenFifo(context.Background(), c.path, syscall.O_RDONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _, _ = io.Copy(c, f) }()
	t.Cleanup(func() { f.Close(); <-done })
	return c
}
