package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/pdeathsig"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/binds"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/exitcode"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/hostroot"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/podfiles"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/seccompexec"
	"github.com/magnetar-io/magnetar/sdk/kinds/shimrecord"
)

type container struct {
	s      *sandbox
	id     string
	bundle string
	// init is the container's init.
	init *initProc
	rt   *gorunc.Runc
	// root is the container's root file system on the host.
	root hostroot.Root

	// cgroupfs: the container mounts a cgroup file system (the sentry's),
	// where it is shown its limits.
	cgroupfs bool

	mu       sync.Mutex
	execs    map[string]*execProc
	waitStop context.CancelFunc // ends the `runsc wait` of the init
}

// procNS matches the namespace paths CRI builds from the sandbox pid.
var procNS = regexp.MustCompile(`^/proc/(\d+)/ns/[a-z]+$`)

// containerSpec is spec made a subcontainer of this sandbox: runsc places
// it by the CRI annotations, and runs it in the sandbox's namespaces (the
// paths CRI wrote do not apply inside gVisor). A pod-level PID namespace
// (shareProcessNamespace) is the root container's.
func (s *sandbox) containerSpec(spec specs.Spec) specs.Spec {
	ann := maps.Clone(spec.Annotations)
	if ann == nil {
		ann = map[string]string{}
	}
	ann[annContainerType] = "container"
	ann[annSandboxID] = s.cfg.ID
	spec.Annotations = ann
	spec.Mounts = readOnlyBinds(spec.Mounts, nil)
	podfiles.AddPodFiles(&spec, s.cfg.Dir)
	if shm := filepath.Join(s.cfg.Dir, podfiles.ShmName); dirExists(shm) {
		podfiles.AddShm(&spec, shm)
	}
	if spec.Linux == nil {
		return spec
	}
	l := *spec.Linux
	var nss []specs.LinuxNamespace
	for _, ns := range l.Namespaces {
		if ns.Path != "" && procNS.MatchString(ns.Path) {
			if ns.Type == specs.PIDNamespace {
				ns.Path = fmt.Sprintf("/proc/%d/ns/pid", s.st.Pid)
			} else {
				ns.Path = ""
			}
		}
		if ns.Type == specs.NetworkNamespace || ns.Type == specs.UserNamespace || ns.Type == specs.CgroupNamespace {
			continue // the sandbox's network; no user or cgroup namespace inside
		}
		nss = append(nss, ns)
	}
	l.Namespaces = nss
	spec.Linux = &l
	return spec
}

// HostRoot returns the host path of the container's root file system (and
// whether the container's root is read-only) when the sandbox runs with
// [Config.HostFiles] (the container then uses it as it is), else "": the
// file service cannot reach the container's files.
func (c *container) HostRoot() (string, bool) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if !c.s.st.HostFiles {
		return "", false
	}
	return c.root.Dir, c.root.ReadOnly
}

// CreateContainer mounts the rootfs and runs `runsc create` for a
// subcontainer of the sandbox.
func (s *sandbox) CreateContainer(ctx context.Context, cfg backend.ContainerConfig) (_ backend.Container, retErr error) {
	if cfg.Spec == nil {
		return nil, fmt.Errorf("container %q has no OCI spec: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	if !s.alive() {
		return nil, fmt.Errorf("gVisor sandbox %q is stopped: %w", s.cfg.ID, errdefs.ErrFailedPrecondition)
	}
	if dest, ok := binds.Shared(cfg.Spec.Mounts); ok {
		return nil, fmt.Errorf("container %q: mount %s is shared (bidirectional propagation): mounts made in a gVisor sandbox are the sentry's and never reach the host: %w", cfg.ID, dest, errdefs.ErrNotImplemented)
	}
	spec := s.containerSpec(*cfg.Spec)
	rootfs := ""
	if len(cfg.Rootfs) > 0 {
		rootfs = filepath.Join(cfg.Bundle, "rootfs")
		if err := os.Mkdir(rootfs, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, err
		}
		if err := mount.All(cfg.Rootfs, rootfs); err != nil {
			return nil, fmt.Errorf("mount rootfs of container %q: %w", cfg.ID, err)
		}
		defer func() {
			if retErr != nil {
				_ = mount.UnmountRecursive(rootfs, 0)
			}
		}()
	}
	root := hostroot.Of(cfg, rootfs)
	if err := readonlyPaths(&spec, root.Dir); err != nil {
		return nil, fmt.Errorf("container %q: %w", cfg.ID, err)
	}
	if err := s.execSeccomp(&spec, cfg.Bundle); err != nil {
		return nil, fmt.Errorf("container %q: %w", cfg.ID, err)
	}
	data, err := json.Marshal(&spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.Bundle, "config.json"), data, 0o600); err != nil {
		return nil, fmt.Errorf("write OCI spec: %w", err)
	}
	cfg.Stdio = nullStdio(cfg.Stdio)
	rt := s.runtime(cfg.Bundle)
	if err := shimrecord.Write(cfg.Bundle, shimrecord.Runtime{Kind: Kind, ID: cfg.ID, Binary: s.b.cfg.Binary, Root: rt.Root}); err != nil {
		return nil, err
	}
	c := &container{s: s, id: cfg.ID, bundle: cfg.Bundle, rt: rt, root: root, cgroupfs: mountsCgroupfs(&spec), execs: map[string]*execProc{}}
	var res *specs.LinuxResources
	if spec.Linux != nil {
		res = spec.Linux.Resources
	}
	if err := s.addLimits(cfg.ID, res); err != nil {
		return nil, fmt.Errorf("container %q: %w", cfg.ID, err)
	}
	defer func() {
		if retErr != nil {
			s.dropLimits(cfg.ID)
		}
	}()
	cctx, cancel := context.WithTimeout(ctx, s.b.cfg.CommandTimeout)
	defer cancel()
	ip, err := newInitProc(cctx, c, cfg.Stdio, rootfs)
	if err != nil {
		return nil, err
	}
	ip.pid = s.st.Pid
	c.init = ip
	args := append([]string{"create", "--bundle", cfg.Bundle, "--pid-file", filepath.Join(cfg.Bundle, "init.pid")}, ip.createArgs()...)
	if err := s.runscWith(cctx, rt, cfg.Bundle, append(args, cfg.ID)...); err != nil {
		ip.closeIO()
		_ = s.runsc(context.Background(), "delete", "--force", cfg.ID)
		s.b.killLeftovers([]string{"--bundle=" + cfg.Bundle}, "")
		return nil, fmt.Errorf("create container %q in gVisor sandbox %q: %w", cfg.ID, s.cfg.ID, err)
	}
	s.reapGofer(cfg.ID)
	s.mu.Lock()
	s.ctrs[cfg.ID] = c
	s.ctrEnds[cfg.ID] = ip.end
	s.mu.Unlock()
	return c, nil
}

func (c *container) Init() backend.Process { return c.init }

// Exec prepares an exec'd process; Start runs it (see execProc).
func (c *container) Exec(ctx context.Context, cfg backend.ExecConfig) (backend.Process, error) {
	if cfg.Process == nil {
		return nil, fmt.Errorf("exec %q in container %q has no process spec: %w", cfg.ID, c.id, errdefs.ErrInvalidArgument)
	}
	proc, err := c.execProcess(cfg.Process)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(proc)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.execs[cfg.ID]; ok {
		return nil, fmt.Errorf("exec %q in container %q: %w", cfg.ID, c.id, errdefs.ErrAlreadyExists)
	}
	p := newExecProc(c, cfg.ID, data, nullStdio(cfg.Stdio))
	c.execs[cfg.ID] = p
	return p, nil
}

func (c *container) Delete(ctx context.Context) error {
	c.mu.Lock()
	if c.waitStop != nil {
		c.waitStop()
	}
	c.mu.Unlock()
	c.s.forget(c.id)
	return nil
}

// forget drops what the sandbox holds of a deleted container.
func (s *sandbox) forget(id string) {
	s.mu.Lock()
	delete(s.ctrs, id)
	delete(s.ctrEnds, id)
	delete(s.oomReported, id)
	s.mu.Unlock()
	s.dropLimits(id)
}

func (c *container) killAll(ctx context.Context) error {
	err := c.init.Kill(ctx, syscall.SIGKILL, true)
	if err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
		return err
	}
	return nil
}

// waitInit runs `runsc wait` for the container's init (the pid runsc
// reports is the sandbox's, not the container's) and records its exit.
func (c *container) waitInit() {
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.waitStop = cancel
	c.mu.Unlock()
	go func() {
		defer cancel()
		code, err := runscWait(ctx, c.s.b.cfg.Binary, globalArgs(c.rt), c.id)
		if ctx.Err() != nil {
			return // deleted or closing
		}
		if err != nil {
			code = exitcode.Unknown
			if !c.s.alive() {
				code = 128 + int(syscall.SIGKILL)
			}
		}
		c.init.setExited(code)
	}()
	go func() { // end the wait with the backend
		select {
		case <-c.s.b.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
}

// stopped reports whether runsc's state of the container says its init
// has exited.
func (c *container) stopped(ctx context.Context) bool {
	st, err := c.rt.State(ctx, c.id)
	return err == nil && st.Status == "stopped"
}

// runscWait runs `runsc wait id` and returns the exit code it reports.
func runscWait(ctx context.Context, binary string, global []string, id string) (int, error) {
	cmd := exec.CommandContext(ctx, binary, append(global, "wait", id)...)
	out, err := pdeathsig.Output(cmd, syscall.SIGKILL)
	if err != nil {
		return 0, fmt.Errorf("runsc wait %s: %w", id, err)
	}
	var res struct {
		ExitStatus int `json:"exitStatus"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return 0, fmt.Errorf("runsc wait %s: %q: %w", id, out, err)
	}
	return res.ExitStatus, nil
}

// Pause freezes the container (runsc pause).
func (c *container) Pause(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.s.b.cfg.CommandTimeout)
	defer cancel()
	return c.rt.Pause(ctx, c.id)
}

// Resume thaws the container.
func (c *container) Resume(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.s.b.cfg.CommandTimeout)
	defer cancel()
	return c.rt.Resume(ctx, c.id)
}

// Stats asks the sandbox for the container's usage (runsc events --stats).
func (c *container) Stats(ctx context.Context) (*backend.Stats, error) {
	ctx, cancel := context.WithTimeout(ctx, c.s.b.cfg.CommandTimeout)
	defer cancel()
	// Not go-runc's Stats: its process monitor may close the output pipe
	// before it is read when runsc exits at once.
	cmd := exec.CommandContext(ctx, c.s.b.cfg.Binary, append(globalArgs(c.rt), "events", "--stats", c.id)...)
	data, err := pdeathsig.Output(cmd, syscall.SIGKILL)
	if err != nil {
		return nil, fmt.Errorf("stats of %q: runsc events --stats: %w: %s", c.id, err, exitStderr(err))
	}
	var ev gorunc.Event
	if err := json.Unmarshal(data, &ev); err != nil || ev.Stats == nil {
		return nil, fmt.Errorf("stats of %q: runsc events --stats printed %q: %v", c.id, data, err)
	}
	st := ev.Stats
	// No Raw: runsc's stats are no cgroups message; the summary numbers
	// are encoded as one for CRI.
	out := &backend.Stats{Timestamp: time.Now().UTC()}
	out.CPUUsageNanos = st.Cpu.Usage.Total
	out.MemoryUsageBytes = st.Memory.Usage.Usage
	out.MemoryLimitBytes = st.Memory.Usage.Limit
	if l := c.memoryLimit(); l > 0 {
		out.MemoryLimitBytes = uint64(l) // what the container was given
	}
	out.MemoryWorkingBytes = st.Memory.Usage.Usage
	if inactive, ok := st.Memory.Raw["total_inactive_file"]; ok && inactive < out.MemoryWorkingBytes {
		out.MemoryWorkingBytes -= inactive
	}
	out.Pids = st.Pids.Current
	return out, nil
}

// nullStdio sends a missing stdout or stderr to /dev/null: containerd's
// process I/O handles all three streams or none.
func nullStdio(s backend.Stdio) backend.Stdio {
	if s.Stdin == "" && s.Stdout == "" && s.Stderr == "" {
		return s
	}
	if s.Stdout == "" {
		s.Stdout = os.DevNull
	}
	if s.Stderr == "" && !s.Terminal {
		s.Stderr = os.DevNull
	}
	return s
}

// exitStderr is the standard error of a command that failed.
func exitStderr(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

// dirExists reports whether p is a directory (sandboxes started before
// pods had a /dev/shm have none).
func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// execSeccompFile holds, in a container's bundle, what its exec'd
// processes are started with (execSeccomp).
const execSeccompFile = "exec-seccomp.json"

// execSeccompRecord is the helper's command in the container and the
// container's seccomp profile compiled for it.
type execSeccompRecord struct {
	Command []string `json:"command"`
	Filter  []byte   `json:"filter"`
}

// execSeccomp prepares a container with a seccomp profile for exec: runsc
// applies the profile (--oci-seccomp) to the container's init and its
// children only, not to processes started by `runsc exec`. The profile is
// compiled into the bundle and the pod init's executable bound into the
// container as the helper that installs it before running an exec'd
// command (seccompexec). A profile the helper cannot apply is refused
// rather than leave exec'd processes unconfined.
func (s *sandbox) execSeccomp(spec *specs.Spec, bundle string) error {
	if !s.st.OCISeccomp || spec.Linux == nil || spec.Linux.Seccomp == nil {
		return nil
	}
	prog, err := seccompexec.Compile(spec.Linux.Seccomp)
	if err != nil {
		return fmt.Errorf("seccomp profile: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	exe, err := s.b.podInitExe()
	if err != nil {
		return err
	}
	mounts, command, err := seccompexec.Bind(exe)
	if err != nil {
		return fmt.Errorf("seccomp exec helper: %w", err)
	}
	data, err := json.Marshal(execSeccompRecord{Command: command, Filter: prog})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(bundle, execSeccompFile), data, 0o600); err != nil {
		return err
	}
	spec.Mounts = append(spec.Mounts, mounts...)
	return nil
}

// execProcess is p as runsc exec runs it: through the seccomp helper when
// the container has a profile (execSeccomp).
func (c *container) execProcess(p *specs.Process) (*specs.Process, error) {
	data, err := os.ReadFile(filepath.Join(c.bundle, execSeccompFile))
	if errors.Is(err, os.ErrNotExist) {
		return p, nil // no profile, or a container made before exec'd processes had it
	}
	if err != nil {
		return nil, err
	}
	var r execSeccompRecord
	if err := json.Unmarshal(data, &r); err != nil || len(r.Command) == 0 || len(r.Filter) == 0 {
		return nil, fmt.Errorf("exec in container %q: bad %s (%v): %w", c.id, execSeccompFile, err, errdefs.ErrFailedPrecondition)
	}
	if len(p.Args) == 0 {
		return nil, fmt.Errorf("exec in container %q has no command: %w", c.id, errdefs.ErrInvalidArgument)
	}
	return seccompexec.Wrap(p, r.Command, r.Filter), nil
}
