// Package runc implements the "runc" sandbox kind: containers run with the
// host's runc, in the pod's network namespace, sharing IPC and UTS
// namespaces that the sandbox holds as bind-mounted namespace files. There
// is no pause container and no process per pod: the sandboxer itself is the
// child subreaper that collects container exits.
//
// Processes are driven through runc as containerd-shim-runc-v2 drives them
// (the same states, runc calls, errors and exit codes), but their stdio
// FIFOs are passed to runc as they are, with no pipe or copy in this
// process, so that a container keeps running and its output keeps flowing
// when the sandboxer goes away: see [FIFOHolder]. Terminals are copied
// here, with their descriptors kept in [Config.FDStore] so that the next
// sandboxer resumes the copies.
package runc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	shimrunc "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/runc"
	"github.com/containerd/containerd/v2/pkg/stdio"
	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/keptio"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/reaper"
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
	// PodInit is the executable started as the init of a pod's shared PID
	// namespace: a program whose main calls [PodInitMain] first. Default:
	// this program (/proc/self/exe).
	PodInit string
	// OrphanExit, when set, tells how a container process ended that this
	// process could not reap (it was orphaned while no sandboxer ran and
	// another process, e.g. the sandboxer's supervisor, reaped it): its
	// exit code (128+signal for a signal) and time, and whether it is
	// known. Without it such exits are reported as 255.
	OrphanExit func(pid int) (code uint32, at time.Time, ok bool)
	// FIFOHolder holds the ends of the processes' stdio FIFOs that keep
	// them working while containerd is away: an output FIFO's read end
	// and a stdin FIFO's write end (until CloseStdin). Default
	// LocalFIFOHolder: this process holds them, or, with an FDStore, the
	// store does.
	FIFOHolder FIFOHolder
	// FDStore, when set, keeps what the processes' stdio needs beyond
	// this process's life (see package keptio): the held FIFO ends (unless
	// FIFOHolder is set) and a terminal's pty master and FIFO ends, so
	// that after a restart the next process takes them back, resumes the
	// terminal's copies, and holds a recovered container's stdin until
	// CloseStdin.
	FDStore backend.FDStore
	// Trace, when set, is told how long each phase of a sandbox's start and
	// a container's creation and start took (see the Phase constants), for
	// profiling; it must return quickly and is called from the goroutine
	// doing the work.
	Trace func(Span)
}

// Span is one timed phase of the runc kind's work, reported to
// [Config.Trace].
type Span struct {
	// Phase is one of the Phase constants.
	Phase string
	// Sandbox is the sandbox's ID; Container the container's ("" for a
	// sandbox's phases).
	Sandbox, Container string
	// Duration is how long the phase took.
	Duration time.Duration
}

// The phases reported to [Config.Trace].
const (
	// PhaseNamespaces: the sandbox's start (IPC/UTS/net namespaces held by
	// bind mounts, sysctls, resolv.conf).
	PhaseNamespaces = "sandbox.namespaces"
	// PhaseSpec: the container's OCI spec joined to the pod and written
	// (and the pod's PID namespace init started, if it is the first to
	// share it).
	PhaseSpec = "create.spec"
	// PhaseRootfs: the container's rootfs mounted.
	PhaseRootfs = "create.rootfs"
	// PhaseRecord: the shim's removal record written.
	PhaseRecord = "create.record"
	// PhaseIO: the stdio FIFOs opened.
	PhaseIO = "create.io"
	// PhaseRuncCreate: `runc create`.
	PhaseRuncCreate = "create.runc"
	// PhaseCgroup: the container's cgroup loaded and its OOM watch set.
	PhaseCgroup = "create.cgroup"
	// PhaseRuncStart: `runc start` of a container's init.
	PhaseRuncStart = "start.runc"
)

// span reports a phase that began at t0 to the Trace hook, if any.
func (b *Backend) span(phase, sandbox, container string, t0 time.Time) {
	if b.cfg.Trace != nil {
		b.cfg.Trace(Span{Phase: phase, Sandbox: sandbox, Container: container, Duration: time.Since(t0)})
	}
}

// Backend is the runc sandbox kind. Only one may be open per process: it
// makes the process a child subreaper, so that container processes (which
// runc leaves behind as orphans) become its children.
//
// It reaps only the container processes it knows, each through a pidfd, so
// other children of the process (started with os/exec) keep their exit
// statuses.
type Backend struct {
	cfg      Config
	platform stdio.Platform

	// life ends with Close; the exit and OOM watches end with it.
	life      context.Context
	endLife   context.CancelFunc
	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup

	// ttys are the terminals being copied, detached by Close.
	ttyMu sync.Mutex
	ttys  map[*keptio.Terminal]struct{}
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
	if cfg.FIFOHolder == nil {
		cfg.FIFOHolder = LocalFIFOHolder{}
		if cfg.FDStore != nil {
			cfg.FIFOHolder = newStoreHolder(cfg.FDStore)
		}
	}
	openMu.Lock()
	defer openMu.Unlock()
	if open {
		return nil, fmt.Errorf("a runc backend is already open in this process: %w", errdefs.ErrAlreadyExists)
	}
	if err := os.MkdirAll(cfg.Root, 0o711); err != nil {
		return nil, fmt.Errorf("create runc root: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("become child subreaper: %w", err)
	}
	platform, err := shimrunc.NewPlatform()
	if err != nil {
		return nil, err
	}
	open = true
	b := &Backend{cfg: cfg, platform: platform, ttys: map[*keptio.Terminal]struct{}{}}
	b.life, b.endLife = context.WithCancel(context.Background())
	return b, nil
}

// Close stops reaping and the terminals' copies. Containers keep running,
// and so does their stdio; a terminal's copy resumes in the next process
// when an FDStore keeps it. Close is idempotent.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.endLife()
		b.wg.Wait()
		b.ttyMu.Lock()
		for t := range b.ttys {
			t.Detach()
			delete(b.ttys, t)
		}
		b.ttyMu.Unlock()
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
		Capabilities: backend.DeriveCapabilities((*container)(nil), backend.Capabilities{EgressPolicy: true,
			Exec: true, Terminal: true, Stdin: true, OOMEvents: true,
		}),
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

// podInitExe is the executable of pod inits.
func (b *Backend) podInitExe() string {
	if b.cfg.PodInit != "" {
		return b.cfg.PodInit
	}
	return "/proc/self/exe"
}

func (b *Backend) runtime(namespace, bundle string) *gorunc.Runc {
	return process.NewRunc(b.cfg.Root, bundle, namespace, b.cfg.Binary, false)
}

// addTTY registers a terminal for Close.
func (b *Backend) addTTY(t *keptio.Terminal) {
	b.ttyMu.Lock()
	b.ttys[t] = struct{}{}
	b.ttyMu.Unlock()
}

// closeTTY releases a terminal.
func (b *Backend) closeTTY(t *keptio.Terminal) error {
	b.ttyMu.Lock()
	delete(b.ttys, t)
	b.ttyMu.Unlock()
	return t.Close()
}

// exiter is told a process's exit status.
type exiter interface{ SetExited(status int) }

// watch reaps pid, a child of this process, when it exits and tells p.
// The wait (see package reaper) ends with Close too.
func (b *Backend) watch(pid int, p exiter) {
	reaper.Watch(b.life.Done(), &b.wg, pid, p.SetExited)
}
