package wasm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/magnetar-io/magnetar/internal/atomicfile"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/exitcode"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/pidfd"
)

// containerState is what a container persists in its state directory, so
// that a restarted sandboxer can re-attach to (or start) it.
type containerState struct {
	ID     string `json:"id"`
	Bundle string `json:"bundle"`
	// Rootfs is the host path of the root file system; MountedRootfs
	// says the backend mounted it there (and unmounts it on delete).
	Rootfs        string                `json:"rootfs"`
	MountedRootfs bool                  `json:"mountedRootfs,omitempty"`
	Runner        runnerConfig          `json:"runner"`
	Cgroup        string                `json:"cgroup"`
	Resources     *specs.LinuxResources `json:"resources,omitempty"`
	// Pid and StartTime (clock ticks after boot, from /proc/<pid>/stat)
	// identify the runner once started.
	Pid       int    `json:"pid,omitempty"`
	StartTime uint64 `json:"startTime,omitempty"`
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

// container is a wasm container. Its init process is its runner.
type container struct {
	s     *sandbox
	id    string
	dir   string
	cg    *cgroup
	stdio backend.Stdio
	done  chan struct{}

	mu      sync.Mutex
	st      containerState
	started bool
	exited  bool
	exit    backend.ExitStatus
	pidfd   int // for signals; -1 when none
	sio     *runnerStdio
	killSig syscall.Signal
	oomBase uint64
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
	var res *specs.LinuxResources
	cgPath := ""
	if spec.Linux != nil {
		res, cgPath = spec.Linux.Resources, spec.Linux.CgroupsPath
	}
	st.Cgroup, err = cgroupPath(cgPath, s.defaultCgroupParent()+"/"+cfg.ID)
	if err != nil {
		return nil, fmt.Errorf("container %q: %w", cfg.ID, err)
	}
	memLimit := memoryLimit(spec, s.b.cfg.DefaultMemoryLimit)
	st.Resources = cgroupResources(res, memLimit)
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
		CacheDir:         s.b.cacheDir,
		ExitFile:         filepath.Join(dir, exitFile),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create container state dir: %w", err)
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	cg, err := newCgroup(st.Cgroup, st.Resources)
	if err != nil {
		return nil, fmt.Errorf("container %q: %w", cfg.ID, err)
	}
	defer func() {
		if retErr != nil {
			_ = cg.delete(context.WithoutCancel(ctx))
		}
	}()
	if err := writeState(dir, &st); err != nil {
		return nil, err
	}
	c := &container{s: s, id: cfg.ID, dir: dir, cg: cg, stdio: cfg.Stdio, st: st, pidfd: -1, done: make(chan struct{})}
	s.mu.Lock()
	s.ctrs[cfg.ID] = c
	s.mu.Unlock()
	return c, nil
}

// RecoverContainer re-attaches to a container after a restart, from its
// state file: a runner still alive is watched through a pidfd (its exit
// code comes from the exit file it writes), a created one can still be
// started, a gone one reports its recorded exit code (or 255).
func (s *sandbox) RecoverContainer(ctx context.Context, cfg backend.ContainerConfig, pid uint32) (backend.Container, error) {
	dir := filepath.Join(s.containersDir(), cfg.ID)
	st, err := readState(dir)
	if err != nil {
		return nil, fmt.Errorf("recover wasm container %q: %w", cfg.ID, err)
	}
	cg, err := loadCgroup(st.Cgroup)
	if err != nil {
		if cg, err = newCgroup(st.Cgroup, st.Resources); err != nil {
			return nil, fmt.Errorf("recover wasm container %q: %w", cfg.ID, err)
		}
	}
	c := &container{s: s, id: cfg.ID, dir: dir, cg: cg, stdio: cfg.Stdio, st: *st, pidfd: -1, done: make(chan struct{})}
	c.oomBase = cg.oomKills()
	if st.Pid != 0 {
		c.started = true
		fd, err := openRunner(st.Pid, st.StartTime)
		if err != nil {
			c.setExited(c.recordedExit())
		} else if err := c.attach(fd); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("recover wasm container %q: %w", cfg.ID, err)
		}
	}
	s.mu.Lock()
	s.ctrs[cfg.ID] = c
	s.mu.Unlock()
	return c, nil
}

// openRunner opens a pidfd of the runner pid, if it still is the process
// that started at startTime.
func openRunner(pid int, startTime uint64) (int, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("runner %d: %w", pid, err)
	}
	// Checked after opening: the pidfd then refers to this very process.
	if t, err := procStartTime(pid); err != nil || t != startTime {
		unix.Close(fd)
		return -1, fmt.Errorf("runner %d is gone: %w", pid, errdefs.ErrNotFound)
	}
	return fd, nil
}

// procStartTime reads when pid started (clock ticks after boot).
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22, starttime
}

// attach makes the container watch and signal the runner behind pidfd
// fd, which it takes over.
// HostRoot returns the host path of the container's root file system (the
// module's "/") and whether the module sees it read-only.
func (c *container) HostRoot() (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Rootfs, c.st.Runner.ReadonlyRoot
}

func (c *container) attach(fd int) error {
	wfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.SetNonblock(wfd, true); err != nil {
		unix.Close(wfd)
		return err
	}
	c.pidfd = fd
	c.s.b.watch(c, c.st.Pid, wfd)
	return nil
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

// setExited records the runner's exit once and wakes waiters.
func (c *container) setExited(st backend.ExitStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exited {
		return
	}
	c.exited, c.exit = true, st
	if c.pidfd >= 0 {
		unix.Close(c.pidfd)
		c.pidfd = -1
	}
	close(c.done)
}

// exited is called by the watcher when the runner ended: it reports an
// OOM kill first, so that the OOM event precedes the exit.
func (c *container) runnerExited(st backend.ExitStatus) {
	if n := c.cg.oomKills(); n > c.oomBase && c.s.cfg.Events != nil {
		c.s.cfg.Events.OOM(c.s.cfg.ID, c.id)
	}
	c.setExited(st)
}

// signal sends sig to the runner.
func (c *container) signal(sig syscall.Signal) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started {
		return fmt.Errorf("container %q is not started: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	if c.exited || c.pidfd < 0 {
		return fmt.Errorf("container %q has exited: %w", c.id, errdefs.ErrNotFound)
	}
	if err := unix.PidfdSendSignal(c.pidfd, sig, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("container %q has exited: %w", c.id, errdefs.ErrNotFound)
		}
		return fmt.Errorf("signal container %q: %w", c.id, err)
	}
	if sig == syscall.SIGKILL || c.killSig == 0 {
		c.killSig = sig
	}
	return nil
}

// Init is the container's runner.
func (c *container) Init() backend.Process { return initProc{c} }

// Exec is not supported: a module is a single process.
func (c *container) Exec(ctx context.Context, cfg backend.ExecConfig) (backend.Process, error) {
	return nil, fmt.Errorf("exec into wasm container %q: %w", c.id, errdefs.ErrNotImplemented)
}

// Delete kills a runner still alive (one the engine lost track of),
// removes the cgroup, unmounts the rootfs and removes the state dir.
func (c *container) Delete(ctx context.Context) error {
	c.mu.Lock()
	running := c.started && !c.exited
	c.mu.Unlock()
	var errs []error
	if running {
		_ = c.signal(syscall.SIGKILL)
		t := time.NewTimer(10 * time.Second)
		select {
		case <-c.done:
		case <-t.C:
			errs = append(errs, fmt.Errorf("runner of container %q does not die: %w", c.id, errdefs.ErrUnavailable))
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
		errs = append(errs, c.cg.delete(ctx))
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

// Stats reads the container's cgroup.
func (c *container) Stats(ctx context.Context) (*backend.Stats, error) {
	return c.cg.stats()
}

// Update changes the cgroup's limits. The module's linear memory limit was
// fixed when it started.
func (c *container) Update(ctx context.Context, res *specs.LinuxResources) error {
	if res == nil {
		return nil
	}
	var mem uint64
	if res.Memory != nil && res.Memory.Limit != nil && *res.Memory.Limit > 0 {
		mem = uint64(*res.Memory.Limit)
	}
	if err := c.cg.update(cgroupResources(res, mem)); err != nil {
		return fmt.Errorf("update cgroup of container %q: %w", c.id, err)
	}
	return nil
}

// Pids lists the runner.
func (c *container) Pids(ctx context.Context) ([]backend.ProcessInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started || c.exited {
		return nil, nil
	}
	return []backend.ProcessInfo{{Pid: uint32(c.st.Pid)}}, nil
}

// Pause freezes the runner's cgroup.
func (c *container) Pause(ctx context.Context) error { return c.cg.freeze() }

// Resume thaws the runner's cgroup.
func (c *container) Resume(ctx context.Context) error { return c.cg.thaw() }

// initProc is a container's one process.
type initProc struct{ *container }

// Start starts the runner held, puts it in the cgroup, then hands it its
// instructions.
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
	instructions, err := json.Marshal(&c.st.Runner)
	if err != nil {
		return 0, err
	}
	if err := os.Remove(c.st.Runner.ExitFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer cfgW.Close()
	proc, err := os.StartProcess(c.s.b.cfg.Executable, []string{"magnetar-wasm-runner", c.id}, &os.ProcAttr{
		Dir:   "/",
		Env:   []string{runnerEnv + "=1"},
		Files: []*os.File{sio.files[0], sio.files[1], sio.files[2], cfgR},
		// Its own session, so that signals to the sandboxer's process
		// group miss it; its own mount namespace for its root.
		Sys: &syscall.SysProcAttr{Setsid: true, Unshareflags: syscall.CLONE_NEWNS},
	})
	cfgR.Close()
	if err != nil {
		return 0, fmt.Errorf("start runner of container %q: %w", c.id, err)
	}
	sio.closeChildEnds()
	pid := proc.Pid
	fd, err := unix.PidfdOpen(pid, 0)
	_ = proc.Release() // reaped by the watcher, through a pidfd
	if err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		_, _ = unix.Wait4(pid, nil, 0, nil)
		return 0, fmt.Errorf("pidfd of runner %d: %w", pid, err)
	}
	abort := func(err error) (uint32, error) {
		_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		_, _ = unix.Wait4(pid, nil, 0, nil)
		unix.Close(fd)
		return 0, fmt.Errorf("start container %q: %w", c.id, err)
	}
	if err := c.cg.add(pid); err != nil {
		return abort(err)
	}
	c.oomBase = c.cg.oomKills()
	startTime, err := procStartTime(pid)
	if err != nil {
		return abort(err)
	}
	c.st.Pid, c.st.StartTime = pid, startTime
	if err := writeState(c.dir, &c.st); err != nil {
		return abort(err)
	}
	if _, err := cfgW.Write(instructions); err != nil {
		return abort(fmt.Errorf("instruct runner: %w", err))
	}
	if err := cfgW.Close(); err != nil {
		return abort(err)
	}
	c.started = true
	c.sio = sio
	if err := c.attach(fd); err != nil {
		c.pidfd = -1
		return abort(err)
	}
	return uint32(pid), nil
}

// Pid is the runner's pid, 0 before start.
func (p initProc) Pid() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return uint32(p.st.Pid)
}

// Kill signals the runner: SIGTERM and SIGINT make it stop the module
// (exit 128+signal), SIGKILL kills it. all changes nothing: the runner is
// the container's only process.
func (p initProc) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	return p.signal(sig)
}

// Wait blocks until the runner exited.
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

// watch waits for the runner pid through the pidfd fd (owned by the
// watch; see package pidfd) and records its exit. A runner that is this
// process's child is reaped for its status; another one (re-attached after
// a restart) reports the code from its exit file. Close ends the watch and
// leaves the runner running.
func (b *Backend) watch(c *container, pid, fd int) {
	b.wg.Go(func() {
		ex, err := pidfd.Wait(b.life, pid, fd)
		if err != nil {
			return // closing: the runner keeps running
		}
		st := c.recordedExit()
		if ex.Child {
			st.Code = exitcode.Of(ex.Status)
		}
		c.runnerExited(st)
	})
}

// cleanupOrphan kills and removes what is left of a container only known
// from its state file.
func cleanupOrphan(ctx context.Context, st *containerState) error {
	if st.Pid != 0 {
		if fd, err := openRunner(st.Pid, st.StartTime); err == nil {
			_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			_, _ = unix.Poll(pfd, 5000)
			_, _ = unix.Wait4(st.Pid, nil, unix.WNOHANG, nil)
			unix.Close(fd)
		}
	}
	var errs []error
	if st.Cgroup != "" {
		errs = append(errs, deleteCgroup(ctx, st.Cgroup))
	}
	if st.MountedRootfs {
		errs = append(errs, mount.UnmountRecursive(st.Rootfs, 0))
	}
	return errors.Join(errs...)
}
