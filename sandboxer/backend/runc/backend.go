// Package runc implements the "runc" sandbox kind: containers run with the
// host's runc, in the pod's network namespace, sharing IPC and UTS
// namespaces that the sandbox holds as bind-mounted namespace files. There
// is no pause container and no process per pod: the sandboxer itself is the
// child subreaper that collects container exits.
//
// Process handling (stdio FIFOs, terminals, exec, kill, exit states) reuses
// containerd's own runc shim packages, so behaviour matches
// containerd-shim-runc-v2.
package runc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	shimrunc "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/runc"
	"github.com/containerd/containerd/v2/pkg/stdio"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// Kind is the name of this sandbox kind.
const Kind = "runc"

// Config configures the runc backend.
type Config struct {
	// Binary is the runc binary; default "runc" from PATH.
	Binary string
	// Root is runc's state root (--root); one subdirectory per namespace
	// is used. Default /run/magnetar/runc.
	Root string
}

// Backend is the runc sandbox kind. Only one may be open per process: it
// makes the process a child subreaper and reaps all of its children.
type Backend struct {
	cfg      Config
	platform stdio.Platform

	mu sync.Mutex
	// procs maps a host pid to the process that owns it.
	procs map[int]process.Process
	// starting counts exec starts in flight; while it is non-zero, exits
	// of unknown pids are kept in early so that a process that exits
	// before its pid is registered is not missed.
	starting int
	early    map[int]gorunc.Exit

	stop      chan struct{}
	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup
}

var (
	openMu sync.Mutex
	open   bool
)

// New opens the runc backend.
func New(cfg Config) (_ *Backend, retErr error) {
	if cfg.Binary == "" {
		cfg.Binary = "runc"
	}
	// An absolute path also works for containerd-shim-magnetar-v2, which
	// runs with containerd's PATH.
	if p, err := exec.LookPath(cfg.Binary); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			cfg.Binary = abs
		}
	}
	if cfg.Root == "" {
		cfg.Root = "/run/magnetar/runc"
	}
	openMu.Lock()
	defer openMu.Unlock()
	if open {
		return nil, fmt.Errorf("a runc backend is already open in this process: %w", errdefs.ErrAlreadyExists)
	}
	if err := os.MkdirAll(cfg.Root, 0o711); err != nil {
		return nil, fmt.Errorf("create runc root: %w", err)
	}
	if err := reaper.SetSubreaper(1); err != nil {
		return nil, fmt.Errorf("become child subreaper: %w", err)
	}
	platform, err := shimrunc.NewPlatform()
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			platform.Close()
		}
	}()
	b := &Backend{
		cfg:      cfg,
		platform: platform,
		procs:    map[int]process.Process{},
		early:    map[int]gorunc.Exit{},
		stop:     make(chan struct{}),
	}
	// All runc invocations go through the reaper so that their exit
	// status is not stolen by our own reaping.
	gorunc.Monitor = reaper.Default
	exits := reaper.Default.Subscribe()
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD)
	b.wg.Add(2)
	go func() { // reap children on SIGCHLD
		defer b.wg.Done()
		defer signal.Stop(sigs)
		for {
			select {
			case <-sigs:
				_ = reaper.Reap()
			case <-b.stop:
				return
			}
		}
	}()
	go func() { // dispatch exits to processes
		defer b.wg.Done()
		defer reaper.Default.Unsubscribe(exits)
		for {
			select {
			case e := <-exits:
				b.handleExit(e)
			case <-b.stop:
				return
			}
		}
	}()
	open = true
	return b, nil
}

// Close stops reaping. Containers keep running. Close is idempotent.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		close(b.stop)
		b.wg.Wait()
		b.closeErr = b.platform.Close()
		openMu.Lock()
		open = false
		openMu.Unlock()
	})
	return b.closeErr
}

// Info describes the runc kind.
func (b *Backend) Info() backend.Info {
	return backend.Info{
		Kind:        Kind,
		Description: "Linux containers run by runc: namespaces and cgroups, shared kernel",
		Isolation:   backend.IsolationProcess,
		Capabilities: backend.Capabilities{
			Exec: true, Terminal: true, Stdin: true, OOMEvents: true,
			UpdateResources: true, Stats: true, Pause: true,
		},
	}
}

// Check verifies that runc runs.
func (b *Backend) Check(ctx context.Context) error {
	if _, err := exec.LookPath(b.cfg.Binary); err != nil {
		return fmt.Errorf("runc binary %q not found: %w", b.cfg.Binary, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// Create prepares a runc sandbox.
func (b *Backend) Create(ctx context.Context, cfg backend.SandboxConfig) (backend.Sandbox, error) {
	return newSandbox(ctx, b, cfg, nil)
}

// Recover re-attaches to a sandbox of an earlier run.
func (b *Backend) Recover(ctx context.Context, cfg backend.SandboxConfig, state []byte) (backend.Sandbox, error) {
	return newSandbox(ctx, b, cfg, state)
}

func (b *Backend) runtime(namespace, bundle string) *gorunc.Runc {
	return process.NewRunc(b.cfg.Root, bundle, namespace, b.cfg.Binary, false)
}

// register associates a pid with its process; if that pid already exited
// (it was kept in early), the process is told at once.
func (b *Backend) register(pid int, p process.Process) {
	b.mu.Lock()
	e, exited := b.early[pid]
	if exited {
		delete(b.early, pid)
	} else {
		b.procs[pid] = p
	}
	b.mu.Unlock()
	if exited {
		p.SetExited(e.Status)
	}
}

func (b *Backend) unregister(pid int) {
	b.mu.Lock()
	delete(b.procs, pid)
	b.mu.Unlock()
}

// beginStart and endStart bracket a start whose pid is learnt only
// afterwards.
func (b *Backend) beginStart() {
	b.mu.Lock()
	b.starting++
	b.mu.Unlock()
}

func (b *Backend) endStart() {
	b.mu.Lock()
	b.starting--
	if b.starting == 0 {
		clear(b.early)
	}
	b.mu.Unlock()
}

func (b *Backend) handleExit(e gorunc.Exit) {
	b.mu.Lock()
	p, ok := b.procs[e.Pid]
	if ok {
		delete(b.procs, e.Pid)
	} else if b.starting > 0 {
		b.early[e.Pid] = e
	}
	b.mu.Unlock()
	if ok {
		p.SetExited(e.Status)
	}
}

// exitStatus converts a process's exit to the backend's type.
func exitStatus(p process.Process) backend.ExitStatus {
	at := p.ExitedAt()
	if at.IsZero() {
		at = time.Now()
	}
	return backend.ExitStatus{Code: uint32(p.ExitStatus()), ExitedAt: at.UTC()}
}
