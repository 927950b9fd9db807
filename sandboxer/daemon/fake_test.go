package daemon

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// fakeBackend is a recording backend for the daemon's tests. Sandboxes run
// until stopped; processes run until killed, and exit with 128+signal.
// Calls the tests do not expect fail the test.
type fakeBackend struct {
	t    *testing.T
	kind string

	mu        sync.Mutex
	created   []backend.SandboxConfig
	recovered []string
	nextPid   uint32
}

func newFakeBackend(t *testing.T, kind string) *fakeBackend {
	return &fakeBackend{t: t, kind: kind, nextPid: 1000}
}

func (b *fakeBackend) Info() backend.Info {
	return backend.Info{Kind: b.kind, Description: "test fake", Isolation: backend.IsolationProcess}
}

func (b *fakeBackend) Check(context.Context) error { return nil }

func (b *fakeBackend) Create(_ context.Context, cfg backend.SandboxConfig) (backend.Sandbox, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.created = append(b.created, cfg)
	return b.newSandbox(cfg.ID), nil
}

func (b *fakeBackend) Recover(_ context.Context, cfg backend.SandboxConfig, state []byte) (backend.Sandbox, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if string(state) != "fake:"+cfg.ID {
		b.t.Errorf("Recover(%s): state %q", cfg.ID, state)
	}
	b.recovered = append(b.recovered, cfg.ID)
	return b.newSandbox(cfg.ID), nil
}

func (b *fakeBackend) newSandbox(id string) *fakeSandbox {
	return &fakeSandbox{b: b, id: id, stopped: make(chan struct{})}
}

func (b *fakeBackend) pid() uint32 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nextPid++
	return b.nextPid
}

func (b *fakeBackend) lastCreated(t *testing.T) backend.SandboxConfig {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.created) == 0 {
		t.Fatal("no sandbox was created")
	}
	return b.created[len(b.created)-1]
}

type fakeSandbox struct {
	b  *fakeBackend
	id string

	stopOnce sync.Once
	stopped  chan struct{}
}

func (s *fakeSandbox) Start(context.Context) (backend.StartInfo, error) {
	return backend.StartInfo{Pid: 4242, Info: map[string]string{"fake.started": "yes"}}, nil
}

func (s *fakeSandbox) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-s.stopped:
		return backend.ExitStatus{Code: 0, ExitedAt: time.Now()}, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

func (s *fakeSandbox) Stop(context.Context, time.Duration) error {
	s.stopOnce.Do(func() { close(s.stopped) })
	return nil
}

func (s *fakeSandbox) Delete(context.Context) error { return nil }

func (s *fakeSandbox) CreateContainer(_ context.Context, cfg backend.ContainerConfig) (backend.Container, error) {
	if cfg.Spec == nil || cfg.Spec.Process == nil {
		return nil, fmt.Errorf("container %s: spec without process: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	c := &fakeContainer{b: s.b, id: cfg.ID}
	c.init = newFakeProcess(s.b, cfg.Stdio)
	return c, nil
}

func (s *fakeSandbox) State() ([]byte, error) { return []byte("fake:" + s.id), nil }

type fakeContainer struct {
	b    *fakeBackend
	id   string
	init *fakeProcess
}

func (c *fakeContainer) Init() backend.Process { return c.init }

func (c *fakeContainer) Exec(_ context.Context, cfg backend.ExecConfig) (backend.Process, error) {
	return newFakeProcess(c.b, cfg.Stdio), nil
}

func (c *fakeContainer) Delete(context.Context) error { return nil }

func (c *fakeContainer) Pids(context.Context) ([]backend.ProcessInfo, error) {
	return []backend.ProcessInfo{{Pid: c.init.pidNow()}}, nil
}

type fakeProcess struct {
	b     *fakeBackend
	stdio backend.Stdio

	mu       sync.Mutex
	pid      uint32
	exitCode uint32
	exited   chan struct{}
	once     sync.Once
}

func newFakeProcess(b *fakeBackend, stdio backend.Stdio) *fakeProcess {
	return &fakeProcess{b: b, stdio: stdio, exited: make(chan struct{})}
}

func (p *fakeProcess) pidNow() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

func (p *fakeProcess) Start(context.Context) (uint32, error) {
	pid := p.b.pid()
	p.mu.Lock()
	p.pid = pid
	p.mu.Unlock()
	return pid, nil
}

func (p *fakeProcess) Kill(_ context.Context, sig syscall.Signal, _ bool) error {
	if sig == 0 {
		return nil
	}
	p.once.Do(func() {
		p.mu.Lock()
		p.exitCode = 128 + uint32(sig)
		p.mu.Unlock()
		close(p.exited)
	})
	return nil
}

func (p *fakeProcess) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-p.exited:
		p.mu.Lock()
		defer p.mu.Unlock()
		return backend.ExitStatus{Code: p.exitCode, ExitedAt: time.Now()}, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

func (p *fakeProcess) ResizePTY(context.Context, uint32, uint32) error {
	p.b.t.Error("unexpected ResizePTY")
	return errdefs.ErrNotImplemented
}

func (p *fakeProcess) CloseStdin(context.Context) error {
	p.b.t.Error("unexpected CloseStdin")
	return errdefs.ErrNotImplemented
}

func (p *fakeProcess) Delete(context.Context) error { return nil }
