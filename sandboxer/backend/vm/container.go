package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

type container struct {
	s    *sandbox
	id   string
	dir  string // <shared>/<id>
	init *proc

	mu    sync.Mutex
	execs map[string]*proc
}

// CreateContainer mounts the rootfs and bind sources into the shared
// directory, writes the rewritten spec, and creates the task in the guest.
func (s *sandbox) CreateContainer(ctx context.Context, cfg backend.ContainerConfig) (_ backend.Container, retErr error) {
	if cfg.Spec == nil {
		return nil, fmt.Errorf("container %q has no OCI spec: %w", cfg.ID, errdefs.ErrInvalidArgument)
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
			if unmountUnder(dir) == nil {
				_ = os.RemoveAll(dir)
			}
		}
	}()
	spec, err := s.prepare(cfg, dir)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		return nil, fmt.Errorf("write OCI spec: %w", err)
	}
	c := &container{s: s, id: cfg.ID, dir: dir, execs: map[string]*proc{}}
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

// prepare mounts the rootfs at dir/rootfs and the sources of bind mounts
// under dir/mounts, and returns the spec rewritten for the guest.
func (s *sandbox) prepare(cfg backend.ContainerConfig, dir string) (*specs.Spec, error) {
	spec := *cfg.Spec
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.Mkdir(rootfs, 0o711); err != nil {
		return nil, err
	}
	readonly := false
	if len(cfg.Rootfs) > 0 {
		if err := mount.All(cfg.Rootfs, rootfs); err != nil {
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
		if err := unix.Mount(src, rootfs, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
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
			if n.Path == "" {
				lin.Namespaces = append(lin.Namespaces, n)
			}
		}
		// The host's cgroup path (often systemd "slice:prefix:name")
		// means nothing in the guest; runc picks its default.
		lin.CgroupsPath = ""
		spec.Linux = &lin
	}
	// Bind mounts name host paths: share them through dir/mounts/<i>.
	mounts := make([]specs.Mount, len(spec.Mounts))
	copy(mounts, spec.Mounts)
	for i, m := range mounts {
		if !isBind(m) || !filepath.IsAbs(m.Source) {
			continue
		}
		fi, err := os.Stat(m.Source)
		if err != nil {
			return nil, fmt.Errorf("bind source %s of container %q: %w", m.Source, cfg.ID, err)
		}
		target := filepath.Join(dir, "mounts", fmt.Sprint(i))
		if err := os.MkdirAll(filepath.Dir(target), 0o711); err != nil {
			return nil, err
		}
		if fi.IsDir() {
			err = os.Mkdir(target, 0o755)
		} else {
			err = os.WriteFile(target, nil, 0o644)
		}
		if err != nil {
			return nil, err
		}
		if err := unix.Mount(m.Source, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return nil, fmt.Errorf("share bind source %s of container %q: %w", m.Source, cfg.ID, err)
		}
		mounts[i].Source = s.guestPath(target)
	}
	spec.Mounts = mounts
	return &spec, nil
}

func isBind(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	for _, o := range m.Options {
		if o == "bind" || o == "rbind" {
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
		return nil, fmt.Errorf("exec in container %q: %w", c.id, errgrpc.ToNative(err))
	}
	p.startInput()
	c.mu.Lock()
	c.execs[cfg.ID] = p
	c.mu.Unlock()
	return p, nil
}

// Delete unmounts and removes the container's shared directory.
func (c *container) Delete(ctx context.Context) error {
	c.closeIO()
	c.s.mu.Lock()
	delete(c.s.ctrs, c.id)
	c.s.mu.Unlock()
	if err := unmountUnder(c.dir); err != nil {
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
