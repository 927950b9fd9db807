package gvisor

import (
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/pdeathsig"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgoom"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/podfiles"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/podinit"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/reaper"
)

// CRI annotations runsc reads to place a container in a sandbox.
const (
	annContainerType = "io.kubernetes.cri.container-type"
	annSandboxID     = "io.kubernetes.cri.sandbox-id"
)

// Network modes of runsc (--network).
const (
	networkSandbox = "sandbox" // the netstack on the pod's netns interfaces
	networkHost    = "host"    // the host's network stack
	networkNone    = "none"    // loopback only
)

// shmHint prefixes the root spec's annotations of runsc's mount hint for
// the pod's /dev/shm.
const shmHint = "dev.gvisor.spec.mount.magnetar-shm."

// initPath is where the root container's init is bind-mounted.
const initPath = "/magnetar-init"

// sandboxState is what a gVisor sandbox persists.
type sandboxState struct {
	// Network and Platform are runsc's flags for this sandbox.
	Network  string `json:"network"`
	Platform string `json:"platform"`
	// HostFiles: runsc runs with --overlay2=none --file-access=shared
	// (Config.HostFiles when the sandbox was created).
	HostFiles bool `json:"hostFiles,omitempty"`
	// OCISeccomp: runsc runs with --oci-seccomp, so that the sentry
	// applies the containers' seccomp profiles (runsc ignores them
	// without it). Sandboxes created before it was set run without.
	OCISeccomp bool `json:"ociSeccomp,omitempty"`
	// Pid is the runsc sandbox process (0 before Start).
	Pid int `json:"pid,omitempty"`
}

type sandbox struct {
	b   *Backend
	cfg backend.SandboxConfig
	rt  *gorunc.Runc

	mu   sync.Mutex
	st   sandboxState
	ctrs map[string]*container
	// recovered are containers re-attached after a restart.
	recovered []string
	// gofers are the gofer pids being reaped.
	gofers  map[int]bool
	stopped chan struct{} // closed by Stop, Delete or the sandbox's exit
	once    sync.Once
	// ctrEnds tells, per container, whether it runs and when its init
	// ended by SIGKILL; oomAt is the last OOM event of the sandbox's
	// cgroup, oomReported when each container's was reported (oom.go).
	ctrEnds     map[string]containerEnd
	oomAt       time.Time
	oomReported map[string]time.Time
	oom         *cgoom.Watch

	// limMu serializes changes of the sandbox's bound; limits are the
	// containers' resources it was computed from (see limits.go).
	limMu  sync.Mutex
	limits map[string]*specs.LinuxResources
}

func newSandbox(b *Backend, cfg backend.SandboxConfig, state []byte) (*sandbox, error) {
	s := &sandbox{b: b, cfg: cfg, ctrs: map[string]*container{}, gofers: map[int]bool{}, stopped: make(chan struct{}), ctrEnds: map[string]containerEnd{}, oomReported: map[string]time.Time{}}
	if state != nil {
		if err := json.Unmarshal(state, &s.st); err != nil {
			return nil, fmt.Errorf("decode gvisor sandbox state: %w", err)
		}
		if err := s.loadLimits(); err != nil {
			return nil, err
		}
	} else {
		s.st.Platform = b.runscPlatform
		s.st.HostFiles = b.cfg.HostFiles
		s.st.OCISeccomp = true
		switch {
		case cfg.NetNSPath != "":
			s.st.Network = networkSandbox
		case cfg.PrivateNetwork:
			s.st.Network = networkNone
		default:
			s.st.Network = networkHost
		}
	}
	if s.st.Platform == "" {
		return nil, fmt.Errorf("gvisor sandbox %q: no runsc platform: %w", cfg.ID, errdefs.ErrFailedPrecondition)
	}
	s.rt = s.runtime(filepath.Join(cfg.Dir, "root"))
	if s.st.Pid > 0 {
		s.watchSandbox(s.st.Pid)
		s.reapGofer(cfg.ID)
		s.watchOOM(s.st.Pid)
	}
	return s, nil
}

// runtime is runsc with this sandbox's flags, logging into dir.
func (s *sandbox) runtime(dir string) *gorunc.Runc {
	rt := s.b.runtime(s.cfg.Namespace, dir, s.st.Network)
	rt.ExtraArgs[0] = "--platform=" + s.st.Platform
	if s.st.OCISeccomp {
		rt.ExtraArgs = append(rt.ExtraArgs, "--oci-seccomp")
	}
	if s.st.HostFiles {
		// The file service reads and writes the container's root on the
		// host: no overlay, and the gofer does not cache.
		rt.ExtraArgs = append(rt.ExtraArgs, "--overlay2=none", "--file-access=shared")
	} else {
		// The root overlay's file store goes in the sandbox's directory,
		// removed with it: runsc's default (root:self) writes it into the
		// container's root file system, which a caller's directory (an API
		// rootfs_path) would keep, and refuses a second container of the
		// sandbox from the same directory.
		rt.ExtraArgs = append(rt.ExtraArgs, "--overlay2=root:dir="+s.cfg.Dir)
	}
	return rt
}

// globalArgs are runsc's global flags for rt.
func globalArgs(rt *gorunc.Runc) []string {
	return append([]string{"--root", rt.Root, "--log", rt.Log, "--log-format", "json"}, rt.ExtraArgs...)
}

// Start creates and starts the sandbox's root container: the pod init
// (this program re-executed) in an empty, read-only root file system.
func (s *sandbox) Start(ctx context.Context) (_ backend.StartInfo, retErr error) {
	// gVisor's kernel keeps its own System V IPC objects: it cannot share
	// the host's.
	if s.cfg.HostIPC {
		return backend.StartInfo{}, fmt.Errorf("a gVisor pod cannot share the host's IPC namespace (hostIPC): %w", errdefs.ErrInvalidArgument)
	}
	sysctls, err := backend.ParseSysctls(s.cfg.Sysctls)
	if err != nil {
		return backend.StartInfo{}, err
	}
	for _, sc := range sysctls {
		if sc.Namespace == backend.SysctlNet && s.st.Network == networkHost {
			return backend.StartInfo{}, fmt.Errorf("sysctl %q: the pod uses the host's network, setting it would change the host: %w", sc.Key, errdefs.ErrInvalidArgument)
		}
	}
	if err := podfiles.WritePodFiles(s.cfg.Dir, s.cfg.DNS, s.cfg.Hostname); err != nil {
		return backend.StartInfo{}, err
	}
	// The pod's /dev/shm is a tmpfs inside the sandbox, shared by its
	// containers through a mount hint (see writeRootBundle); this
	// directory only names it.
	if err := os.Mkdir(filepath.Join(s.cfg.Dir, podfiles.ShmName), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return backend.StartInfo{}, err
	}
	dir := filepath.Join(s.cfg.Dir, "root")
	if err := s.writeRootBundle(dir); err != nil {
		return backend.StartInfo{}, err
	}
	defer func() {
		if retErr != nil {
			_ = s.destroy(context.Background())
		}
	}()
	pidFile := filepath.Join(dir, "pid")
	if err := s.runsc(ctx, "create", "--bundle", dir, "--pid-file", pidFile, s.cfg.ID); err != nil {
		return backend.StartInfo{}, fmt.Errorf("create gVisor sandbox %q: %w", s.cfg.ID, err)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return backend.StartInfo{}, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return backend.StartInfo{}, fmt.Errorf("runsc pid file: %w", err)
	}
	s.mu.Lock()
	s.st.Pid = pid
	s.mu.Unlock()
	s.watchSandbox(pid)
	s.reapGofer(s.cfg.ID)
	s.watchOOM(pid)
	if err := s.startRoot(ctx); err != nil {
		return backend.StartInfo{}, fmt.Errorf("start gVisor sandbox %q: %w", s.cfg.ID, err)
	}
	if err := s.setSysctls(ctx, sysctls); err != nil {
		return backend.StartInfo{}, err
	}
	_, reason := s.b.Platform()
	info := map[string]string{"platform": s.st.Platform, "network": s.st.Network}
	if reason != "" {
		info["platform_reason"] = reason
	}
	return backend.StartInfo{Pid: uint32(pid), Info: info}, nil
}

// setSysctls sets the pod's sysctls in the sandbox's kernel: the root
// container's init, run again with `runsc exec`, writes them in gVisor's
// /proc/sys (runsc ignores the spec's linux.sysctl). gVisor implements
// few of Linux's sysctls and lets fewer be set (some net.ipv4.tcp_* and
// ip_local_port_range, no kernel.shm*, msg*, sem or fs.mqueue.*): the
// others are refused with the kernel's reason.
func (s *sandbox) setSysctls(ctx context.Context, sysctls []backend.Sysctl) error {
	if len(sysctls) == 0 {
		return nil
	}
	args := []string{"exec", "--cwd", "/", "--env", podinit.SysctlEnv + "=1", "--env", "GOMAXPROCS=1", s.cfg.ID, initPath}
	for _, sc := range sysctls {
		args = append(args, sc.Path, sc.Value)
	}
	err := s.runsc(ctx, args...)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == podinit.SysctlUnsupported {
		return fmt.Errorf("pod sysctls: gVisor's kernel cannot set them: %w: %w", err, errdefs.ErrNotImplemented)
	}
	if err != nil {
		return fmt.Errorf("pod sysctls: %w", err)
	}
	return nil
}

// netCheckFixed is the first runsc release whose check "is this the root
// network namespace?" works on kernels that have
// /proc/sys/net/core/rmem_default in every network namespace (6.x):
// older ones refuse every pod network namespace there.
const netCheckFixed = 20240801

// startRoot runs `runsc start` for the root container. With an older
// runsc and the pod's network, it runs in a private mount namespace where
// /proc/sys/net is hidden, so that runsc's check of the network namespace
// passes (it only tests that rmem_default is absent).
func (s *sandbox) startRoot(ctx context.Context) error {
	if s.st.Network != networkSandbox || s.b.version >= netCheckFixed {
		return s.runsc(ctx, "start", s.cfg.ID)
	}
	errc := make(chan error, 1)
	go func() {
		// The thread keeps the private mount namespace and is never
		// given back to the scheduler: it exits with this goroutine.
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("private mount namespace for runsc start: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return fmt.Errorf("private mount namespace for runsc start: %w", err)
			}
			if err := unix.Mount("tmpfs", "/proc/sys/net", "tmpfs", unix.MS_RDONLY, "size=4k"); err != nil {
				return fmt.Errorf("hide /proc/sys/net from runsc start: %w", err)
			}
			return s.runsc(ctx, "start", s.cfg.ID)
		}()
	}()
	return <-errc
}

// runsc runs a runsc command of the sandbox that should end promptly; its
// error carries runsc's message.
func (s *sandbox) runsc(ctx context.Context, args ...string) error {
	return s.runscWith(ctx, s.rt, s.cfg.Dir, args...)
}

// runscWith runs a runsc command with rt's flags; runsc's output goes to a
// temporary file in dir.
func (s *sandbox) runscWith(ctx context.Context, rt *gorunc.Runc, dir string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, s.b.cfg.CommandTimeout)
	defer cancel()
	f, err := os.CreateTemp(dir, ".runsc-out-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	// A file, not a pipe: the sandbox and gofer processes runsc starts
	// inherit it, and a pipe would keep Wait waiting for them.
	cmd := exec.CommandContext(ctx, s.b.cfg.Binary, append(globalArgs(rt), args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.WaitDelay = time.Second
	if err := pdeathsig.Run(cmd, unix.SIGKILL); err != nil {
		msg, _ := os.ReadFile(f.Name())
		if ctx.Err() != nil {
			return fmt.Errorf("runsc %s: no answer within %v: %w", args[0], s.b.cfg.CommandTimeout, errdefs.ErrUnavailable)
		}
		out := strings.TrimSpace(string(msg))
		if out == "" {
			// runsc wrote its reason only into its log.
			out = strings.TrimPrefix(lastLogLine(rt.Log), ": ")
		}
		return fmt.Errorf("runsc %s: %w: %s", args[0], err, out)
	}
	return nil
}

// writeRootBundle writes the root container's bundle into dir.
func (s *sandbox) writeRootBundle(dir string) error {
	exe, err := s.b.podInitExe()
	if err != nil {
		return err
	}
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"proc", "dev", "sys", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, strings.TrimPrefix(initPath, "/")), nil, 0o755); err != nil {
		return err
	}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: initPath, Type: "bind", Source: exe, Options: []string{"rbind", "ro"}},
	}
	// A dynamically linked init (a test binary built with cgo) needs the
	// host's libraries: they are bound read-only.
	libs, err := libMounts(exe, rootfs)
	if err != nil {
		return err
	}
	mounts = append(mounts, libs...)
	nss := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace}}
	switch s.st.Network {
	case networkSandbox:
		nss = append(nss, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: s.cfg.NetNSPath})
	case networkNone:
		nss = append(nss, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	}
	spec := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: []string{initPath},
			Env:  []string{podinit.Env + "=1", "GOMAXPROCS=1", "GOGC=off"},
			Cwd:  "/",
			// No capabilities: the init only reaps.
			Capabilities:    &specs.LinuxCapabilities{},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: rootfs, Readonly: true},
		Hostname: s.cfg.Hostname,
		Mounts:   mounts,
		Annotations: map[string]string{
			annContainerType: "sandbox",
			annSandboxID:     s.cfg.ID,
			// The pod's /dev/shm: a tmpfs in the sentry, shared by the
			// containers that bind its directory (runsc's mount hints).
			shmHint + "source": filepath.Join(s.cfg.Dir, podfiles.ShmName),
			shmHint + "type":   "tmpfs",
			shmHint + "share":  "pod",
		},
		Linux: &specs.Linux{
			Namespaces:  nss,
			CgroupsPath: s.cgroupsPath(),
			Resources:   s.podResources(),
		},
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600)
}

// cgroupsPath is the sandbox's cgroup: under the pod's cgroupfs parent, or
// /magnetar-gvisor (a systemd slice parent would need runsc's
// --systemd-cgroup for every sandbox; its pods go there too).
func (s *sandbox) cgroupsPath() string {
	p := s.cfg.CgroupParent
	if p == "" || strings.HasSuffix(p, ".slice") || !strings.HasPrefix(p, "/") {
		p = defaultCgroupParent
	}
	return filepath.Join(p, "gvisor-"+s.cfg.ID)
}

// libMounts binds the host's library directories read-only when exe is
// dynamically linked; symbolic links among them (a merged /usr) are
// recreated in rootfs.
func libMounts(exe, rootfs string) ([]specs.Mount, error) {
	f, err := elf.Open(exe)
	if err != nil {
		return nil, fmt.Errorf("pod init %s: %w", exe, err)
	}
	defer f.Close()
	dynamic := false
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			dynamic = true
		}
	}
	if !dynamic {
		return nil, nil
	}
	var out []specs.Mount
	for _, d := range []string{"/lib", "/lib64", "/usr/lib", "/usr/lib64"} {
		fi, err := os.Lstat(d)
		if err != nil {
			continue
		}
		target := filepath.Join(rootfs, d)
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return nil, err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			link, err := os.Readlink(d)
			if err != nil {
				return nil, err
			}
			if err := os.Symlink(link, target); err != nil && !errors.Is(err, os.ErrExist) {
				return nil, err
			}
			continue
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return nil, err
		}
		out = append(out, specs.Mount{Destination: d, Type: "bind", Source: d, Options: []string{"rbind", "ro"}})
	}
	return out, nil
}

// watchSandbox marks the sandbox stopped when its runsc sandbox process
// exits, reaping it when it is a child of this process.
func (s *sandbox) watchSandbox(pid int) {
	watchExit(s.b.stop, &s.b.wg, pid, func() { s.once.Do(func() { close(s.stopped) }) })
}

// reapGofer reaps the gofer runsc started for container id (its pid is in
// runsc's state file once the container started); the gofer ends with the
// container.
func (s *sandbox) reapGofer(id string) {
	data, err := os.ReadFile(filepath.Join(s.rt.Root, id+"_sandbox:"+s.cfg.ID+".state"))
	if err != nil {
		return
	}
	var st struct {
		GoferPid int `json:"goferPid"`
	}
	_ = json.Unmarshal(data, &st)
	s.mu.Lock()
	seen := s.gofers[st.GoferPid]
	if st.GoferPid > 0 {
		s.gofers[st.GoferPid] = true
	}
	s.mu.Unlock()
	if st.GoferPid > 0 && !seen {
		reaper.Watch(s.b.stop, &s.b.wg, st.GoferPid, func(int) {})
	}
}

// Wait blocks until the sandbox stopped (Stop, or its runsc sandbox process
// exited).
func (s *sandbox) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-s.stopped:
		return backend.ExitStatus{ExitedAt: time.Now().UTC()}, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

// Stop kills the containers and then the sandbox.
func (s *sandbox) Stop(ctx context.Context, timeout time.Duration) error {
	s.mu.Lock()
	ctrs := make([]*container, 0, len(s.ctrs))
	for _, c := range s.ctrs {
		ctrs = append(ctrs, c)
	}
	pid := s.st.Pid
	s.mu.Unlock()
	var errs []error
	for _, c := range ctrs {
		if err := c.killAll(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if pid > 0 {
		if err := s.runsc(ctx, "kill", s.cfg.ID, "KILL"); err != nil && s.alive() {
			errs = append(errs, err)
		}
		s.waitStopped(ctx, timeout+5*time.Second)
	}
	s.once.Do(func() { close(s.stopped) })
	return errors.Join(errs...)
}

// alive reports whether the sandbox process still runs.
func (s *sandbox) alive() bool {
	select {
	case <-s.stopped:
		return false
	default:
		return true
	}
}

// waitStopped waits (bounded) for the sandbox process to be gone.
func (s *sandbox) waitStopped(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.stopped:
	case <-t.C:
	case <-ctx.Done():
	}
}

// Delete destroys the sandbox and removes what runsc keeps of it.
func (s *sandbox) Delete(ctx context.Context) error {
	err := s.destroy(ctx)
	s.once.Do(func() { close(s.stopped) })
	return err
}

// destroy force-deletes the sandbox's containers and root container, and
// removes runsc's files of the sandbox left in its root.
func (s *sandbox) destroy(ctx context.Context) error {
	var errs []error
	s.mu.Lock()
	ids := make([]string, 0, len(s.ctrs))
	for id := range s.ctrs {
		ids = append(ids, id)
	}
	ids = append(ids, s.recovered...)
	s.mu.Unlock()
	for _, id := range append(ids, s.cfg.ID) {
		if err := s.runsc(ctx, "delete", "--force", id); err != nil && !notExist(err) {
			errs = append(errs, err)
		}
	}
	if s.st.Pid > 0 {
		s.waitStopped(ctx, 10*time.Second)
	}
	// An OOM kill seen before the cgroup goes is still reported.
	s.oom.Flush()
	s.oom.Close()
	// What a `runsc create` cut short left, unknown to runsc: its sandbox
	// and gofer processes and its cgroup.
	s.b.killLeftovers([]string{"--bundle=" + filepath.Join(s.cfg.Dir, "root"), "--overlay2=root:dir=" + s.cfg.Dir}, s.cgroupsPath())
	// Subcontainers the engine deleted are gone; any other file of this
	// sandbox (a container whose create failed half-way) goes too.
	leftovers, _ := filepath.Glob(filepath.Join(s.rt.Root, "*_sandbox:"+s.cfg.ID+".*"))
	for _, f := range append(leftovers, filepath.Join(s.rt.Root, "runsc-"+s.cfg.ID+".sock")) {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	removeDefaultCgroupParent()
	return errors.Join(errs...)
}

// defaultCgroupParent holds the cgroups of sandboxes whose pod names no
// cgroupfs parent.
const defaultCgroupParent = "/magnetar-gvisor"

// removeDefaultCgroupParent removes the default parent cgroup in every
// hierarchy once it is empty (rmdir fails while a sandbox uses it).
func removeDefaultCgroupParent() {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", defaultCgroupParent))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", defaultCgroupParent))
	for _, d := range dirs {
		_ = unix.Rmdir(d)
	}
}

// notExist reports whether a runsc error says the container is gone.
func notExist(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "does not exist") || strings.Contains(msg, "not found") || strings.Contains(msg, "no such file")
}

// State returns the persisted state.
func (s *sandbox) State() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.Marshal(s.st)
}
