package wasm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/atomicfile"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/procstat"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// containerState is what a container persists in its state directory, so
// that a restarted sandboxer can re-attach to (or start) it.
type containerState struct {
	ID     string `json:"id"`
	Bundle string `json:"bundle"`
	// Rootfs is the host path of the root file system; MountedRootfs
	// says the backend mounted it there (and unmounts it on delete).
	Rootfs        string       `json:"rootfs"`
	MountedRootfs bool         `json:"mountedRootfs,omitempty"`
	Runner        runnerConfig `json:"runner"`
	// Key names the instance in the runner.
	Key string `json:"key"`
	// Pid and StartTime (clock ticks after boot, from /proc/<pid>/stat)
	// identify the runner once started, Socket is its control socket.
	// Kept in memory only: the runner is the one of <Root>/runner.json.
	Pid       int    `json:"-"`
	StartTime uint64 `json:"-"`
	Socket    string `json:"-"`
	// Legacy* are set in the state of a container made by a version whose
	// containers were runner processes of their own, each in a cgroup.
	LegacyPid       int    `json:"pid,omitempty"`
	LegacyStartTime uint64 `json:"startTime,omitempty"`
	LegacyCgroup    string `json:"cgroup,omitempty"`
}

const (
	stateFile = "state.json"
	exitFile  = "exit"
)

func readState(dir string) (*containerState, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("wasm container state: %v: %w", err, errdefs.ErrNotFound)
		}
		return nil, err
	}
	var st containerState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("decode wasm container state: %w", err)
	}
	return &st, nil
}

func writeState(dir string, st *containerState) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, stateFile), data, 0o600); err != nil {
		return fmt.Errorf("write wasm container state: %w", err)
	}
	return nil
}

// container is a wasm container. Its init process is its instance in the
// runner.
type container struct {
	s     *sandbox
	id    string
	dir   string
	stdio backend.Stdio
	done  chan struct{}

	mu      sync.Mutex
	st      containerState
	runner  *runnerRef // the runner of the started instance
	started bool
	exited  bool
	exit    backend.ExitStatus
	sio     *runnerStdio
	killSig syscall.Signal
}

// CreateContainer mounts the rootfs, checks the module, creates the
// cgroup and records everything the runner will need. Nothing runs yet.
func (s *sandbox) CreateContainer(ctx context.Context, cfg backend.ContainerConfig) (_ backend.Container, retErr error) {
	spec := cfg.Spec
	if spec == nil || spec.Process == nil {
		return nil, fmt.Errorf("container %q has no OCI spec or process: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	if cfg.Stdio.Terminal || spec.Process.Terminal {
		return nil, fmt.Errorf("container %q: terminals are not supported by the wasm kind: %w", cfg.ID, errdefs.ErrNotImplemented)
	}
	if len(spec.Process.Args) == 0 {
		return nil, fmt.Errorf("container %q: process.args must name the .wasm module: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	module, err := modulePath(spec.Process.Args[0], spec.Process.Cwd)
	if err != nil {
		return nil, fmt.Errorf("container %q: %w", cfg.ID, err)
	}
	s.mu.Lock()
	_, dup := s.ctrs[cfg.ID]
	s.mu.Unlock()
	if dup {
		return nil, fmt.Errorf("container %q: %w", cfg.ID, errdefs.ErrAlreadyExists)
	}
	st := containerState{ID: cfg.ID, Bundle: cfg.Bundle}
	switch {
	case len(cfg.Rootfs) > 0:
		st.Rootfs, st.MountedRootfs = filepath.Join(cfg.Bundle, "rootfs"), true
		if err := os.Mkdir(st.Rootfs, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, err
		}
		if err := mount.All(cfg.Rootfs, st.Rootfs); err != nil {
			return nil, fmt.Errorf("mount rootfs of container %q: %w", cfg.ID, err)
		}
		defer func() {
			if retErr != nil {
				_ = mount.UnmountRecursive(st.Rootfs, 0)
			}
		}()
	case spec.Root != nil && spec.Root.Path != "":
		st.Rootfs = spec.Root.Path
		if !filepath.IsAbs(st.Rootfs) {
			st.Rootfs = filepath.Join(cfg.Bundle, st.Rootfs)
		}
	default:
		return nil, fmt.Errorf("container %q has no rootfs: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	if err := checkModule(st.Rootfs, module); err != nil {
		return nil, fmt.Errorf("container %q: %w", cfg.ID, err)
	}
	memLimit := memoryLimit(spec, s.b.cfg.DefaultMemoryLimit)
	cwd := spec.Process.Cwd
	if cwd == "" {
		cwd = "/"
	}
	dir := filepath.Join(s.containersDir(), cfg.ID)
	st.Runner = runnerConfig{
		Rootfs:           st.Rootfs,
		Module:           module,
		Args:             spec.Process.Args,
		Env:              moduleEnv(spec.Process.Env, cwd),
		Cwd:              cwd,
		ReadonlyRoot:     spec.Root != nil && spec.Root.Readonly,
		Preopens:         preopens(spec),
		MemoryLimitPages: memoryPages(memLimit),
		ExitFile:         filepath.Join(dir, exitFile),
	}
	st.Key = s.instanceKey(cfg.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create container state dir: %w", err)
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	if err := writeState(dir, &st); err != nil {
		return nil, err
	}
	c := &container{s: s, id: cfg.ID, dir: dir, stdio: cfg.Stdio, st: st, done: make(chan struct{})}
	s.mu.Lock()
	s.ctrs[cfg.ID] = c
	s.mu.Unlock()
	return c, nil
}

// RecoverContainer re-attaches to a container after a restart, from its
// state file: an instance in a runner still alive is waited for there (the
// runner keeps its exit code), a created one can still be started, one
// whose runner is gone reports its recorded exit code (or 255).
func (s *sandbox) RecoverContainer(ctx context.Context, cfg backend.ContainerConfig, pid uint32) (backend.Container, error) {
	dir := filepath.Join(s.containersDir(), cfg.ID)
	st, err := readState(dir)
	if err != nil {
		return nil, fmt.Errorf("recover wasm container %q: %w", cfg.ID, err)
	}
	c := &container{s: s, id: cfg.ID, dir: dir, stdio: cfg.Stdio, st: *st, done: make(chan struct{})}
	if st.Key == "" {
		// Made by a version before the shared runner: its process is
		// ended (exit 137) and its cgroup removed; the container can only
		// be deleted.
		c.started = st.LegacyPid != 0
		c.st.Key = s.instanceKey(cfg.ID)
		if c.started {
			killed := endLegacyRunner(st.LegacyPid, st.LegacyStartTime)
			removeLegacyCgroup(st.LegacyCgroup, "/magnetar/"+s.cfg.ID)
			exit := c.recordedExit()
			if killed {
				exit.Code = 128 + uint32(syscall.SIGKILL)
			}
			c.setExited(exit, false)
		}
		s.mu.Lock()
		s.ctrs[cfg.ID] = c
		s.mu.Unlock()
		return c, nil
	}
	ref := s.b.recoverRunner()
	switch {
	case pid != 0 && ref != nil && ref.Pid == int(pid):
		c.started, c.runner = true, ref
		c.st.Pid, c.st.StartTime, c.st.Socket = ref.Pid, ref.StartTime, ref.Socket
		s.b.watch(c, ref)
	case pid != 0: // its runner is gone
		c.started = true
		c.st.Pid = int(pid)
		c.setExited(c.recordedExit(), false)
	case ref != nil:
		// Not started as far as the engine knows: an instance started just
		// before a crash is ended, so that the container starts afresh.
		if _, err := ref.call(ctx, &request{Op: "delete", ID: c.st.Key}); err != nil && ref.alive() {
			return nil, fmt.Errorf("recover wasm container %q: %w", cfg.ID, err)
		}
	}
	s.mu.Lock()
	s.ctrs[cfg.ID] = c
	s.mu.Unlock()
	return c, nil
}

// endLegacyRunner kills the runner process of a container of an earlier
// version, if pid still is the process that started at startTime, and
// waits (at most 5 s) for it to die; it reports whether it killed it.
func endLegacyRunner(pid int, startTime uint64) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if t, err := procstat.StartTime(pid); err != nil || t != startTime {
		return false
	}
	if unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) != nil {
		return false
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	_, _ = unix.Poll(pfd, 5000)
	_, _ = unix.Wait4(pid, nil, unix.WNOHANG, nil)
	return true
}

// removeLegacyCgroup removes the (empty) cgroup p of an earlier version's
// container from every hierarchy it may be in, and its parent when that is
// the sandbox's default parent (and empty).
func removeLegacyCgroup(p, defaultParent string) {
	if p == "" || !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return
	}
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*")
	dirs = append(dirs, "/sys/fs/cgroup")
	for _, d := range dirs {
		_ = os.Remove(filepath.Join(d, p))
		if path.Dir(p) == defaultParent {
			_ = os.Remove(filepath.Join(d, defaultParent))
		}
	}
}

// HostRoot returns the host path of the container's root file system (the
// module's "/") and whether the module sees it read-only.
func (c *container) HostRoot() (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Rootfs, c.st.Runner.ReadonlyRoot
}

// recordedExit is the exit status the runner wrote, else 128+the signal
// the backend killed it with, else 255 (unknown).
func (c *container) recordedExit() backend.ExitStatus {
	now := time.Now().UTC()
	if data, err := os.ReadFile(filepath.Join(c.dir, exitFile)); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 32); err == nil {
			return backend.ExitStatus{Code: uint32(n), ExitedAt: now}
		}
	}
	c.mu.Lock()
	sig := c.killSig
	c.mu.Unlock()
	if sig != 0 {
		return backend.ExitStatus{Code: 128 + uint32(sig), ExitedAt: now}
	}
	return backend.ExitStatus{Code: 255, ExitedAt: now}
}

// setExited records the instance's exit once (after its OOM event, if
// oom) and wakes waiters.
func (c *container) setExited(st backend.ExitStatus, oom bool) {
	c.mu.Lock()
	if c.exited {
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	if oom && c.s.cfg.Events != nil {
		c.s.cfg.Events.OOM(c.s.cfg.ID, c.id)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exited {
		return
	}
	c.exited, c.exit = true, st
	close(c.done)
}

// signal sends sig to the instance.
func (c *container) signal(ctx context.Context, sig syscall.Signal) error {
	c.mu.Lock()
	if !c.started {
		c.mu.Unlock()
		return fmt.Errorf("container %q is not started: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	if c.exited || c.runner == nil {
		c.mu.Unlock()
		return fmt.Errorf("container %q has exited: %w", c.id, errdefs.ErrNotFound)
	}
	ref := c.runner
	if sig == syscall.SIGKILL || c.killSig == 0 {
		c.killSig = sig
	}
	c.mu.Unlock()
	if _, err := ref.call(ctx, &request{Op: "kill", ID: c.st.Key, Signal: int(sig)}); err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("container %q has exited: %w", c.id, errdefs.ErrNotFound)
		}
		if !ref.alive() {
			return fmt.Errorf("container %q has exited: %w", c.id, errdefs.ErrNotFound)
		}
		return fmt.Errorf("signal container %q: %w", c.id, err)
	}
	return nil
}

// Init is the container's instance.
func (c *container) Init() backend.Process { return initProc{c} }

// Exec is not supported: a module is a single process.
func (c *container) Exec(ctx context.Context, cfg backend.ExecConfig) (backend.Process, error) {
	return nil, fmt.Errorf("exec into wasm container %q: %w", c.id, errdefs.ErrNotImplemented)
}

// Delete ends an instance still running (one the engine lost track of),
// has the runner forget it, unmounts the rootfs and removes the state dir.
func (c *container) Delete(ctx context.Context) error {
	c.mu.Lock()
	ref, started := c.runner, c.started
	c.mu.Unlock()
	var errs []error
	if ref != nil && ref.alive() {
		if _, err := ref.call(ctx, &request{Op: "delete", ID: c.st.Key}); err != nil && ref.alive() {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 && started {
		// The runner has forgotten the instance: its wait answers now.
		t := time.NewTimer(10 * time.Second)
		select {
		case <-c.done:
		case <-t.C:
			errs = append(errs, fmt.Errorf("instance of container %q does not stop: %w", c.id, errdefs.ErrUnavailable))
		case <-ctx.Done():
			errs = append(errs, ctx.Err())
		}
		t.Stop()
	}
	c.mu.Lock()
	if c.sio != nil {
		c.sio.close()
		c.sio = nil
	}
	c.mu.Unlock()
	if len(errs) == 0 {
		if c.st.MountedRootfs {
			errs = append(errs, mount.UnmountRecursive(c.st.Rootfs, 0))
		}
		errs = append(errs, os.RemoveAll(c.dir))
		c.s.mu.Lock()
		delete(c.s.ctrs, c.id)
		c.s.mu.Unlock()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete wasm container %q: %w", c.id, err)
	}
	return nil
}

// Stats reports the instance's CPU time (its thread's) and its linear
// memory against its limit: its size as the usage, the part of it in RAM
// as the working set.
func (c *container) Stats(ctx context.Context) (*backend.Stats, error) {
	c.mu.Lock()
	ref, started := c.runner, c.started
	c.mu.Unlock()
	now := time.Now().UTC()
	limit := pagesToBytes(c.st.Runner.MemoryLimitPages)
	if !started || ref == nil {
		return &backend.Stats{Timestamp: now, MemoryLimitBytes: limit}, nil
	}
	resp, err := ref.call(ctx, &request{Op: "stats", ID: c.st.Key})
	if err != nil {
		if errdefs.IsNotFound(err) || !ref.alive() {
			return &backend.Stats{Timestamp: now, MemoryLimitBytes: limit}, nil
		}
		return nil, fmt.Errorf("stats of container %q: %w", c.id, err)
	}
	st := &backend.Stats{
		Timestamp: now, CPUUsageNanos: resp.CPUNanos,
		MemoryUsageBytes: resp.MemoryBytes, MemoryWorkingBytes: resp.MemoryResident,
		MemoryLimitBytes: resp.MemoryLimit,
	}
	c.mu.Lock()
	if !c.exited {
		st.Pids = 1
	}
	c.mu.Unlock()
	return st, nil
}

// Update changes the instance's memory limit (for its later growth); CPU
// settings are not enforced per instance.
func (c *container) Update(ctx context.Context, res *specs.LinuxResources) error {
	if res == nil || res.Memory == nil || res.Memory.Limit == nil {
		return nil
	}
	var mem uint64
	if *res.Memory.Limit > 0 {
		mem = uint64(*res.Memory.Limit)
	}
	pages := memoryPages(mem)
	c.mu.Lock()
	ref, started := c.runner, c.started
	c.st.Runner.MemoryLimitPages = pages
	err := writeState(c.dir, &c.st)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if started && ref != nil {
		if _, err := ref.call(ctx, &request{Op: "update", ID: c.st.Key, MemoryLimitPages: pages}); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("update container %q: %w", c.id, err)
		}
	}
	return nil
}

// Pids lists the runner, the process the instance runs in.
func (c *container) Pids(ctx context.Context) ([]backend.ProcessInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started || c.exited {
		return nil, nil
	}
	return []backend.ProcessInfo{{Pid: uint32(c.st.Pid)}}, nil
}

// initProc is a container's one process.
type initProc struct{ *container }

// Start has the runner (started on demand) instantiate the module with the
// container's stdio, and returns once its _start runs.
func (p initProc) Start(ctx context.Context) (_ uint32, retErr error) {
	c := p.container
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return 0, fmt.Errorf("container %q was already started: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	sio, err := openStdio(ctx, c.stdio)
	if err != nil {
		return 0, fmt.Errorf("container %q: %w", c.id, err)
	}
	defer func() {
		if retErr != nil {
			sio.close()
		}
	}()
	if err := os.Remove(c.st.Runner.ExitFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	ref, err := c.s.b.currentRunner(ctx)
	if err != nil {
		return 0, fmt.Errorf("start container %q: %w", c.id, err)
	}
	// Not recorded here (no fsync on the way to the first output): the
	// engine records the pid Start returns, and every live instance is in
	// the runner of <Root>/runner.json (a runner only exits, or is
	// replaced, once it has no instance), so RecoverContainer finds it.
	req := &request{Op: "start", ID: c.st.Key, Start: &c.st.Runner}
	for attempt := 0; ; attempt++ {
		var resp *response
		resp, err = ref.call(ctx, req, sio.files[0], sio.files[1], sio.files[2])
		if err == nil || attempt > 0 || ctx.Err() != nil {
			break
		}
		// A runner that is exiting (idle) refuses; one that closed its
		// socket (idle) or died does not answer, and then exits: once
		// more in a new runner.
		if resp != nil && !errors.Is(err, errRunnerExiting) || resp == nil && !ref.exited(2*time.Second) {
			break
		}
		if ref, err = c.s.b.replaceRunner(ref); err != nil {
			break
		}
	}
	if err != nil {
		return 0, fmt.Errorf("start container %q: %w", c.id, err)
	}
	c.st.Pid, c.st.StartTime, c.st.Socket = ref.Pid, ref.StartTime, ref.Socket
	sio.closeChildEnds()
	c.started = true
	c.sio = sio
	c.runner = ref
	c.s.b.watch(c, ref)
	return uint32(ref.Pid), nil
}

// Pid is the runner's pid, 0 before start.
func (p initProc) Pid() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return uint32(p.st.Pid)
}

// Kill signals the instance: see the package documentation. all changes
// nothing: the instance is the container's only process.
func (p initProc) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	return p.signal(ctx, sig)
}

// Wait blocks until the instance exited.
func (p initProc) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-p.done:
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit, nil
}

// ResizePTY is not supported: there are no terminals.
func (p initProc) ResizePTY(ctx context.Context, width, height uint32) error {
	return fmt.Errorf("wasm container %q has no terminal: %w", p.id, errdefs.ErrNotImplemented)
}

// CloseStdin lets go of the backend's end of the stdin FIFO: the module
// reads end of file once the client's end is closed too.
func (p initProc) CloseStdin(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sio != nil && p.sio.stdinHold != nil {
		err := p.sio.stdinHold.Close()
		p.sio.stdinHold = nil
		return err
	}
	return nil
}

// Delete releases the process's handles.
func (p initProc) Delete(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sio != nil {
		p.sio.close()
		p.sio = nil
	}
	return nil
}

// watch waits in the runner for the instance's exit and records it. A
// runner that goes away ends the wait with the recorded exit code (the
// exit file), 128+the signal it was sent, or 255. Close ends the watch
// and leaves the instance running.
func (b *Backend) watch(c *container, ref *runnerRef) {
	b.wg.Go(func() {
		for {
			resp, err := ref.call(b.life, &request{Op: "wait", ID: c.st.Key})
			if b.life.Err() != nil {
				return // closing: the instance keeps running
			}
			if err == nil {
				c.setExited(backend.ExitStatus{Code: resp.Code, ExitedAt: resp.ExitedAt}, resp.OOM)
				return
			}
			if errdefs.IsNotFound(err) || !ref.alive() {
				c.setExited(c.recordedExit(), false)
				return
			}
			select { // a transient failure (EMFILE, say): again shortly
			case <-b.life.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
}

// cleanupOrphan ends and removes what is left of a container only known
// from its state file.
func (b *Backend) cleanupOrphan(ctx context.Context, st *containerState) error {
	if ref := b.recoverRunner(); ref != nil {
		if _, err := ref.call(ctx, &request{Op: "delete", ID: st.Key}); err != nil && ref.alive() {
			return err
		}
	}
	if st.MountedRootfs {
		return mount.UnmountRecursive(st.Rootfs, 0)
	}
	return nil
}
