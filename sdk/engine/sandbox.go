package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// SandboxState is where a sandbox is in its life.
type SandboxState string

// Sandbox states.
const (
	SandboxCreated SandboxState = "created"
	SandboxReady   SandboxState = "ready"
	SandboxStopped SandboxState = "stopped"
	// SandboxUnknown is a sandbox found in the state dir that its backend
	// could not recover. It can only be deleted.
	SandboxUnknown SandboxState = "unknown"
)

// SandboxSpec describes a sandbox to create.
type SandboxSpec struct {
	ID   string
	Kind string
	// Namespace is the containerd namespace of the caller; defaults to
	// "magnetar".
	Namespace string
	Hostname  string
	NetNSPath string
	// PrivateNetwork, with an empty NetNSPath, gives the sandbox a network
	// namespace of its own with only loopback; otherwise an empty
	// NetNSPath means the host's network.
	PrivateNetwork bool
	// HostPID runs the sandbox's containers that join its PID namespace in
	// the host's (Kubernetes' hostPID; a VM's own in a microVM).
	HostPID bool
	// HostIPC runs the sandbox's containers in the host's IPC namespace
	// (Kubernetes' hostIPC).
	HostIPC bool
	// Sysctls are set in the sandbox's namespaces (Kubernetes' pod
	// sysctls); only namespaced ones are accepted.
	Sysctls      map[string]string
	CgroupParent string
	DNS          backend.DNSConfig
	Resources    *specs.LinuxResources
	Labels       map[string]string
	Annotations  map[string]string
	// Lifetime ends the sandbox when it is forgotten (none by default).
	Lifetime Lifetime
	// Network, if set, gives the sandbox a network namespace of the
	// engine's, attached to a network of [Config.Network]; NetNSPath and
	// PrivateNetwork must then be unset.
	Network *NetworkSpec
}

// SandboxStatus is a snapshot of a sandbox.
type SandboxStatus struct {
	ID          string
	Kind        string
	Namespace   string
	NetNSPath   string
	HostNetwork bool
	// Network is set for a sandbox on a network of the engine's.
	Network      *NetworkStatus
	CgroupParent string
	State        SandboxState
	Pid          uint32
	Labels       map[string]string
	Annotations  map[string]string
	Info         map[string]string
	CreatedAt    time.Time
	StartedAt    time.Time
	ExitedAt     time.Time
	ExitCode     uint32
	Containers   []string
	// Lifetime is when the sandbox ends by itself (see [Lifetime]).
	Lifetime Lifetime
	// Paused is set while the sandbox is paused (see
	// [Engine.PauseSandbox]); its State stays SandboxReady.
	Paused bool
	// Err is why the sandbox could not be recovered, for SandboxUnknown.
	Err error
}

// sandbox is the engine's view of one sandbox. mu guards rec, containers
// and impl; it is never held across a blocking backend call that could wait
// on another sandbox lock.
type sandbox struct {
	e   *Engine
	dir string

	mu         sync.Mutex
	rec        *sandboxRecord
	impl       backend.Sandbox
	recoverErr error
	containers map[string]*container

	// done is closed when the sandbox has exited.
	done     chan struct{}
	doneOnce sync.Once

	// lifecycle serialises Start/Stop/Delete of this sandbox.
	lifecycle sync.Mutex

	// Lifetime (guarded by mu): the last activity, the timer that checks
	// the lifetime, and whether it ended.
	lastActive time.Time
	expiry     *time.Timer
	expired    bool
}

func newSandbox(e *Engine, rec *sandboxRecord, dir string) *sandbox {
	if rec.Containers == nil {
		rec.Containers = map[string]*containerRecord{}
	}
	return &sandbox{e: e, dir: dir, rec: rec, containers: map[string]*container{}, done: make(chan struct{})}
}

func (s *sandbox) markDone() { s.doneOnce.Do(func() { close(s.done) }) }

func (s *sandbox) backendConfig() backend.SandboxConfig {
	return backend.SandboxConfig{
		ID:             s.rec.ID,
		Namespace:      s.rec.Namespace,
		Dir:            s.dir,
		Hostname:       s.rec.Hostname,
		NetNSPath:      s.rec.NetNSPath,
		PrivateNetwork: s.rec.PrivateNetwork,
		HostPID:        s.rec.HostPID,
		HostIPC:        s.rec.HostIPC,
		Sysctls:        s.rec.Sysctls,
		DNS:            s.rec.DNS,
		CgroupParent:   s.rec.CgroupParent,
		Labels:         s.rec.Labels,
		Annotations:    s.rec.Annotations,
		Events:         oomSink{s.e},
	}
}

// persist writes the record; the caller holds s.mu.
func (s *sandbox) persist() error {
	if s.impl != nil {
		st, err := s.impl.State()
		if err != nil {
			return fmt.Errorf("sandbox %s: backend state: %w", s.rec.ID, err)
		}
		s.rec.BackendState = st
	}
	return writeRecord(s.dir, s.rec)
}

func (s *sandbox) status() SandboxStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rec
	ids := slices.Sorted(maps.Keys(r.Containers))
	return SandboxStatus{
		ID: r.ID, Kind: r.Kind, Namespace: r.Namespace, State: r.State, Pid: r.Pid,
		NetNSPath: r.NetNSPath, HostNetwork: r.NetNSPath == "" && !r.PrivateNetwork, Network: r.Network.status(), CgroupParent: r.CgroupParent,
		Labels: maps.Clone(r.Labels), Annotations: maps.Clone(r.Annotations), Info: maps.Clone(r.Info),
		CreatedAt: r.CreatedAt, StartedAt: r.StartedAt, ExitedAt: r.ExitedAt, ExitCode: r.ExitCode,
		Containers: ids, Lifetime: s.lifetime(), Paused: r.Paused, Err: s.recoverErr,
	}
}

// oomSink turns backend OOM notices into engine events.
type oomSink struct{ e *Engine }

func (o oomSink) OOM(sandboxID, containerID string) {
	ev := Event{Topic: TopicTaskOOM, SandboxID: sandboxID, ContainerID: containerID}
	if sb, err := o.e.get(sandboxID); err == nil {
		sb.mu.Lock()
		ev.Namespace = sb.rec.Namespace
		sb.mu.Unlock()
	}
	o.e.events.publish(ev)
}

// CreateSandbox creates a sandbox of spec.Kind. It does not start it.
func (e *Engine) CreateSandbox(ctx context.Context, spec SandboxSpec) (_ SandboxStatus, retErr error) {
	if err := ValidateID("sandbox", spec.ID); err != nil {
		return SandboxStatus{}, err
	}
	if err := e.validateSandboxSpec(spec); err != nil {
		return SandboxStatus{}, err
	}
	b, ok := e.backends[spec.Kind]
	if !ok {
		return SandboxStatus{}, fmt.Errorf("unknown sandbox kind %q (have %v): %w", spec.Kind, e.kinds, errdefs.ErrInvalidArgument)
	}
	if err := b.Check(ctx); err != nil {
		return SandboxStatus{}, fmt.Errorf("sandbox kind %q is not available on this host: %v: %w", spec.Kind, err, errdefs.ErrFailedPrecondition)
	}
	if err := spec.Lifetime.validate(); err != nil {
		return SandboxStatus{}, err
	}
	if err := e.checkNetworkSpec(spec); err != nil {
		return SandboxStatus{}, err
	}
	if spec.Namespace == "" {
		spec.Namespace = "magnetar"
	}
	rec := &sandboxRecord{
		Deadline: spec.Lifetime.Deadline.UTC(), IdleTimeout: spec.Lifetime.IdleTimeout,
		Version: 1, ID: spec.ID, Kind: spec.Kind, Namespace: spec.Namespace,
		Hostname: spec.Hostname, NetNSPath: spec.NetNSPath, PrivateNetwork: spec.PrivateNetwork, HostPID: spec.HostPID, HostIPC: spec.HostIPC, Sysctls: maps.Clone(spec.Sysctls), CgroupParent: spec.CgroupParent, DNS: spec.DNS,
		Labels: maps.Clone(spec.Labels), Annotations: maps.Clone(spec.Annotations),
		State: SandboxCreated, CreatedAt: time.Now().UTC(),
	}
	sb := newSandbox(e, rec, e.sandboxDir(spec.ID))

	// Reserve the ID before doing any work.
	e.mu.Lock()
	if _, dup := e.sandboxes[spec.ID]; dup {
		e.mu.Unlock()
		return SandboxStatus{}, fmt.Errorf("sandbox %q: %w", spec.ID, errdefs.ErrAlreadyExists)
	}
	e.sandboxes[spec.ID] = sb
	e.mu.Unlock()
	defer func() {
		if retErr != nil {
			e.mu.Lock()
			delete(e.sandboxes, spec.ID)
			e.mu.Unlock()
			_ = os.RemoveAll(sb.dir)
		}
	}()

	if err := os.Mkdir(sb.dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return SandboxStatus{}, fmt.Errorf("sandbox %q has leftover state in %s: %w", spec.ID, sb.dir, errdefs.ErrAlreadyExists)
		}
		return SandboxStatus{}, fmt.Errorf("create sandbox dir: %w", err)
	}
	if ns := spec.Network; ns != nil {
		a, err := e.net.Attach(ctx, spec.ID, ns.Name, ns.Egress, e.enforcement(spec.Kind))
		if err != nil {
			return SandboxStatus{}, fmt.Errorf("sandbox %q: %w", spec.ID, err)
		}
		defer func() {
			if retErr != nil {
				_ = e.net.Detach(context.WithoutCancel(ctx), spec.ID)
			}
		}()
		rec.NetNSPath = a.NetNS
		rec.Network = &networkRecord{Name: a.Network, IPs: a.IPs, Gateway: a.Gateway, Egress: ns.Egress}
	}
	cfg := sb.backendConfig()
	cfg.Resources = spec.Resources
	impl, err := b.Create(ctx, cfg)
	if err != nil {
		return SandboxStatus{}, fmt.Errorf("create %s sandbox %q: %w", spec.Kind, spec.ID, runtimeError(err))
	}
	sb.mu.Lock()
	sb.impl = impl
	err = sb.persist()
	if err == nil {
		sb.lastActive = time.Now()
		sb.armExpiry()
	}
	sb.mu.Unlock()
	if err != nil {
		_ = impl.Delete(ctx)
		return SandboxStatus{}, err
	}
	e.events.publish(Event{Topic: TopicSandboxCreate, Namespace: rec.Namespace, SandboxID: rec.ID})
	return sb.status(), nil
}

// StartSandbox starts a created sandbox. Starting a ready one is a no-op.
func (e *Engine) StartSandbox(ctx context.Context, id string) (SandboxStatus, error) {
	sb, err := e.get(id)
	if err != nil {
		return SandboxStatus{}, err
	}
	sb.lifecycle.Lock()
	defer sb.lifecycle.Unlock()
	sb.mu.Lock()
	state, impl := sb.rec.State, sb.impl
	sb.mu.Unlock()
	switch state {
	case SandboxReady:
		return sb.status(), nil
	case SandboxCreated:
	default:
		return SandboxStatus{}, fmt.Errorf("sandbox %q is %s, cannot start it: %w", id, state, errdefs.ErrFailedPrecondition)
	}
	info, err := impl.Start(ctx)
	if err != nil {
		return SandboxStatus{}, fmt.Errorf("start sandbox %q: %w", id, runtimeError(err))
	}
	sb.mu.Lock()
	sb.rec.State, sb.rec.Pid, sb.rec.Info, sb.rec.StartedAt = SandboxReady, info.Pid, info.Info, time.Now().UTC()
	err = sb.persist()
	ns := sb.rec.Namespace
	sb.mu.Unlock()
	if err != nil {
		return SandboxStatus{}, err
	}
	sb.watch()
	e.events.publish(Event{Topic: TopicSandboxStart, Namespace: ns, SandboxID: id, Pid: info.Pid})
	return sb.status(), nil
}

// watch waits in the background for the sandbox to exit on its own.
func (s *sandbox) watch() {
	s.e.background(func(ctx context.Context) {
		st, err := s.impl.Wait(ctx)
		if err != nil {
			return // the engine is closing
		}
		s.exited(st)
	})
}

// exited records that the sandbox is gone and wakes its waiters.
func (s *sandbox) exited(st backend.ExitStatus) {
	s.mu.Lock()
	if s.rec.State == SandboxStopped {
		s.mu.Unlock()
		s.markDone()
		return
	}
	if st.ExitedAt.IsZero() {
		st.ExitedAt = time.Now().UTC()
	}
	s.rec.State, s.rec.ExitCode, s.rec.ExitedAt = SandboxStopped, st.Code, st.ExitedAt
	_ = s.persist()
	ns, id := s.rec.Namespace, s.rec.ID
	s.mu.Unlock()
	s.markDone()
	s.e.events.publish(Event{Topic: TopicSandboxExit, Namespace: ns, SandboxID: id, ExitCode: st.Code, ExitedAt: st.ExitedAt})
}

// KillNow is a StopSandbox timeout that kills every process at once
// (SIGKILL, no grace period).
const KillNow time.Duration = -1

// StopSandbox stops every container of the sandbox (SIGTERM, then SIGKILL
// after timeout; zero is the engine's default grace period, [KillNow] none)
// and then the sandbox itself. Stopping a stopped sandbox is a no-op.
func (e *Engine) StopSandbox(ctx context.Context, id string, timeout time.Duration) error {
	sb, err := e.get(id)
	if err != nil {
		return err
	}
	switch {
	case timeout < 0:
		timeout = 0
	case timeout == 0:
		timeout = e.stopTimeout
	}
	sb.lifecycle.Lock()
	defer sb.lifecycle.Unlock()
	// A paused sandbox is thawed first, so that its containers can handle
	// SIGTERM.
	_ = e.resumeSandboxLocked(ctx, sb)
	sb.mu.Lock()
	state, impl := sb.rec.State, sb.impl
	ctrs := slices.Collect(maps.Values(sb.containers))
	sb.mu.Unlock()
	if state == SandboxStopped || impl == nil {
		return nil
	}
	errs := make([]error, len(ctrs))
	var wg sync.WaitGroup
	for i, c := range ctrs {
		wg.Go(func() { errs[i] = c.stop(ctx, timeout) })
	}
	wg.Wait()
	if err := errors.Join(append(errs, impl.Stop(ctx, timeout))...); err != nil {
		return fmt.Errorf("stop sandbox %q: %w", id, err)
	}
	sb.exited(backend.ExitStatus{Code: 0, ExitedAt: time.Now().UTC()})
	return nil
}

// WaitSandbox blocks until the sandbox has exited, or ctx ends.
func (e *Engine) WaitSandbox(ctx context.Context, id string) (backend.ExitStatus, error) {
	sb, err := e.get(id)
	if err != nil {
		return backend.ExitStatus{}, err
	}
	select {
	case <-sb.done:
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return backend.ExitStatus{Code: sb.rec.ExitCode, ExitedAt: sb.rec.ExitedAt}, nil
}

// Sandbox returns a sandbox's status.
func (e *Engine) Sandbox(ctx context.Context, id string) (SandboxStatus, error) {
	sb, err := e.get(id)
	if err != nil {
		return SandboxStatus{}, err
	}
	return sb.status(), nil
}

// SandboxStats returns the sandbox's resource usage: the backend's own
// numbers where it has them (a VM), else the sum over its containers.
func (e *Engine) SandboxStats(ctx context.Context, id string) (*backend.Stats, error) {
	sb, err := e.get(id)
	if err != nil {
		return nil, err
	}
	sb.mu.Lock()
	impl := sb.impl
	ctrs := slices.Collect(maps.Values(sb.containers))
	sb.mu.Unlock()
	if st, ok := impl.(backend.SandboxStater); ok {
		s, _, err := st.SandboxStats(ctx)
		return s, err
	}
	sum := &backend.Stats{Timestamp: time.Now().UTC()}
	for _, c := range ctrs {
		st, ok := c.impl.(backend.Stater)
		if !ok {
			continue
		}
		s, err := st.Stats(ctx)
		if err != nil {
			continue // a container that just exited has no cgroup left
		}
		// Limits are not summed: an unlimited container reports ~2^63.
		sum.CPUUsageNanos += s.CPUUsageNanos
		sum.MemoryUsageBytes += s.MemoryUsageBytes
		sum.MemoryWorkingBytes += s.MemoryWorkingBytes
		sum.Pids += s.Pids
		sum.DiskReadBytes += s.DiskReadBytes
		sum.DiskWriteBytes += s.DiskWriteBytes
	}
	return sum, nil
}

// SandboxLiveInfo returns the details a running sandbox reports about
// itself now (guest memory, health checks, ... for a VM), or nil when its
// kind reports none.
func (e *Engine) SandboxLiveInfo(ctx context.Context, id string) (map[string]string, error) {
	sb, err := e.get(id)
	if err != nil {
		return nil, err
	}
	sb.mu.Lock()
	impl := sb.impl
	sb.mu.Unlock()
	st, ok := impl.(backend.SandboxStater)
	if !ok {
		return nil, nil
	}
	_, info, err := st.SandboxStats(ctx)
	return info, err
}

// ListSandboxes returns every sandbox, sorted by ID.
func (e *Engine) ListSandboxes(ctx context.Context) []SandboxStatus {
	e.mu.Lock()
	sbs := slices.Collect(maps.Values(e.sandboxes))
	e.mu.Unlock()
	out := make([]SandboxStatus, 0, len(sbs))
	for _, sb := range sbs {
		out = append(out, sb.status())
	}
	slices.SortFunc(out, func(a, b SandboxStatus) int { return cmpString(a.ID, b.ID) })
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// DeleteSandbox kills the sandbox's processes if it still runs (no grace
// period: stop it first for one), deletes its containers, releases
// everything the backend holds and removes its state. Afterwards nothing of
// the sandbox remains on the host.
func (e *Engine) DeleteSandbox(ctx context.Context, id string) error {
	sb, err := e.get(id)
	if err != nil {
		return err
	}
	if err := e.StopSandbox(ctx, id, KillNow); err != nil {
		return err
	}
	sb.lifecycle.Lock()
	defer sb.lifecycle.Unlock()
	sb.mu.Lock()
	ctrs := slices.Collect(maps.Values(sb.containers))
	impl, ns := sb.impl, sb.rec.Namespace
	sb.mu.Unlock()
	var errs []error
	for _, c := range ctrs {
		if _, err := e.deleteContainer(ctx, sb, c); err != nil {
			errs = append(errs, err)
		}
	}
	if impl != nil {
		if err := impl.Delete(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete sandbox %q: %w", id, err)
	}
	sb.mu.Lock()
	attached := sb.rec.Network != nil
	sb.mu.Unlock()
	if attached && e.net != nil {
		if err := e.net.Detach(ctx, id); err != nil {
			return fmt.Errorf("delete sandbox %q: %w", id, err)
		}
	}
	// A backend that could not be recovered (impl nil) or that left a
	// mount behind must not let RemoveAll reach through it into a host
	// volume.
	if err := mount.UnmountRecursive(sb.dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("delete sandbox %q: unmount what is left under its directory: %w", id, err)
	}
	if err := os.RemoveAll(sb.dir); err != nil {
		return fmt.Errorf("delete sandbox %q state: %w", id, err)
	}
	sb.markDone()
	sb.stopExpiry()
	e.mu.Lock()
	delete(e.sandboxes, id)
	e.mu.Unlock()
	e.events.publish(Event{Topic: TopicSandboxDelete, Namespace: ns, SandboxID: id})
	return nil
}

// UpdateSandbox replaces the sandbox's labels and/or annotations (a nil map
// leaves that field unchanged).
func (e *Engine) UpdateSandbox(ctx context.Context, id string, labels, annotations map[string]string) (SandboxStatus, error) {
	sb, err := e.get(id)
	if err != nil {
		return SandboxStatus{}, err
	}
	sb.mu.Lock()
	if labels != nil {
		sb.rec.Labels = maps.Clone(labels)
	}
	if annotations != nil {
		sb.rec.Annotations = maps.Clone(annotations)
	}
	err = sb.persist()
	sb.mu.Unlock()
	if err != nil {
		return SandboxStatus{}, err
	}
	return sb.status(), nil
}
