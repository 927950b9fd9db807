package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// ProcessState is where a process is in its life.
type ProcessState string

// Process states; the names are containerd's task states.
const (
	ProcessCreated ProcessState = "created"
	ProcessRunning ProcessState = "running"
	ProcessStopped ProcessState = "stopped"
	ProcessPaused  ProcessState = "paused"
)

// ContainerSpec describes a container to create in a sandbox.
type ContainerSpec struct {
	ID string
	// Bundle is an absolute path to an OCI bundle (config.json).
	Bundle string
	// Rootfs is mounted at Bundle/rootfs; empty when the bundle has one.
	Rootfs []mount.Mount
	Spec   *specs.Spec
	Stdio  backend.Stdio
}

// ExecSpec describes an extra process in a container.
type ExecSpec struct {
	ContainerID string
	ExecID      string
	Process     *specs.Process
	Stdio       backend.Stdio
}

// ProcessStatus is a snapshot of a container's init or exec'd process.
type ProcessStatus struct {
	SandboxID   string
	ContainerID string
	ExecID      string
	Bundle      string
	Pid         uint32
	State       ProcessState
	Stdio       backend.Stdio
	ExitCode    uint32
	ExitedAt    time.Time
}

type process struct {
	c     *container
	id    string // exec ID; empty for init
	impl  backend.Process
	stdio backend.Stdio
	// spec is an exec'd process's spec, kept in its record.
	spec *specs.Process

	mu    sync.Mutex
	state ProcessState
	pid   uint32
	exit  backend.ExitStatus
	done  chan struct{}
	// watched is set once the exit is being watched (after Start, or a
	// kill of a process that was never started).
	watched bool
	// recState is an exec'd process's backend recovery state (see
	// backend.RecoveryStater).
	recState []byte

	// saveMu serialises the writes of an exec'd process's record;
	// forgotten is set once the record is removed for good.
	saveMu    sync.Mutex
	forgotten bool
}

type container struct {
	id   string
	sb   *sandbox
	impl backend.Container
	init *process

	mu    sync.Mutex
	execs map[string]*process
}

func (p *process) status() ProcessStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return ProcessStatus{
		SandboxID: p.c.sb.rec.ID, ContainerID: p.c.id, ExecID: p.id, Bundle: p.c.sb.bundleOf(p.c.id),
		Pid: p.pid, State: p.state, Stdio: p.stdio, ExitCode: p.exit.Code, ExitedAt: p.exit.ExitedAt,
	}
}

func (s *sandbox) bundleOf(cid string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.rec.Containers[cid]; ok {
		return r.Bundle
	}
	return ""
}

func (s *sandbox) namespace() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rec.Namespace
}

// saveContainer updates the persisted record of c's init process.
func (s *sandbox) saveContainer(c *container) error {
	st := c.init.status()
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rec.Containers[c.id]
	if !ok {
		return nil
	}
	r.Pid, r.State = st.Pid, st.State
	if st.State == ProcessStopped {
		r.Exit = &backend.ExitStatus{Code: st.ExitCode, ExitedAt: st.ExitedAt}
	}
	return s.persist()
}

func (e *Engine) container(sandboxID, id string) (*sandbox, *container, error) {
	sb, err := e.get(sandboxID)
	if err != nil {
		return nil, nil, err
	}
	if err := ValidateID("container", id); err != nil {
		return nil, nil, err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	c, ok := sb.containers[id]
	if !ok {
		return nil, nil, fmt.Errorf("container %q in sandbox %q: %w", id, sandboxID, errdefs.ErrNotFound)
	}
	return sb, c, nil
}

func (e *Engine) process(sandboxID, cid, execID string) (*sandbox, *container, *process, error) {
	sb, c, err := e.container(sandboxID, cid)
	if err != nil {
		return nil, nil, nil, err
	}
	if execID == "" {
		return sb, c, c.init, nil
	}
	if err := ValidateID("exec", execID); err != nil {
		return nil, nil, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok || p == nil {
		return nil, nil, nil, fmt.Errorf("process %q of container %q: %w", execID, cid, errdefs.ErrNotFound)
	}
	return sb, c, p, nil
}

// findContainer reports which sandbox holds container id, if any.
func (e *Engine) findContainer(id string) (string, bool) {
	e.mu.Lock()
	sbs := slices.Collect(maps.Values(e.sandboxes))
	e.mu.Unlock()
	for _, sb := range sbs {
		sb.mu.Lock()
		_, ok := sb.rec.Containers[id]
		sb.mu.Unlock()
		if ok {
			return sb.rec.ID, true
		}
	}
	return "", false
}

func validatePath(what, p string) error {
	if p == "" {
		return nil
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("%s %q must be an absolute, clean path: %w", what, p, errdefs.ErrInvalidArgument)
	}
	return nil
}

func validateStdio(s backend.Stdio) error {
	return errors.Join(validatePath("stdin", s.Stdin), validatePath("stdout", s.Stdout), validatePath("stderr", s.Stderr))
}

// CreateContainer creates a container in a ready sandbox. Container IDs are
// unique across all sandboxes.
func (e *Engine) CreateContainer(ctx context.Context, sandboxID string, spec ContainerSpec) (_ ProcessStatus, retErr error) {
	sb, err := e.get(sandboxID)
	if err != nil {
		return ProcessStatus{}, err
	}
	if err := sb.checkNotPaused(); err != nil {
		return ProcessStatus{}, err
	}
	if err := ValidateID("container", spec.ID); err != nil {
		return ProcessStatus{}, err
	}
	if spec.Bundle == "" {
		return ProcessStatus{}, fmt.Errorf("container %q: bundle is required: %w", spec.ID, errdefs.ErrInvalidArgument)
	}
	if err := errors.Join(validatePath("bundle", spec.Bundle), validateStdio(spec.Stdio)); err != nil {
		return ProcessStatus{}, err
	}
	if spec.Spec == nil {
		return ProcessStatus{}, fmt.Errorf("container %q: OCI spec is required: %w", spec.ID, errdefs.ErrInvalidArgument)
	}
	if spec.Spec.Linux != nil {
		if err := ValidateResources("linux.resources", spec.Spec.Linux.Resources); err != nil {
			return ProcessStatus{}, err
		}
	}
	if other, dup := e.findContainer(spec.ID); dup {
		return ProcessStatus{}, fmt.Errorf("container %q already exists in sandbox %q: %w", spec.ID, other, errdefs.ErrAlreadyExists)
	}
	sb.mu.Lock()
	state, impl := sb.rec.State, sb.impl
	if state == SandboxReady {
		// Reserve the ID under the lock.
		sb.rec.Containers[spec.ID] = &containerRecord{ID: spec.ID, Bundle: spec.Bundle, Rootfs: spec.Rootfs, Stdio: spec.Stdio, State: ProcessCreated}
	}
	sb.mu.Unlock()
	if state != SandboxReady {
		return ProcessStatus{}, fmt.Errorf("sandbox %q is %s, not ready: %w", sandboxID, state, errdefs.ErrFailedPrecondition)
	}
	defer func() {
		if retErr != nil {
			sb.mu.Lock()
			delete(sb.rec.Containers, spec.ID)
			_ = sb.persist()
			sb.mu.Unlock()
		}
	}()
	ci, err := impl.CreateContainer(ctx, backend.ContainerConfig{
		ID: spec.ID, Bundle: spec.Bundle, Rootfs: spec.Rootfs, Spec: spec.Spec, Stdio: spec.Stdio,
	})
	if err != nil {
		return ProcessStatus{}, fmt.Errorf("create container %q: %w", spec.ID, runtimeError(err))
	}
	c := &container{id: spec.ID, sb: sb, impl: ci, execs: map[string]*process{}}
	c.init = &process{c: c, impl: ci.Init(), stdio: spec.Stdio, state: ProcessCreated, done: make(chan struct{})}
	if pr, ok := c.init.impl.(backend.PidReporter); ok {
		c.init.pid = pr.Pid()
	}
	sb.mu.Lock()
	sb.containers[spec.ID] = c
	err = sb.persist()
	sb.mu.Unlock()
	if err != nil {
		sb.mu.Lock()
		delete(sb.containers, spec.ID)
		sb.mu.Unlock()
		_ = ci.Init().Delete(ctx)
		_ = ci.Delete(ctx)
		return ProcessStatus{}, err
	}
	st := c.init.status()
	e.events.publish(Event{
		Topic: TopicTaskCreate, Pid: st.Pid, Namespace: sb.namespace(), SandboxID: sandboxID, ContainerID: spec.ID,
		Bundle: spec.Bundle, Stdin: spec.Stdio.Stdin, Stdout: spec.Stdio.Stdout, Stderr: spec.Stdio.Stderr, Terminal: spec.Stdio.Terminal,
	})
	return st, nil
}

// Start starts a container's init process (execID empty) or an exec'd
// process.
func (e *Engine) Start(ctx context.Context, sandboxID, cid, execID string) (ProcessStatus, error) {
	sb, c, p, err := e.process(sandboxID, cid, execID)
	if err != nil {
		return ProcessStatus{}, err
	}
	if err := sb.checkNotPaused(); err != nil {
		return ProcessStatus{}, err
	}
	p.mu.Lock()
	if p.state != ProcessCreated {
		st := p.state
		p.mu.Unlock()
		return ProcessStatus{}, fmt.Errorf("process %q of container %q is %s, not created: %w", execID, cid, st, errdefs.ErrFailedPrecondition)
	}
	p.mu.Unlock()
	if execID != "" && c.init.status().State != ProcessRunning {
		return ProcessStatus{}, fmt.Errorf("container %q is not running: %w", cid, errdefs.ErrFailedPrecondition)
	}
	pid, err := p.impl.Start(ctx)
	if err != nil {
		return ProcessStatus{}, fmt.Errorf("start process %q of container %q: %w", execID, cid, runtimeError(err))
	}
	var recState []byte
	var recErr error
	if rs, ok := p.impl.(backend.RecoveryStater); ok && execID != "" {
		recState, recErr = rs.RecoveryState()
	}
	p.mu.Lock()
	p.pid = pid
	p.recState = recState
	if p.state == ProcessCreated {
		p.state = ProcessRunning
	}
	p.mu.Unlock()
	if execID == "" {
		if err := sb.saveContainer(c); err != nil {
			return ProcessStatus{}, err
		}
	} else if err := errors.Join(recErr, sb.saveExec(p)); err != nil {
		// The process runs: watch it all the same, so that its exit is
		// reported; only a restart would lose it.
		e.watchProcess(sb, p)
		return ProcessStatus{}, fmt.Errorf("record started process %q of container %q: %w", execID, cid, err)
	}
	e.watchProcess(sb, p)
	ev := Event{Topic: TopicTaskStart, Namespace: sb.namespace(), SandboxID: sandboxID, ContainerID: cid, Pid: pid}
	if execID != "" {
		ev.Topic, ev.ExecID = TopicExecStarted, execID
	}
	e.events.publish(ev)
	return p.status(), nil
}

// watchProcess records the exit of p in the background (once).
func (e *Engine) watchProcess(sb *sandbox, p *process) {
	p.mu.Lock()
	watched := p.watched
	p.watched = true
	p.mu.Unlock()
	if watched {
		return
	}
	e.background(func(ctx context.Context) {
		st, err := p.impl.Wait(ctx)
		if err != nil {
			return // engine closing
		}
		// Record the exit, publish it, then wake waiters: whoever deletes
		// the process after Wait publishes its delete after the exit.
		if !p.recordExit(st) {
			return
		}
		if p.id == "" {
			_ = sb.saveContainer(p.c)
		} else {
			_ = sb.saveExec(p)
		}
		st = p.exitStatus()
		e.events.publish(Event{
			Topic: TopicTaskExit, Namespace: sb.namespace(), SandboxID: sb.rec.ID, ContainerID: p.c.id, ExecID: p.id,
			Pid: p.status().Pid, ExitCode: st.Code, ExitedAt: st.ExitedAt,
		})
		close(p.done)
		sb.noteExit()
	})
}

// recordExit marks p stopped with st; false if it already was. The caller
// closes p.done.
func (p *process) recordExit(st backend.ExitStatus) bool {
	if st.ExitedAt.IsZero() {
		st.ExitedAt = time.Now().UTC()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == ProcessStopped {
		return false
	}
	p.state, p.exit = ProcessStopped, st
	return true
}

func (p *process) exitStatus() backend.ExitStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit
}

// setExited marks p stopped and wakes its waiters at once.
func (p *process) setExited(st backend.ExitStatus) {
	if p.recordExit(st) {
		close(p.done)
	}
}

// Exec adds a process to a running container; start it with [Engine.Start].
func (e *Engine) Exec(ctx context.Context, sandboxID string, spec ExecSpec) (ProcessStatus, error) {
	sb, c, err := e.container(sandboxID, spec.ContainerID)
	if err != nil {
		return ProcessStatus{}, err
	}
	if err := sb.checkNotPaused(); err != nil {
		return ProcessStatus{}, err
	}
	if err := ValidateID("exec", spec.ExecID); err != nil {
		return ProcessStatus{}, err
	}
	if err := validateStdio(spec.Stdio); err != nil {
		return ProcessStatus{}, err
	}
	if spec.Process == nil {
		return ProcessStatus{}, fmt.Errorf("exec %q: process spec is required: %w", spec.ExecID, errdefs.ErrInvalidArgument)
	}
	if c.init.status().State != ProcessRunning {
		return ProcessStatus{}, fmt.Errorf("container %q is not running: %w", spec.ContainerID, errdefs.ErrFailedPrecondition)
	}
	c.mu.Lock()
	if _, dup := c.execs[spec.ExecID]; dup {
		c.mu.Unlock()
		return ProcessStatus{}, fmt.Errorf("exec %q in container %q: %w", spec.ExecID, spec.ContainerID, errdefs.ErrAlreadyExists)
	}
	c.execs[spec.ExecID] = nil // reserve the ID
	c.mu.Unlock()
	impl, err := c.impl.Exec(ctx, backend.ExecConfig{ID: spec.ExecID, Process: spec.Process, Stdio: spec.Stdio})
	if err != nil {
		c.mu.Lock()
		delete(c.execs, spec.ExecID)
		c.mu.Unlock()
		return ProcessStatus{}, fmt.Errorf("exec %q in container %q: %w", spec.ExecID, spec.ContainerID, runtimeError(err))
	}
	p := &process{c: c, id: spec.ExecID, impl: impl, stdio: spec.Stdio, spec: spec.Process, state: ProcessCreated, done: make(chan struct{})}
	if err := sb.saveExec(p); err != nil {
		_ = sb.forgetExec(p)
		_ = impl.Delete(ctx)
		c.mu.Lock()
		delete(c.execs, spec.ExecID)
		c.mu.Unlock()
		return ProcessStatus{}, err
	}
	c.mu.Lock()
	c.execs[spec.ExecID] = p
	c.mu.Unlock()
	e.events.publish(Event{Topic: TopicExecAdded, Namespace: sb.namespace(), SandboxID: sandboxID, ContainerID: spec.ContainerID, ExecID: spec.ExecID})
	return p.status(), nil
}

// State returns a process's status.
func (e *Engine) State(ctx context.Context, sandboxID, cid, execID string) (ProcessStatus, error) {
	_, _, p, err := e.process(sandboxID, cid, execID)
	if err != nil {
		return ProcessStatus{}, err
	}
	return p.status(), nil
}

// Kill signals a process; all signals every process of the container.
func (e *Engine) Kill(ctx context.Context, sandboxID, cid, execID string, sig syscall.Signal, all bool) error {
	sb, _, p, err := e.process(sandboxID, cid, execID)
	if err != nil {
		return err
	}
	st := p.status().State
	if st == ProcessStopped && !all {
		return fmt.Errorf("process %q of container %q has exited: %w", execID, cid, errdefs.ErrNotFound)
	}
	if err := p.impl.Kill(ctx, sig, all); err != nil {
		return err
	}
	if st == ProcessCreated {
		// Never started (or its start failed): its exit is watched from
		// now on, so that Wait returns (containerd kills and waits for a
		// task whose start failed).
		e.watchProcess(sb, p)
	}
	return nil
}

// Wait blocks until a process has exited, or ctx ends.
func (e *Engine) Wait(ctx context.Context, sandboxID, cid, execID string) (backend.ExitStatus, error) {
	_, _, p, err := e.process(sandboxID, cid, execID)
	if err != nil {
		return backend.ExitStatus{}, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit, nil
}

// ResizePTY resizes a process's terminal.
func (e *Engine) ResizePTY(ctx context.Context, sandboxID, cid, execID string, width, height uint32) error {
	_, _, p, err := e.process(sandboxID, cid, execID)
	if err != nil {
		return err
	}
	if !p.stdio.Terminal {
		return fmt.Errorf("process %q of container %q has no terminal: %w", execID, cid, errdefs.ErrFailedPrecondition)
	}
	return p.impl.ResizePTY(ctx, width, height)
}

// CloseStdin closes a process's stdin.
func (e *Engine) CloseStdin(ctx context.Context, sandboxID, cid, execID string) error {
	_, _, p, err := e.process(sandboxID, cid, execID)
	if err != nil {
		return err
	}
	return p.impl.CloseStdin(ctx)
}

// Delete deletes an exited process. Deleting a container's init (execID
// empty) deletes the container; a container that was created but never
// started is killed first.
func (e *Engine) Delete(ctx context.Context, sandboxID, cid, execID string) (ProcessStatus, error) {
	sb, c, p, err := e.process(sandboxID, cid, execID)
	if err != nil {
		return ProcessStatus{}, err
	}
	if execID == "" {
		return e.deleteContainer(ctx, sb, c)
	}
	st := p.status()
	if st.State == ProcessRunning {
		return ProcessStatus{}, fmt.Errorf("process %q of container %q is still running: %w", execID, cid, errdefs.ErrFailedPrecondition)
	}
	if err := p.impl.Delete(ctx); err != nil {
		return ProcessStatus{}, fmt.Errorf("delete process %q: %w", execID, err)
	}
	c.mu.Lock()
	delete(c.execs, execID)
	c.mu.Unlock()
	if err := sb.forgetExec(p); err != nil {
		return ProcessStatus{}, err
	}
	e.events.publish(Event{Topic: TopicTaskDelete, Namespace: sb.namespace(), SandboxID: sandboxID, ContainerID: cid, ExecID: execID,
		Pid: st.Pid, ExitCode: st.ExitCode, ExitedAt: st.ExitedAt})
	return st, nil
}

func (e *Engine) deleteContainer(ctx context.Context, sb *sandbox, c *container) (ProcessStatus, error) {
	st := c.init.status()
	switch st.State {
	case ProcessRunning, ProcessPaused:
		return ProcessStatus{}, fmt.Errorf("container %q is still running: %w", c.id, errdefs.ErrFailedPrecondition)
	case ProcessCreated:
		// Never started: its init waits in runc's exec fifo (or
		// equivalent); kill it before deleting.
		if err := c.init.impl.Kill(ctx, syscall.SIGKILL, true); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
			return ProcessStatus{}, fmt.Errorf("kill created container %q: %w", c.id, err)
		}
		c.init.setExited(backend.ExitStatus{Code: 128 + uint32(syscall.SIGKILL)})
		st = c.init.status()
	}
	c.mu.Lock()
	execs := slices.Collect(maps.Values(c.execs))
	c.execs = map[string]*process{}
	c.mu.Unlock()
	var errs []error
	for _, p := range execs {
		if p != nil {
			errs = append(errs, p.impl.Delete(ctx), sb.forgetExec(p))
		}
	}
	errs = append(errs, c.init.impl.Delete(ctx), c.impl.Delete(ctx), sb.removeContainerDir(c.id))
	if err := errors.Join(errs...); err != nil {
		return ProcessStatus{}, fmt.Errorf("delete container %q: %w", c.id, err)
	}
	sb.mu.Lock()
	delete(sb.containers, c.id)
	delete(sb.rec.Containers, c.id)
	err := sb.persist()
	ns := sb.rec.Namespace
	sb.mu.Unlock()
	e.events.publish(Event{Topic: TopicTaskDelete, Namespace: ns, SandboxID: sb.rec.ID, ContainerID: c.id,
		Pid: st.Pid, ExitCode: st.ExitCode, ExitedAt: st.ExitedAt})
	return st, err
}

// stop ends the container's processes: SIGTERM, then SIGKILL to all after
// timeout (at once when timeout is not positive).
func (c *container) stop(ctx context.Context, timeout time.Duration) error {
	p := c.init
	if p.status().State != ProcessRunning {
		return nil
	}
	if timeout > 0 {
		if err := p.impl.Kill(ctx, syscall.SIGTERM, false); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-p.done:
			return nil
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := p.impl.Kill(ctx, syscall.SIGKILL, true); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Pids lists the processes of a container.
func (e *Engine) Pids(ctx context.Context, sandboxID, cid string) ([]backend.ProcessInfo, error) {
	_, c, err := e.container(sandboxID, cid)
	if err != nil {
		return nil, err
	}
	pr, ok := c.impl.(backend.Pider)
	if !ok {
		return nil, fmt.Errorf("listing processes: %w", errdefs.ErrNotImplemented)
	}
	infos, err := pr.Pids(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range infos {
		for id, p := range c.execs {
			if p != nil && p.status().Pid == infos[i].Pid {
				infos[i].ExecID = id
			}
		}
	}
	return infos, nil
}

// Stats returns a container's resource usage.
func (e *Engine) Stats(ctx context.Context, sandboxID, cid string) (*backend.Stats, error) {
	_, c, err := e.container(sandboxID, cid)
	if err != nil {
		return nil, err
	}
	st, ok := c.impl.(backend.Stater)
	if !ok {
		return nil, fmt.Errorf("container stats: %w", errdefs.ErrNotImplemented)
	}
	return st.Stats(ctx)
}

// HostRoot returns the host path of a container's root file system, and
// whether the container's root is read-only, for kinds whose containers
// use a host directory as their root as it is ([backend.HostRooter]);
// others fail with errdefs.ErrNotImplemented.
func (e *Engine) HostRoot(ctx context.Context, sandboxID, cid string) (string, bool, error) {
	_, c, err := e.container(sandboxID, cid)
	if err != nil {
		return "", false, err
	}
	hr, ok := c.impl.(backend.HostRooter)
	if !ok {
		return "", false, fmt.Errorf("files of container %q: its kind keeps them where the sandboxer cannot reach them: %w", cid, errdefs.ErrNotImplemented)
	}
	root, ro := hr.HostRoot()
	if root == "" {
		return "", false, fmt.Errorf("files of container %q: its sandbox keeps them where the sandboxer cannot reach them: %w", cid, errdefs.ErrNotImplemented)
	}
	return root, ro, nil
}

// Update changes a container's resources.
func (e *Engine) Update(ctx context.Context, sandboxID, cid string, res *specs.LinuxResources) error {
	_, c, err := e.container(sandboxID, cid)
	if err != nil {
		return err
	}
	if res == nil {
		return fmt.Errorf("update container %q: resources are required: %w", cid, errdefs.ErrInvalidArgument)
	}
	if err := ValidateResources("resources", res); err != nil {
		return err
	}
	u, ok := c.impl.(backend.Updater)
	if !ok {
		return fmt.Errorf("updating resources: %w", errdefs.ErrNotImplemented)
	}
	return runtimeError(u.Update(ctx, res))
}

// Pause freezes a container; Resume thaws it.
func (e *Engine) Pause(ctx context.Context, sandboxID, cid string) error {
	return e.pauseResume(ctx, sandboxID, cid, true)
}

// Resume thaws a container frozen by [Engine.Pause].
func (e *Engine) Resume(ctx context.Context, sandboxID, cid string) error {
	return e.pauseResume(ctx, sandboxID, cid, false)
}

func (e *Engine) pauseResume(ctx context.Context, sandboxID, cid string, pause bool) error {
	sb, c, err := e.container(sandboxID, cid)
	if err != nil {
		return err
	}
	pr, ok := c.impl.(backend.Pauser)
	if !ok {
		return fmt.Errorf("pause: %w", errdefs.ErrNotImplemented)
	}
	from, to, topic, do := ProcessRunning, ProcessPaused, TopicTaskPaused, pr.Pause
	if !pause {
		from, to, topic, do = ProcessPaused, ProcessRunning, TopicTaskResumed, pr.Resume
	}
	if st := c.init.status().State; st != from {
		return fmt.Errorf("container %q is %s, not %s: %w", cid, st, from, errdefs.ErrFailedPrecondition)
	}
	if err := do(ctx); err != nil {
		return err
	}
	c.init.mu.Lock()
	if c.init.state == from {
		c.init.state = to
	}
	c.init.mu.Unlock()
	// Kept, so that a restart knows the container is frozen.
	if err := sb.saveContainer(c); err != nil {
		return err
	}
	e.events.publish(Event{Topic: topic, Namespace: sb.namespace(), SandboxID: sandboxID, ContainerID: cid})
	return nil
}

// Containers lists the containers of a sandbox.
func (e *Engine) Containers(ctx context.Context, sandboxID string) ([]ProcessStatus, error) {
	sb, err := e.get(sandboxID)
	if err != nil {
		return nil, err
	}
	sb.mu.Lock()
	ctrs := slices.Collect(maps.Values(sb.containers))
	sb.mu.Unlock()
	out := make([]ProcessStatus, 0, len(ctrs))
	for _, c := range ctrs {
		out = append(out, c.init.status())
	}
	slices.SortFunc(out, func(a, b ProcessStatus) int { return cmpString(a.ContainerID, b.ContainerID) })
	return out, nil
}

// recoverContainers rebuilds the containers of a recovered sandbox from its
// record, where the backend can re-attach to them.
func (s *sandbox) recoverContainers(ctx context.Context) {
	r, ok := s.impl.(backend.ContainerRecoverer)
	for id, rec := range s.rec.Containers {
		var ci backend.Container
		var err error
		if ok {
			ci, err = r.RecoverContainer(ctx, backend.ContainerConfig{ID: id, Bundle: rec.Bundle, Rootfs: rec.Rootfs, Stdio: rec.Stdio}, rec.Pid)
		} else {
			err = errdefs.ErrNotImplemented
		}
		if err != nil {
			// Keep the record so that Delete can still clean up; the
			// process is reported as exited with an unknown status.
			ci = lostContainer{}
		}
		c := &container{id: id, sb: s, impl: ci, execs: map[string]*process{}}
		c.init = &process{c: c, impl: ci.Init(), stdio: rec.Stdio, state: rec.State, pid: rec.Pid, done: make(chan struct{})}
		if rec.Exit != nil {
			c.init.exit = *rec.Exit
		}
		s.containers[id] = c
		switch {
		case rec.State == ProcessStopped:
			close(c.init.done)
		case err != nil:
			c.init.setExited(backend.ExitStatus{Code: 255})
		case rec.State == ProcessRunning || rec.State == ProcessPaused:
			s.e.watchProcess(s, c.init)
		}
		s.recoverExecs(ctx, c)
	}
	s.removeStaleExecs()
}

// lostContainer stands for a container its backend could not re-attach to
// after a restart. Everything but Delete fails.
type lostContainer struct{}

func (lostContainer) Init() backend.Process { return lostProcess{} }
func (lostContainer) Exec(context.Context, backend.ExecConfig) (backend.Process, error) {
	return nil, fmt.Errorf("container was lost across a restart: %w", errdefs.ErrFailedPrecondition)
}
func (lostContainer) Delete(context.Context) error { return nil }

type lostProcess struct{}

var errLost = fmt.Errorf("process was lost across a restart: %w", errdefs.ErrNotFound)

func (lostProcess) Start(context.Context) (uint32, error)            { return 0, errLost }
func (lostProcess) Kill(context.Context, syscall.Signal, bool) error { return errLost }
func (lostProcess) Wait(ctx context.Context) (backend.ExitStatus, error) {
	<-ctx.Done()
	return backend.ExitStatus{}, ctx.Err()
}
func (lostProcess) ResizePTY(context.Context, uint32, uint32) error { return errLost }
func (lostProcess) CloseStdin(context.Context) error                { return errLost }
func (lostProcess) Delete(context.Context) error                    { return nil }
