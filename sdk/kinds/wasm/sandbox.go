package wasm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// sandbox is a wasm pod: a set of containers, each an instance in the
// backend's runner. It holds no process or namespace of its own.
type sandbox struct {
	b   *Backend
	cfg backend.SandboxConfig

	mu      sync.Mutex
	ctrs    map[string]*container
	stopped chan struct{}
	once    sync.Once
}

func newSandbox(b *Backend, cfg backend.SandboxConfig) *sandbox {
	return &sandbox{b: b, cfg: cfg, ctrs: map[string]*container{}, stopped: make(chan struct{})}
}

// Start has nothing to bring up.
func (s *sandbox) Start(ctx context.Context) (backend.StartInfo, error) {
	if err := os.MkdirAll(s.containersDir(), 0o700); err != nil {
		return backend.StartInfo{}, fmt.Errorf("create wasm sandbox dir: %w", err)
	}
	return backend.StartInfo{Info: map[string]string{"runtime": "wazero", "wasi": "preview1"}}, nil
}

// Wait blocks until Stop or Delete.
func (s *sandbox) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-s.stopped:
		return backend.ExitStatus{ExitedAt: time.Now().UTC()}, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

// Stop kills the instances still alive; the engine has asked them to stop.
func (s *sandbox) Stop(ctx context.Context, timeout time.Duration) error {
	var errs []error
	for _, c := range s.containers() {
		if err := c.signal(ctx, syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
			errs = append(errs, err)
		}
	}
	s.once.Do(func() { close(s.stopped) })
	return errors.Join(errs...)
}

// Delete ends any instance left from containers this sandbox lost track of
// (per their state files).
func (s *sandbox) Delete(ctx context.Context) error {
	s.once.Do(func() { close(s.stopped) })
	var errs []error
	ents, err := os.ReadDir(s.containersDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range ents {
		s.mu.Lock()
		_, known := s.ctrs[e.Name()]
		s.mu.Unlock()
		if known {
			continue
		}
		st, err := readState(filepath.Join(s.containersDir(), e.Name()))
		if err != nil {
			continue
		}
		errs = append(errs, s.b.cleanupOrphan(ctx, st))
	}
	if err := os.RemoveAll(s.containersDir()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// State is empty: everything a recovered sandbox needs is in its
// containers' state files.
func (s *sandbox) State() ([]byte, error) { return []byte("{}"), nil }

func (s *sandbox) containers() []*container {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*container, 0, len(s.ctrs))
	for _, c := range s.ctrs {
		out = append(out, c)
	}
	return out
}

// containersDir holds one state directory per container.
func (s *sandbox) containersDir() string { return filepath.Join(s.cfg.Dir, "containers") }

// instanceKey names a container's instance in the runner: unique per
// sandbox directory (so per engine state dir and sandbox) and container.
func (s *sandbox) instanceKey(id string) string {
	sum := sha256.Sum256([]byte(s.cfg.Dir))
	return hex.EncodeToString(sum[:8]) + "/" + id
}
