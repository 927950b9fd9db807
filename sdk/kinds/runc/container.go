package runc

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

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgoom"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/hostroot"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/podfiles"
	"github.com/magnetar-io/magnetar/sdk/kinds/shimrecord"
)

type container struct {
	s      *sandbox
	id     string
	bundle string
	rootfs string        // where the rootfs is mounted ("" if not by us)
	root   hostroot.Root // the container's root file system on the host
	rt     *gorunc.Runc
	init   *proc
	oom    *cgoom.Watch
	cg     any // cgroup1.Cgroup or *cgroupsv2.Manager; nil if unknown

	mu    sync.Mutex
	execs map[string]*proc
}

// CreateContainer mounts the rootfs, points the spec at the pod's
// namespaces and runs `runc create`.
func (s *sandbox) CreateContainer(ctx context.Context, cfg backend.ContainerConfig) (_ backend.Container, retErr error) {
	if cfg.Spec == nil {
		return nil, fmt.Errorf("container %q has no OCI spec: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	t0 := time.Now()
	spec := *cfg.Spec
	if err := s.joinPod(&spec); err != nil {
		return nil, err
	}
	spec.Mounts = slices.Clone(spec.Mounts)
	podfiles.AddPodFiles(&spec, s.cfg.Dir)
	if s.cfg.HostIPC {
		podfiles.AddShm(&spec, "/dev/shm")
	} else if shm := filepath.Join(s.cfg.Dir, podfiles.ShmName); podfiles.IsMountPoint(shm) {
		podfiles.AddShm(&spec, shm)
	}
	data, err := json.Marshal(&spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.Bundle, "config.json"), data, 0o600); err != nil {
		return nil, fmt.Errorf("write OCI spec: %w", err)
	}
	s.b.span(PhaseSpec, s.cfg.ID, cfg.ID, t0)
	rootfs := ""
	if len(cfg.Rootfs) > 0 {
		t0 = time.Now()
		rootfs = filepath.Join(cfg.Bundle, "rootfs")
		if err := os.Mkdir(rootfs, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, err
		}
		if err := mount.All(cfg.Rootfs, rootfs); err != nil {
			return nil, fmt.Errorf("mount rootfs of container %q: %w", cfg.ID, err)
		}
		s.b.span(PhaseRootfs, s.cfg.ID, cfg.ID, t0)
		defer func() {
			if retErr != nil {
				_ = mount.UnmountRecursive(rootfs, 0)
			}
		}()
	}
	cfg.Stdio = nullStdio(cfg.Stdio)
	rt := s.b.runtime(s.cfg.Namespace, cfg.Bundle)
	// Tell containerd-shim-magnetar-v2 how to remove this container if
	// containerd gives up on it while the sandboxer is away.
	t0 = time.Now()
	if err := shimrecord.Write(cfg.Bundle, shimrecord.Runtime{Kind: Kind, ID: cfg.ID, Binary: s.b.cfg.Binary, Root: rt.Root}); err != nil {
		return nil, err
	}
	s.b.span(PhaseRecord, s.cfg.ID, cfg.ID, t0)
	c := &container{s: s, id: cfg.ID, bundle: cfg.Bundle, rootfs: rootfs, root: hostroot.Of(cfg, rootfs), rt: rt, execs: map[string]*proc{}}
	c.init = newProc(c, cfg.ID, true, cfg.Stdio)
	if err := c.init.create(ctx); err != nil {
		return nil, fmt.Errorf("create container %q: %w", cfg.ID, err)
	}
	init := c.init
	t0 = time.Now()
	s.b.watch(init.pid, init)
	c.cg, _ = loadCgroup(init.pid)
	c.oom = s.b.watchOOM(init.pid, func() {
		if s.cfg.Events != nil {
			s.cfg.Events.OOM(s.cfg.ID, cfg.ID)
		}
	})
	s.b.span(PhaseCgroup, s.cfg.ID, cfg.ID, t0)
	s.mu.Lock()
	s.ctrs[cfg.ID] = c
	s.mu.Unlock()
	return c, nil
}

func (c *container) Init() backend.Process { return c.init }

// HostRoot returns the host path of the container's root file system and
// whether the container's root is read-only.
func (c *container) HostRoot() (string, bool) { return c.root.Dir, c.root.ReadOnly }

func (c *container) Exec(ctx context.Context, cfg backend.ExecConfig) (backend.Process, error) {
	if cfg.Process == nil {
		return nil, fmt.Errorf("exec %q in container %q has no process spec: %w", cfg.ID, c.id, errdefs.ErrInvalidArgument)
	}
	if err := c.init.canExec(); err != nil {
		return nil, fmt.Errorf("exec in container %q: %w", c.id, err)
	}
	p := newProc(c, cfg.ID, false, nullStdio(cfg.Stdio))
	p.spec = *cfg.Process
	p.spec.Terminal = cfg.Stdio.Terminal
	c.mu.Lock()
	c.execs[cfg.ID] = p
	c.mu.Unlock()
	return p, nil
}

func (c *container) Delete(ctx context.Context) error {
	c.oom.Close()
	c.s.mu.Lock()
	delete(c.s.ctrs, c.id)
	c.s.mu.Unlock()
	return nil
}

func (c *container) killAll(ctx context.Context) error {
	err := c.init.Kill(ctx, syscall.SIGKILL, true)
	if err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
		return err
	}
	return nil
}

// Update changes the container's cgroup limits.
func (c *container) Update(ctx context.Context, res *specs.LinuxResources) error {
	return c.init.update(ctx, res)
}

// Pids lists the container's processes.
func (c *container) Pids(ctx context.Context) ([]backend.ProcessInfo, error) {
	return pidsOf(ctx, c.rt, c.id)
}

// pidsOf lists the processes of runc container id.
func pidsOf(ctx context.Context, rt *gorunc.Runc, id string) ([]backend.ProcessInfo, error) {
	pids, err := rt.Ps(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("list processes of %q: %w", id, err)
	}
	out := make([]backend.ProcessInfo, 0, len(pids))
	for _, p := range pids {
		out = append(out, backend.ProcessInfo{Pid: uint32(p)})
	}
	return out, nil
}

// Pause freezes the container.
func (c *container) Pause(ctx context.Context) error { return c.init.pause(ctx) }

// Resume thaws the container.
func (c *container) Resume(ctx context.Context) error { return c.init.resume(ctx) }

// Stats reads the container's cgroup.
func (c *container) Stats(ctx context.Context) (*backend.Stats, error) {
	if c.cg == nil {
		return nil, fmt.Errorf("cgroup of container %q is unknown: %w", c.id, errdefs.ErrNotFound)
	}
	return cgroupStats(c.cg)
}

// nullStdio sends a missing stdout or stderr to /dev/null, as containerd's
// process I/O does: it handles all three streams or none.
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
