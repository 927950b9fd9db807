package runc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/exitcode"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/pidfd"
)

// RecoverContainer re-attaches to a container after a sandboxer restart.
// Its init was reparented away from this process, so its exit is observed
// through a pidfd; its exit code comes from [Config.OrphanExit] (the
// supervisor that reaped it), else it is unknown (reported as 255). Its
// stdio FIFOs never depended on this process (see FIFOHolder): the read
// ends of its output FIFOs that containerd still reads are held again
// until it is deleted; its stdin is not (CloseStdin may have come before
// the restart). A terminal's copy
// is gone with the process that made it. The container can be signalled,
// waited for and deleted.
func (s *sandbox) RecoverContainer(ctx context.Context, cfg backend.ContainerConfig, pid uint32) (backend.Container, error) {
	rt := s.b.runtime(s.cfg.Namespace, cfg.Bundle)
	// containerd may remove the bundle (and with it runc's log file) while
	// we are away: log to runc's stderr instead.
	rt.Log, rt.LogFormat = "", ""
	// runc keeps a container's state in <root>/<id>/state.json: reading
	// that it exists costs nothing, where `runc state` per container would
	// make a restart with many pods slow (its pid is watched below).
	if _, err := os.Stat(filepath.Join(rt.Root, cfg.ID, "state.json")); err != nil {
		return nil, fmt.Errorf("runc state of %q: %v: %w", cfg.ID, err, errdefs.ErrNotFound)
	}
	rootfs := ""
	if len(cfg.Rootfs) > 0 {
		rootfs = filepath.Join(cfg.Bundle, "rootfs")
	}
	release := holdOutputs(s.b.cfg.FIFOHolder, nullStdio(cfg.Stdio))
	cg, _ := loadCgroup(int(pid)) // nil once it exited: Stats says NotFound
	return &recovered{id: cfg.ID, rt: rt, pid: int(pid), rootfs: rootfs, cg: cg, orphanExit: s.b.cfg.OrphanExit, releaseIO: release}, nil
}

type recovered struct {
	id         string
	rt         *gorunc.Runc
	pid        int
	rootfs     string
	cg         any // see loadCgroup
	orphanExit func(pid int) (uint32, time.Time, bool)
	// releaseIO releases the held read ends of the output FIFOs.
	releaseIO func() error
}

// lostExit is the exit of a recovered init that this process cannot reap.
func (r *recovered) lostExit() backend.ExitStatus {
	if r.orphanExit != nil {
		if code, at, ok := r.orphanExit(r.pid); ok {
			return backend.ExitStatus{Code: code, ExitedAt: at}
		}
	}
	return backend.ExitStatus{Code: uint32(exitcode.Unknown), ExitedAt: time.Now().UTC()}
}

func (r *recovered) Init() backend.Process { return recoveredInit{r} }

func (r *recovered) Exec(ctx context.Context, cfg backend.ExecConfig) (backend.Process, error) {
	return nil, fmt.Errorf("exec into a container recovered after a restart: %w", errdefs.ErrNotImplemented)
}

func (r *recovered) Delete(ctx context.Context) error { return nil }

// recoveredInit is the init process of a recovered container.
type recoveredInit struct{ *recovered }

func (r recoveredInit) Delete(ctx context.Context) error {
	err := r.deleteRuntime(ctx)
	_ = r.releaseIO()
	return err
}

func (r *recovered) Start(ctx context.Context) (uint32, error) {
	return 0, fmt.Errorf("container %q was already started: %w", r.id, errdefs.ErrFailedPrecondition)
}

func (r *recovered) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	if err := r.rt.Kill(ctx, r.id, int(sig), &gorunc.KillOpts{All: all}); err != nil {
		return fmt.Errorf("kill %q: %v: %w", r.id, err, errdefs.ErrNotFound)
	}
	return nil
}

// Wait waits for the init to exit (see package pidfd). Still our child
// (the same process recovered it)? Then its status is known; else init
// reaps it.
func (r *recovered) Wait(ctx context.Context) (backend.ExitStatus, error) {
	fd, err := unix.PidfdOpen(r.pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return r.lostExit(), nil
	}
	if err != nil {
		return backend.ExitStatus{}, err
	}
	ex, err := pidfd.Wait(ctx, r.pid, fd)
	if err != nil {
		return backend.ExitStatus{}, err
	}
	if ex.Child {
		return backend.ExitStatus{Code: exitcode.Of(ex.Status), ExitedAt: time.Now().UTC()}, nil
	}
	return r.lostExit(), nil
}

func (r *recovered) ResizePTY(ctx context.Context, w, h uint32) error {
	return fmt.Errorf("terminal of a recovered container: %w", errdefs.ErrNotImplemented)
}

func (r *recovered) CloseStdin(ctx context.Context) error { return nil }

// Stats reads the container's cgroup, as for a container this process
// created.
func (r *recovered) Stats(ctx context.Context) (*backend.Stats, error) {
	if r.cg == nil {
		return nil, fmt.Errorf("cgroup of container %q is unknown: %w", r.id, errdefs.ErrNotFound)
	}
	return cgroupStats(r.cg)
}

// Pids lists the container's processes.
func (r *recovered) Pids(ctx context.Context) ([]backend.ProcessInfo, error) {
	return pidsOf(ctx, r.rt, r.id)
}

// Update changes the container's cgroup limits.
func (r *recovered) Update(ctx context.Context, res *specs.LinuxResources) error {
	if err := r.rt.Update(ctx, r.id, res); err != nil {
		return fmt.Errorf("update %q: %w", r.id, err)
	}
	return nil
}

// Pause freezes the container.
func (r *recovered) Pause(ctx context.Context) error {
	if err := r.rt.Pause(ctx, r.id); err != nil {
		return fmt.Errorf("pause %q: %v: %w", r.id, err, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// Resume thaws the container.
func (r *recovered) Resume(ctx context.Context) error {
	if err := r.rt.Resume(ctx, r.id); err != nil {
		return fmt.Errorf("resume %q: %v: %w", r.id, err, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// deleteRuntime removes the runc container and unmounts its rootfs.
func (r *recovered) deleteRuntime(ctx context.Context) error {
	var err error
	if _, serr := r.rt.State(ctx, r.id); serr == nil { // else already removed
		err = r.rt.Delete(ctx, r.id, &gorunc.DeleteOpts{Force: true})
	}
	if r.rootfs != "" {
		err = errors.Join(err, mount.UnmountRecursive(r.rootfs, 0))
	}
	return err
}
