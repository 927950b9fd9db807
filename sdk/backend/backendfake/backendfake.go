// Package backendfake is an in-memory backend for tests: processes are
// goroutines; no root needed.
//
// A process runs the script of its spec (the last argument after "-c", or
// all its arguments) as `;`-separated commands, the vocabulary of the
// conformance suite (package backendtest):
//
//	echo WORDS...  print the words
//	exit N         exit with status N
//	sleep N        sleep N seconds (fractions allowed)
//	cat            copy stdin to stdout
//	tick           print "tick" every tenth of a second, forever
//	true, false    exit 0 or 1
//
// An unknown command exits with 127; a process without arguments runs until
// it is killed. Signals end a process with 128+signal. Containers report
// stats, take resource updates, pause and list their processes; sandboxes
// report their own stats. Pids are at least [MinPid], above any real
// Linux pid.
package backendfake

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// Kind is the default kind name.
const Kind = "fake"

// MinPid is the first pid the fake hands out: Linux pids stay below 2^22,
// so no fake pid names a real process.
const MinPid = 1 << 22

// SandboxPid is the pid a started fake sandbox reports.
const SandboxPid = MinPid - 1

// SandboxMemory is the memory usage a fake sandbox reports for itself, on
// top of its containers'.
const SandboxMemory = 4096

// MemoryPerProcess is the memory usage a fake container reports for each
// of its running processes.
const MemoryPerProcess = 1 << 20

// Config configures a fake backend.
type Config struct {
	// Kind names the kind; empty means [Kind].
	Kind string
	// IgnoreSIGTERM makes processes survive SIGTERM (to test escalation
	// to SIGKILL).
	IgnoreSIGTERM bool
	// Host holds the sandboxes, which outlive the backend like processes
	// outlive a daemon: a backend on the Host of a closed one recovers
	// them. Nil gives the backend a Host of its own.
	Host *Host
}

// Host is the machine fake sandboxes run on.
type Host struct {
	mu        sync.Mutex
	sandboxes map[string]*sandbox
	nextPid   uint32
}

// NewHost returns an empty host.
func NewHost() *Host {
	return &Host{sandboxes: map[string]*sandbox{}, nextPid: MinPid}
}

func (h *Host) pid() uint32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextPid++
	return h.nextPid
}

// Backend is a fake sandbox kind. Its methods may be called concurrently.
type Backend struct {
	cfg Config

	mu        sync.Mutex
	created   []backend.SandboxConfig
	recovered []string
	closed    bool
}

// New returns a fake backend.
func New(cfg Config) *Backend {
	if cfg.Kind == "" {
		cfg.Kind = Kind
	}
	if cfg.Host == nil {
		cfg.Host = NewHost()
	}
	return &Backend{cfg: cfg}
}

// Info describes the kind: exec and stdin, no terminal; the rest follows
// from the interfaces its containers implement.
func (b *Backend) Info() backend.Info {
	return backend.Info{
		Kind:         b.cfg.Kind,
		Description:  "in-memory test backend: processes are goroutines",
		Isolation:    backend.IsolationProcess,
		Capabilities: backend.DeriveCapabilities((*container)(nil), backend.Capabilities{Exec: true, Stdin: true}),
	}
}

// Check always succeeds.
func (b *Backend) Check(context.Context) error { return nil }

// Close stops the backend. Its sandboxes keep running on the Host.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return nil
}

// Created returns the configurations of the sandboxes created so far.
func (b *Backend) Created() []backend.SandboxConfig {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.created)
}

// Recovered returns the IDs of the sandboxes recovered so far.
func (b *Backend) Recovered() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.recovered)
}

func (b *Backend) usable() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("fake backend closed: %w", errdefs.ErrUnavailable)
	}
	return nil
}

// Create makes a sandbox on the Host.
func (b *Backend) Create(_ context.Context, cfg backend.SandboxConfig) (backend.Sandbox, error) {
	if err := b.usable(); err != nil {
		return nil, err
	}
	// The engine keeps IDs unique; one left by an engine that went away
	// without deleting it is replaced.
	h := b.cfg.Host
	h.mu.Lock()
	defer h.mu.Unlock()
	s := b.newSandbox(cfg.ID)
	h.sandboxes[cfg.ID] = s
	b.mu.Lock()
	b.created = append(b.created, cfg)
	b.mu.Unlock()
	return s, nil
}

// savedState is what Sandbox.State saves.
type savedState struct {
	ID string `json:"id"`
}

// Recover re-attaches to a sandbox of the Host, or starts a fresh one in
// its place when the Host has none by that ID (a host that rebooted).
func (b *Backend) Recover(_ context.Context, cfg backend.SandboxConfig, state []byte) (backend.Sandbox, error) {
	if err := b.usable(); err != nil {
		return nil, err
	}
	var st savedState
	if err := json.Unmarshal(state, &st); err != nil || st.ID != cfg.ID {
		return nil, fmt.Errorf("recover fake sandbox %q from state %q: %w", cfg.ID, state, errdefs.ErrInvalidArgument)
	}
	h := b.cfg.Host
	h.mu.Lock()
	s, ok := h.sandboxes[cfg.ID]
	if ok {
		s.b = b
	} else {
		s = b.newSandbox(cfg.ID)
		h.sandboxes[cfg.ID] = s
	}
	h.mu.Unlock()
	b.mu.Lock()
	b.recovered = append(b.recovered, cfg.ID)
	b.mu.Unlock()
	return s, nil
}

func (b *Backend) newSandbox(id string) *sandbox {
	return &sandbox{b: b, id: id, stopped: make(chan struct{}), ctrs: map[string]*container{}}
}

type sandbox struct {
	id string

	mu      sync.Mutex
	b       *Backend // the backend that last created or recovered it
	ctrs    map[string]*container
	once    sync.Once
	stopped chan struct{}
	exited  time.Time
}

func (s *sandbox) backend() *Backend {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b
}

// Start reports SandboxPid.
func (s *sandbox) Start(context.Context) (backend.StartInfo, error) {
	return backend.StartInfo{Pid: SandboxPid, Info: map[string]string{"fake.started": "yes"}}, nil
}

func (s *sandbox) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-s.stopped:
		s.mu.Lock()
		defer s.mu.Unlock()
		return backend.ExitStatus{ExitedAt: s.exited}, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

// Stop kills the processes still running and ends the sandbox.
func (s *sandbox) Stop(context.Context, time.Duration) error {
	s.once.Do(func() {
		for _, c := range s.containers() {
			c.killAll(syscall.SIGKILL)
		}
		s.mu.Lock()
		s.exited = time.Now()
		s.mu.Unlock()
		close(s.stopped)
	})
	return nil
}

// Delete stops the sandbox and removes it from the Host.
func (s *sandbox) Delete(ctx context.Context) error {
	_ = s.Stop(ctx, 0)
	h := s.backend().cfg.Host
	h.mu.Lock()
	if h.sandboxes[s.id] == s {
		delete(h.sandboxes, s.id)
	}
	h.mu.Unlock()
	return nil
}

func (s *sandbox) State() ([]byte, error) { return json.Marshal(savedState{ID: s.id}) }

func (s *sandbox) containers() []*container {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*container, 0, len(s.ctrs))
	for _, c := range s.ctrs {
		out = append(out, c)
	}
	return out
}

func (s *sandbox) CreateContainer(_ context.Context, cfg backend.ContainerConfig) (backend.Container, error) {
	if cfg.Spec == nil {
		return nil, fmt.Errorf("fake container %q: no spec: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	select {
	case <-s.stopped:
		return nil, fmt.Errorf("fake sandbox %q stopped: %w", s.id, errdefs.ErrFailedPrecondition)
	default:
	}
	if err := checkRootfs(cfg); err != nil {
		return nil, fmt.Errorf("fake container %q: %w", cfg.ID, err)
	}
	c := &container{s: s, id: cfg.ID, procs: map[*process]bool{}}
	if r := cfg.Spec.Linux; r != nil && r.Resources != nil && r.Resources.Memory != nil && r.Resources.Memory.Limit != nil {
		c.memLimit = uint64(max(*r.Resources.Memory.Limit, 0))
	}
	init, err := c.newProcess(cfg.Spec.Process, cfg.Stdio)
	if err != nil {
		return nil, err
	}
	c.init = init
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.ctrs[cfg.ID]; dup {
		init.release()
		return nil, fmt.Errorf("fake container %q: %w", cfg.ID, errdefs.ErrAlreadyExists)
	}
	s.ctrs[cfg.ID] = c
	return c, nil
}

// RecoverContainer finds a container of the sandbox by its ID.
func (s *sandbox) RecoverContainer(_ context.Context, cfg backend.ContainerConfig, pid uint32) (backend.Container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.ctrs[cfg.ID]
	if !ok || pid != 0 && c.init.Pid() != pid {
		return nil, fmt.Errorf("fake container %q (pid %d): %w", cfg.ID, pid, errdefs.ErrNotFound)
	}
	return c, nil
}

// SandboxStats reports SandboxMemory plus the stats of the sandbox's
// containers, and their number as "fake.containers".
func (s *sandbox) SandboxStats(ctx context.Context) (*backend.Stats, map[string]string, error) {
	total := &backend.Stats{Timestamp: time.Now(), MemoryUsageBytes: SandboxMemory}
	ctrs := s.containers()
	for _, c := range ctrs {
		st, _ := c.Stats(ctx)
		total.CPUUsageNanos += st.CPUUsageNanos
		total.MemoryUsageBytes += st.MemoryUsageBytes
		total.Pids += st.Pids
	}
	return total, map[string]string{"fake.containers": fmt.Sprint(len(ctrs))}, nil
}

// checkRootfs fails, as a real kind would, when the container's root file
// system is missing: a bind mount's source or the spec's root directory.
func checkRootfs(cfg backend.ContainerConfig) error {
	for _, m := range cfg.Rootfs {
		if m.Type != "bind" && !slices.Contains(m.Options, "bind") && !slices.Contains(m.Options, "rbind") {
			continue
		}
		if _, err := os.Stat(m.Source); err != nil {
			return fmt.Errorf("rootfs mount source: %w: %w", err, errdefs.ErrNotFound)
		}
	}
	if len(cfg.Rootfs) > 0 || cfg.Spec.Root == nil || cfg.Spec.Root.Path == "" {
		return nil
	}
	root := cfg.Spec.Root.Path
	if !filepath.IsAbs(root) {
		root = filepath.Join(cfg.Bundle, root)
	}
	if _, err := os.Stat(root); err != nil {
		return fmt.Errorf("root file system: %w: %w", err, errdefs.ErrNotFound)
	}
	return nil
}
