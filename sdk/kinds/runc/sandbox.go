package runc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/podfiles"
)

// sandboxState is what a runc sandbox persists.
type sandboxState struct {
	// IPCNS and UTSNS are the bind-mounted namespace files ("" if none).
	IPCNS string `json:"ipcns,omitempty"`
	UTSNS string `json:"utsns,omitempty"`
	// NetNS is set when the sandbox made its own network namespace.
	NetNS string `json:"netns,omitempty"`
	// PodInit is the init holding the pod's shared PID namespace, started
	// with the first container that joins it (nil: none).
	PodInit *podInitProc `json:"podInit,omitempty"`
}

type sandbox struct {
	b   *Backend
	cfg backend.SandboxConfig

	mu      sync.Mutex
	st      sandboxState
	ctrs    map[string]*container
	stopped chan struct{}
	once    sync.Once
	// podInitCmd is the pod init this process started (nil when there is
	// none, or it was started before a restart); podInitDone is closed
	// once it was reaped.
	podInitCmd  *exec.Cmd
	podInitDone chan struct{}
}

func newSandbox(ctx context.Context, b *Backend, cfg backend.SandboxConfig, state []byte) (*sandbox, error) {
	s := &sandbox{b: b, cfg: cfg, ctrs: map[string]*container{}, stopped: make(chan struct{})}
	if state != nil {
		if err := json.Unmarshal(state, &s.st); err != nil {
			return nil, fmt.Errorf("decode runc sandbox state: %w", err)
		}
	}
	return s, nil
}

// Start creates the pod's IPC (unless it uses the host's) and UTS (unless
// it uses the host network) namespaces, held by bind mounts, not by a
// process; sets the pod's sysctls in its namespaces; writes the pod's
// resolv.conf, hosts and hostname, which every container gets in /etc; and
// mounts the pod's /dev/shm (a tmpfs shared by its containers, as the IPC
// namespace is; a hostIPC pod's containers get the host's).
func (s *sandbox) Start(ctx context.Context) (_ backend.StartInfo, retErr error) {
	t0 := time.Now()
	defer func() {
		if retErr == nil {
			s.b.span(PhaseNamespaces, s.cfg.ID, "", t0)
		}
	}()
	ownNet := s.cfg.NetNSPath == "" && s.cfg.PrivateNetwork
	hostNet := s.cfg.NetNSPath == "" && !ownNet
	hostUTS := hostNet
	sysctls, err := backend.ParseSysctls(s.cfg.Sysctls)
	if err != nil {
		return backend.StartInfo{}, err
	}
	for _, sc := range sysctls {
		if host := sc.Namespace == backend.SysctlIPC && s.cfg.HostIPC || sc.Namespace == backend.SysctlNet && hostNet ||
			sc.Namespace == backend.SysctlUTS && hostUTS; host {
			return backend.StartInfo{}, fmt.Errorf("sysctl %q: the pod uses the host's %s namespace, setting it would change the host: %w",
				sc.Key, sc.Namespace, errdefs.ErrInvalidArgument)
		}
	}
	nsDir := filepath.Join(s.cfg.Dir, "ns")
	if err := os.MkdirAll(nsDir, 0o700); err != nil {
		return backend.StartInfo{}, err
	}
	flags := 0
	if !s.cfg.HostIPC {
		flags |= unix.CLONE_NEWIPC
	}
	if !hostUTS {
		flags |= unix.CLONE_NEWUTS
	}
	if ownNet {
		flags |= unix.CLONE_NEWNET
	}
	defer func() {
		if retErr != nil {
			_ = s.releaseNamespaces()
			_ = podfiles.UnmountShm(s.cfg.Dir)
		}
	}()
	if err := podfiles.WritePodFiles(s.cfg.Dir, s.cfg.DNS, s.cfg.Hostname); err != nil {
		return backend.StartInfo{}, err
	}
	if !s.cfg.HostIPC {
		if err := podfiles.MountShm(s.cfg.Dir); err != nil {
			return backend.StartInfo{}, err
		}
	}
	if err := holdNamespaces(nsDir, flags, s.cfg.Hostname, s.cfg.NetNSPath, sysctls); err != nil {
		return backend.StartInfo{}, err
	}
	s.mu.Lock()
	if !s.cfg.HostIPC {
		s.st.IPCNS = filepath.Join(nsDir, "ipc")
	}
	if !hostUTS {
		s.st.UTSNS = filepath.Join(nsDir, "uts")
	}
	if ownNet {
		s.st.NetNS = filepath.Join(nsDir, "net")
	}
	s.mu.Unlock()
	return backend.StartInfo{}, nil
}

// holdNamespaces creates new namespaces on a locked OS thread, sets the
// hostname in a new UTS namespace, bind-mounts the namespace files into
// dir, and sets sysctls in the namespaces (joining netns, the pod's
// network namespace, for net.* ones when it did not create one). The
// thread is never returned to the Go scheduler: it exits with the
// goroutine, so no other goroutine runs in those namespaces.
func holdNamespaces(dir string, flags int, hostname, netns string, sysctls []backend.Sysctl) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread dies with this goroutine.
		errc <- func() error {
			if err := unix.Unshare(flags); err != nil {
				return fmt.Errorf("unshare namespaces: %w", err)
			}
			if flags&unix.CLONE_NEWUTS != 0 && hostname != "" {
				if err := unix.Sethostname([]byte(hostname)); err != nil {
					return fmt.Errorf("set hostname %q: %w", hostname, err)
				}
			}
			if flags&unix.CLONE_NEWNET != 0 {
				if err := loopbackUp(); err != nil {
					return err
				}
			}
			tid := unix.Gettid()
			for _, ns := range []struct {
				name string
				flag int
			}{{"ipc", unix.CLONE_NEWIPC}, {"uts", unix.CLONE_NEWUTS}, {"net", unix.CLONE_NEWNET}} {
				if flags&ns.flag == 0 {
					continue
				}
				target := filepath.Join(dir, ns.name)
				f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o400)
				if err != nil {
					return err
				}
				f.Close()
				src := fmt.Sprintf("/proc/%d/task/%d/ns/%s", os.Getpid(), tid, ns.name)
				if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
					return fmt.Errorf("bind %s namespace: %w", ns.name, err)
				}
			}
			return setSysctls(flags, netns, sysctls)
		}()
	}()
	return <-errc
}

func (s *sandbox) releaseNamespaces() error {
	var errs []error
	for _, name := range []string{"ipc", "uts", "net"} {
		p := filepath.Join(s.cfg.Dir, "ns", name)
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// setSysctls writes sysctls from the calling (locked, disposable) thread,
// whose IPC, UTS and network namespaces are the pod's: /proc/sys resolves
// namespaced entries through the writing thread's namespaces. It joins the
// network namespace netns first when the thread did not create one.
func setSysctls(flags int, netns string, sysctls []backend.Sysctl) error {
	joined := flags&unix.CLONE_NEWNET != 0
	for _, sc := range sysctls {
		if sc.Namespace == backend.SysctlNet && !joined {
			if netns == "" {
				return fmt.Errorf("sysctl %q: the pod has no network namespace of its own: %w", sc.Key, errdefs.ErrInvalidArgument)
			}
			fd, err := unix.Open(netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("sysctl %q: open the pod's network namespace: %w", sc.Key, err)
			}
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("sysctl %q: join the pod's network namespace: %w", sc.Key, err)
			}
			joined = true
		}
		f, err := os.OpenFile(filepath.Join("/proc/sys", sc.Path), os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return fmt.Errorf("sysctl %q: %w", sc.Key, err)
		}
		_, err = f.WriteString(sc.Value)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("sysctl %q=%q: %w", sc.Key, sc.Value, err)
		}
	}
	return nil
}

// Wait blocks until Stop.
func (s *sandbox) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-s.stopped:
		return backend.ExitStatus{ExitedAt: time.Now().UTC()}, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

// Stop kills what is left of the containers; the engine has already asked
// them to stop.
func (s *sandbox) Stop(ctx context.Context, timeout time.Duration) error {
	s.mu.Lock()
	ctrs := make([]*container, 0, len(s.ctrs))
	for _, c := range s.ctrs {
		ctrs = append(ctrs, c)
	}
	s.mu.Unlock()
	var errs []error
	for _, c := range ctrs {
		if err := c.killAll(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	s.once.Do(func() { close(s.stopped) })
	if err := s.endPodInit(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Delete ends the pod's PID namespace init, releases the namespaces and
// unmounts the pod's /dev/shm.
func (s *sandbox) Delete(ctx context.Context) error {
	s.once.Do(func() { close(s.stopped) })
	return errors.Join(s.endPodInit(), s.releaseNamespaces(), podfiles.UnmountShm(s.cfg.Dir))
}

// State returns the persisted state.
func (s *sandbox) State() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.Marshal(s.st)
}

// procNS matches namespace paths CRI builds from the sandbox pid, which
// is 0 for a runc sandbox: /proc/0/ns/<type>.
var procNS = regexp.MustCompile(`^/proc/(\d+)/ns/[a-z]+$`)

// joinPod points the spec's namespaces at the pod's: CRI wrote
// /proc/<sandbox pid>/ns/* paths, and a runc sandbox has no process.
func (s *sandbox) joinPod(spec *specs.Spec) error {
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	s.mu.Lock()
	st := s.st
	s.mu.Unlock()
	var out []specs.LinuxNamespace
	for _, ns := range spec.Linux.Namespaces {
		m := procNS.FindStringSubmatch(ns.Path)
		if ns.Path == "" || m == nil || m[1] != "0" {
			out = append(out, ns)
			continue
		}
		switch ns.Type {
		case specs.NetworkNamespace:
			switch {
			case s.cfg.NetNSPath != "":
				ns.Path = s.cfg.NetNSPath
			case st.NetNS != "":
				ns.Path = st.NetNS
			default:
				continue // host network
			}
		case specs.IPCNamespace:
			if st.IPCNS == "" {
				continue // the host's IPC namespace
			}
			ns.Path = st.IPCNS
		case specs.UTSNamespace:
			if st.UTSNS == "" {
				continue
			}
			ns.Path = st.UTSNS
		case specs.PIDNamespace:
			if s.cfg.HostPID {
				continue // the host's PID namespace
			}
			// The pod's PID namespace is held by an init of its own,
			// started with the first container that joins it.
			path, err := s.podPidNS()
			if err != nil {
				return err
			}
			ns.Path = path
		default:
			return fmt.Errorf("sharing the pod's %s namespace is not supported by the runc kind: %w", ns.Type, errdefs.ErrNotImplemented)
		}
		out = append(out, ns)
	}
	spec.Linux.Namespaces = out
	return nil
}

// podPidNS returns the pod's shared PID namespace, starting its init when
// there is none yet.
func (s *sandbox) podPidNS() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.st.PodInit; p != nil {
		if p.alive() {
			return p.nsPath(), nil
		}
		return "", fmt.Errorf("the pod's PID namespace init %d has exited: %w", p.Pid, errdefs.ErrFailedPrecondition)
	}
	select {
	case <-s.stopped:
		return "", fmt.Errorf("sandbox %q is stopped: %w", s.cfg.ID, errdefs.ErrFailedPrecondition)
	default:
	}
	cmd, p, err := startPodInit(s.b.podInitExe())
	if err != nil {
		return "", err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.st.PodInit, s.podInitCmd, s.podInitDone = &p, cmd, done
	return p.nsPath(), nil
}

// endPodInit ends the pod's PID namespace init, if any, and with it every
// process left in the namespace.
func (s *sandbox) endPodInit() error {
	s.mu.Lock()
	p, cmd, done := s.st.PodInit, s.podInitCmd, s.podInitDone
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	if err := p.kill(cmd); err != nil {
		return err
	}
	if done != nil {
		t := time.NewTimer(podInitKillWait)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			return fmt.Errorf("pod init %d still runs %v after SIGKILL: %w", p.Pid, podInitKillWait, errdefs.ErrUnavailable)
		}
	}
	s.mu.Lock()
	s.st.PodInit, s.podInitCmd, s.podInitDone = nil, nil, nil
	s.mu.Unlock()
	return nil
}

// loopbackUp brings up "lo" in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring up loopback: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("read loopback flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up loopback: %w", err)
	}
	return nil
}
