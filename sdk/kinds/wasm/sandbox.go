package wasm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// sandbox is a wasm pod: a set of containers, each its own runner. It
// holds no process or namespace of its own.
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

// Stop kills the runners still alive; the engine has asked them to stop.
func (s *sandbox) Stop(ctx context.Context, timeout time.Duration) error {
	var errs []error
	for _, c := range s.containers() {
		if err := c.signal(syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
			errs = append(errs, err)
		}
	}
	s.once.Do(func() { close(s.stopped) })
	return errors.Join(errs...)
}

// Delete kills any runner left from containers this sandbox lost track of
// (per their state files) and removes the default cgroup parent.
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
		errs = append(errs, cleanupOrphan(ctx, st))
	}
	if err := deleteCgroup(ctx, s.defaultCgroupParent()); err != nil {
		errs = append(errs, err)
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

// defaultCgroupParent is the cgroup of the sandbox's containers that have
// no cgroups path of their own.
func (s *sandbox) defaultCgroupParent() string { return path.Join("/magnetar", s.cfg.ID) }
