package runc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/containerd/console"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/stdio"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/shimrecord"
)

type container struct {
	s      *sandbox
	id     string
	bundle string
	init   *process.Init
	oom    *oomWatch
	cg     any // cgroup1.Cgroup or *cgroupsv2.Manager; nil if unknown

	mu    sync.Mutex
	execs map[string]process.Process
}

// CreateContainer mounts the rootfs, points the spec at the pod's
// namespaces and runs `runc create`.
func (s *sandbox) CreateContainer(ctx context.Context, cfg backend.ContainerConfig) (_ backend.Container, retErr error) {
	if cfg.Spec == nil {
		return nil, fmt.Errorf("container %q has no OCI spec: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	spec := *cfg.Spec
	if err := s.joinPod(&spec); err != nil {
		return nil, err
	}
	data, err := json.Marshal(&spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.Bundle, "config.json"), data, 0o600); err != nil {
		return nil, fmt.Errorf("write OCI spec: %w", err)
	}
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
	cfg.Stdio = nullStdio(cfg.Stdio)
	rt := s.b.runtime(s.cfg.Namespace, cfg.Bundle)
	// Tell containerd-shim-magnetar-v2 how to remove this container if
	// containerd gives up on it while the sandboxer is away.
	if err := shimrecord.Write(cfg.Bundle, shimrecord.Runtime{Kind: Kind, ID: cfg.ID, Binary: s.b.cfg.Binary, Root: rt.Root}); err != nil {
		return nil, err
	}
	init := process.New(cfg.ID, rt, stdio.Stdio{
		Stdin: cfg.Stdio.Stdin, Stdout: cfg.Stdio.Stdout, Stderr: cfg.Stdio.Stderr, Terminal: cfg.Stdio.Terminal,
	})
	init.Bundle = cfg.Bundle
	init.Platform = s.b.platform
	init.Rootfs = rootfs
	init.WorkDir = filepath.Join(cfg.Bundle, "work")
	if err := init.Create(ctx, &process.CreateConfig{
		ID: cfg.ID, Bundle: cfg.Bundle, Runtime: s.b.cfg.Binary, Terminal: cfg.Stdio.Terminal,
		Stdin: cfg.Stdio.Stdin, Stdout: cfg.Stdio.Stdout, Stderr: cfg.Stdio.Stderr,
	}); err != nil {
		return nil, fmt.Errorf("create container %q: %w", cfg.ID, err)
	}
	s.b.watch(init.Pid(), init)
	c := &container{s: s, id: cfg.ID, bundle: cfg.Bundle, init: init, execs: map[string]process.Process{}}
	c.cg, _ = loadCgroup(init.Pid())
	c.oom = s.b.watchOOM(init.Pid(), func() {
		if s.cfg.Events != nil {
			s.cfg.Events.OOM(s.cfg.ID, cfg.ID)
		}
	})
	s.mu.Lock()
	s.ctrs[cfg.ID] = c
	s.mu.Unlock()
	return c, nil
}

func (c *container) Init() backend.Process { return &proc{c: c, p: c.init, init: true} }

func (c *container) Exec(ctx context.Context, cfg backend.ExecConfig) (backend.Process, error) {
	data, err := json.Marshal(cfg.Process)
	if err != nil {
		return nil, err
	}
	cfg.Stdio = nullStdio(cfg.Stdio)
	p, err := c.init.Exec(ctx, c.bundle, &process.ExecConfig{
		ID: cfg.ID, Terminal: cfg.Stdio.Terminal, Stdin: cfg.Stdio.Stdin, Stdout: cfg.Stdio.Stdout, Stderr: cfg.Stdio.Stderr,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: data},
	})
	if err != nil {
		return nil, fmt.Errorf("exec in container %q: %w", c.id, err)
	}
	c.mu.Lock()
	c.execs[cfg.ID] = p
	c.mu.Unlock()
	return &proc{c: c, p: p}, nil
}

func (c *container) Delete(ctx context.Context) error {
	c.oom.close()
	c.s.mu.Lock()
	delete(c.s.ctrs, c.id)
	c.s.mu.Unlock()
	return nil
}

func (c *container) killAll(ctx context.Context) error {
	err := c.init.Kill(ctx, uint32(syscall.SIGKILL), true)
	if err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
		return err
	}
	return nil
}

// Update changes the container's cgroup limits.
func (c *container) Update(ctx context.Context, res *specs.LinuxResources) error {
	return c.init.Runtime().Update(ctx, c.id, res)
}

// Pids lists the container's processes.
func (c *container) Pids(ctx context.Context) ([]backend.ProcessInfo, error) {
	pids, err := c.init.Runtime().Ps(ctx, c.id)
	if err != nil {
		return nil, fmt.Errorf("list processes of %q: %w", c.id, err)
	}
	out := make([]backend.ProcessInfo, 0, len(pids))
	for _, p := range pids {
		out = append(out, backend.ProcessInfo{Pid: uint32(p)})
	}
	return out, nil
}

// Pause freezes the container.
func (c *container) Pause(ctx context.Context) error { return c.init.Pause(ctx) }

// Resume thaws the container.
func (c *container) Resume(ctx context.Context) error { return c.init.Resume(ctx) }

// Stats reads the container's cgroup.
func (c *container) Stats(ctx context.Context) (*backend.Stats, error) {
	if c.cg == nil {
		return nil, fmt.Errorf("cgroup of container %q is unknown: %w", c.id, errdefs.ErrNotFound)
	}
	return cgroupStats(c.cg)
}

// proc adapts containerd's runc process to backend.Process.
type proc struct {
	c    *container
	p    process.Process
	init bool
}

func (p *proc) Start(ctx context.Context) (uint32, error) {
	if p.init {
		if err := p.p.Start(ctx); err != nil {
			return 0, err
		}
		return uint32(p.p.Pid()), nil
	}
	if err := p.p.Start(ctx); err != nil {
		return 0, err
	}
	// An exec'd process that already exited is a zombie until watched.
	pid := p.p.Pid()
	p.c.s.b.watch(pid, p.p)
	return uint32(pid), nil
}

// Pid is the process's host pid (the init's exists after create).
func (p *proc) Pid() uint32 { return uint32(p.p.Pid()) }

func (p *proc) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	return p.p.Kill(ctx, uint32(sig), all)
}

func (p *proc) Wait(ctx context.Context) (backend.ExitStatus, error) {
	if err := p.p.Wait(ctx); err != nil {
		return backend.ExitStatus{}, err
	}
	return exitStatus(p.p), nil
}

func (p *proc) ResizePTY(ctx context.Context, width, height uint32) error {
	return p.p.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}

func (p *proc) CloseStdin(ctx context.Context) error {
	if s := p.p.Stdin(); s != nil {
		return s.Close()
	}
	return nil
}

func (p *proc) Delete(ctx context.Context) error {
	if p.init {
		p.c.oom.flush() // before runc removes the cgroup
	}
	err := p.p.Delete(ctx)
	if !p.init {
		p.c.mu.Lock()
		delete(p.c.execs, p.p.ID())
		p.c.mu.Unlock()
	}
	return err
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
