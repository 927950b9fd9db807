package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/binds"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/podfiles"
)

type container struct {
	s    *sandbox
	id   string
	dir  string // <shared>/<id>
	init *proc
	// hostRoot is the host bind mount of the root file system (see
	// files.go); readonly is the spec's root.readonly.
	hostRoot string
	readonly bool

	mu    sync.Mutex
	execs map[string]*proc
}

// CreateContainer mounts the rootfs and bind sources into the shared
// directory, writes the rewritten spec, and creates the task in the guest.
func (s *sandbox) CreateContainer(ctx context.Context, cfg backend.ContainerConfig) (_ backend.Container, retErr error) {
	if cfg.Spec == nil {
		return nil, fmt.Errorf("container %q has no OCI spec: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	if dest, ok := binds.Shared(cfg.Spec.Mounts); ok {
		return nil, fmt.Errorf("container %q: mount %s is shared (bidirectional propagation): mounts made in a microVM are the guest kernel's and never reach the host (host-to-container propagation, rslave, works): %w", cfg.ID, dest, errdefs.ErrNotImplemented)
	}
	tc, err := s.taskClient()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.shared, cfg.ID)
	if err := os.Mkdir(dir, 0o711); err != nil {
		return nil, fmt.Errorf("container dir: %w", err)
	}
	defer func() {
		if retErr != nil {
			_ = s.removeHostRoot(cfg.ID)
			if unmountUnder(dir) == nil {
				_ = os.RemoveAll(dir)
			}
		}
	}()
	// The guest can write to the shared directory (9p): everything below
	// dir is created and mounted on through a handle that cannot be led
	// out of dir by links the guest plants.
	root, err := openRootNoFollow(dir)
	if err != nil {
		return nil, fmt.Errorf("container dir: %w", err)
	}
	defer root.Close()
	spec, err := s.prepare(cfg, dir, root)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := writeNew(root, "config.json", data, 0o600); err != nil {
		return nil, fmt.Errorf("write OCI spec: %w", err)
	}
	hostRoot, err := s.bindHostRoot(cfg.ID, root)
	if err != nil {
		return nil, err
	}
	c := &container{s: s, id: cfg.ID, dir: dir, execs: map[string]*proc{}, hostRoot: hostRoot, readonly: spec.Root.Readonly}
	p, err := c.newProc(ctx, "", cfg.Stdio)
	if err != nil {
		return nil, err
	}
	resp, err := tc.Create(s.ns(ctx), &taskapi.CreateTaskRequest{
		ID: cfg.ID, Bundle: s.guestPath(dir), Terminal: cfg.Stdio.Terminal,
		Stdin: p.guestIn, Stdout: p.guestOut, Stderr: p.guestErr,
	})
	if err != nil {
		p.closeIO()
		// The guest may have created it anyway (a deadline that ran out
		// while it worked): do not leave it there without its rootfs.
		s.forgetInGuest(tc, cfg.ID, "")
		return nil, fmt.Errorf("create container %q in the guest: %w", cfg.ID, errgrpc.ToNative(err))
	}
	p.startInput()
	p.pid = resp.GetPid()
	c.init = p
	s.mu.Lock()
	s.ctrs[cfg.ID] = c
	s.mu.Unlock()
	return c, nil
}

// forgetInGuest kills and deletes, best effort and with a context of its
// own, a container (execID "") or exec whose creation the host gave up on.
func (s *sandbox) forgetInGuest(tc taskapi.TTRPCTaskService, id, execID string) {
	ctx, cancel := context.WithTimeout(s.ns(context.Background()), 10*time.Second)
	defer cancel()
	_, _ = tc.Kill(ctx, &taskapi.KillRequest{ID: id, ExecID: execID, Signal: uint32(syscall.SIGKILL), All: execID == ""})
	_, _ = tc.Delete(ctx, &taskapi.DeleteRequest{ID: id, ExecID: execID})
}

// prepare mounts the rootfs at dir/rootfs and the sources of bind mounts
// under dir/mounts (through root, which is dir), and returns the spec
// rewritten for the guest. Bind mounts marked "ro" are read-only on the
// host too, so that the guest cannot write to them whatever it runs.
func (s *sandbox) prepare(cfg backend.ContainerConfig, dir string, root *os.Root) (*specs.Spec, error) {
	spec := *cfg.Spec
	// The pod's resolv.conf, shared into the guest like any bind mount.
	spec.Mounts = slices.Clone(spec.Mounts)
	podfiles.AddResolvConf(&spec, s.cfg.Dir)
	if err := root.Mkdir("rootfs", 0o711); err != nil {
		return nil, err
	}
	readonly := false
	if len(cfg.Rootfs) > 0 {
		if err := mountAt(root, "rootfs", func(target string) error { return mount.All(cfg.Rootfs, target) }); err != nil {
			return nil, fmt.Errorf("mount rootfs of container %q: %w", cfg.ID, err)
		}
	} else {
		if spec.Root == nil || spec.Root.Path == "" {
			return nil, fmt.Errorf("container %q has neither rootfs mounts nor root.path: %w", cfg.ID, errdefs.ErrInvalidArgument)
		}
		src := spec.Root.Path
		if !filepath.IsAbs(src) {
			src = filepath.Join(cfg.Bundle, src)
		}
		if err := mountAt(root, "rootfs", bindTo(src)); err != nil {
			return nil, fmt.Errorf("bind rootfs %s of container %q: %w", src, cfg.ID, err)
		}
	}
	if spec.Root != nil {
		readonly = spec.Root.Readonly
	}
	spec.Root = &specs.Root{Path: "rootfs", Readonly: readonly}
	if spec.Linux != nil {
		lin := *spec.Linux
		lin.Namespaces = nil
		for _, n := range spec.Linux.Namespaces {
			switch {
			case n.Path == "":
				lin.Namespaces = append(lin.Namespaces, n)
			case n.Type == specs.PIDNamespace && !s.cfg.HostPID:
				// The pod's shared PID namespace: in the guest, the runc
				// kind holds it with an init of its own (the path names the
				// sandbox, which has no process there). A hostPID pod's
				// containers run in the guest's own PID namespace.
				lin.Namespaces = append(lin.Namespaces, specs.LinuxNamespace{Type: specs.PIDNamespace, Path: "/proc/0/ns/pid"})
			}
			// Other pod namespaces (network, IPC, UTS) are the guest's.
		}
		// The host's cgroup path (often systemd "slice:prefix:name")
		// means nothing in the guest; runc picks its default.
		lin.CgroupsPath = ""
		spec.Linux = &lin
	}
	// Bind mounts name host paths: share them through dir/mounts/<i>. A
	// shared directory is one file system in the guest, host submounts
	// included: a non-recursive read-only bind gets its submounts as bind
	// mounts of their own, to stay writable as with runc. ("rro" is the
	// guest runc's: recursive in the guest covers them all.)
	mounts := binds.Submounts(spec.Mounts, nil)
	for i, m := range mounts {
		if !binds.IsBind(m) || !filepath.IsAbs(m.Source) {
			continue
		}
		fi, err := os.Stat(m.Source)
		if err != nil {
			return nil, fmt.Errorf("bind source %s of container %q: %w", m.Source, cfg.ID, err)
		}
		if err := root.MkdirAll("mounts", 0o711); err != nil {
			return nil, err
		}
		name := filepath.Join("mounts", fmt.Sprint(i))
		if fi.IsDir() {
			err = root.Mkdir(name, 0o755)
		} else {
			err = writeNew(root, name, nil, 0o644)
		}
		if err != nil {
			return nil, err
		}
		if err := mountAt(root, name, bindTo(m.Source)); err != nil {
			return nil, fmt.Errorf("share bind source %s of container %q: %w", m.Source, cfg.ID, err)
		}
		// Opened again through root, name is now the mount's root.
		if hasOption(m, "ro") {
			if err := mountAt(root, name, remountReadOnly); err != nil {
				return nil, fmt.Errorf("make bind source %s of container %q read-only: %w", m.Source, cfg.ID, err)
			}
		}
		mounts[i].Source = s.guestPath(filepath.Join(dir, name))
	}
	spec.Mounts = mounts
	return &spec, nil
}

// openRootNoFollow opens dir, refusing a symbolic link in its place.
func openRootNoFollow(dir string) (*os.Root, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	return os.OpenRoot(fmt.Sprintf("/proc/self/fd/%d", fd))
}

// writeNew creates name in root (it must not exist) with data.
func writeNew(root *os.Root, name string, data []byte, perm os.FileMode) error {
	f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	return errors.Join(err, f.Close())
}

// mountAt calls mnt with a path naming root's name as opened through root
// (/proc/self/fd/N), so that the mount lands there even if the guest
// replaced a path component meanwhile.
func mountAt(root *os.Root, name string, mnt func(target string) error) error {
	f, err := root.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return mnt(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
}

// bindTo returns a mountAt function that bind-mounts src (recursively).
func bindTo(src string) func(target string) error {
	return func(target string) error {
		return unix.Mount(src, target, "", unix.MS_BIND|unix.MS_REC, "")
	}
}

// remountReadOnly makes the bind mount at target read-only.
func remountReadOnly(target string) error {
	return unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, "")
}

func hasOption(m specs.Mount, opt string) bool {
	for _, o := range m.Options {
		if o == opt {
			return true
		}
	}
	return false
}

func (c *container) Init() backend.Process { return c.init }

// Exec adds a process in the guest.
func (c *container) Exec(ctx context.Context, cfg backend.ExecConfig) (backend.Process, error) {
	tc, err := c.s.taskClient()
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(cfg.Process)
	if err != nil {
		return nil, err
	}
	p, err := c.newProc(ctx, cfg.ID, cfg.Stdio)
	if err != nil {
		return nil, err
	}
	if _, err := tc.Exec(c.s.ns(ctx), &taskapi.ExecProcessRequest{
		ID: c.id, ExecID: cfg.ID, Terminal: cfg.Stdio.Terminal,
		Stdin: p.guestIn, Stdout: p.guestOut, Stderr: p.guestErr,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: data},
	}); err != nil {
		p.closeIO()
		c.s.forgetInGuest(tc, c.id, cfg.ID)
		return nil, fmt.Errorf("exec in container %q: %w", c.id, errgrpc.ToNative(err))
	}
	p.startInput()
	c.mu.Lock()
	c.execs[cfg.ID] = p
	c.mu.Unlock()
	return p, nil
}

// Delete unmounts and removes the container's shared directory and the
// host bind mount of its root.
func (c *container) Delete(ctx context.Context) error {
	c.closeIO()
	c.s.mu.Lock()
	delete(c.s.ctrs, c.id)
	c.s.mu.Unlock()
	if err := c.s.removeHostRoot(c.id); err != nil {
		return err
	}
	if err := unmountUnder(c.dir); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(c.s.cfg.Dir, offsetsDir, c.id)); err != nil {
		return err
	}
	return os.RemoveAll(c.dir)
}

// closeIO ends the stdio copies of the container's processes.
func (c *container) closeIO() {
	c.mu.Lock()
	ps := []*proc{c.init}
	for _, p := range c.execs {
		ps = append(ps, p)
	}
	c.mu.Unlock()
	for _, p := range ps {
		if p != nil {
			p.closeIO()
		}
	}
}
