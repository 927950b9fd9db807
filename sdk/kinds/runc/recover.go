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
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/exitcode"
)

// RecoverContainer re-attaches to a container after a sandboxer restart.
// Its init was reparented away from this process, so its exit is observed
// through a pidfd; its exit code comes from [Config.OrphanExit] (the
// supervisor that reaped it), else it is unknown (reported as 255). Its
// stdio copies are gone. It can still be signalled, waited for and
// deleted.
func (s *sandbox) RecoverContainer(ctx context.Context, cfg backend.ContainerConfig, pid uint32) (backend.Container, error) {
	rt := s.b.runtime(s.cfg.Namespace, cfg.Bundle)
	// containerd may remove the bundle (and with it runc's log file) while
	// we are away: log to runc's stderr instead.
	rt.Log, rt.LogFormat = "", ""
	if _, err := rt.State(ctx, cfg.ID); err != nil {
		return nil, fmt.Errorf("runc state of %q: %v: %w", cfg.ID, err, errdefs.ErrNotFound)
	}
	rootfs := ""
	if len(cfg.Rootfs) > 0 {
		rootfs = filepath.Join(cfg.Bundle, "rootfs")
	}
	return &recovered{id: cfg.ID, rt: rt, pid: int(pid), rootfs: rootfs, orphanExit: s.b.cfg.OrphanExit}, nil
}

type recovered struct {
	id         string
	rt         *gorunc.Runc
	pid        int
	rootfs     string
	orphanExit func(pid int) (uint32, time.Time, bool)
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

func (r recoveredInit) Delete(ctx context.Context) error { return r.deleteRuntime(ctx) }

func (r *recovered) Start(ctx context.Context) (uint32, error) {
	return 0, fmt.Errorf("container %q was already started: %w", r.id, errdefs.ErrFailedPrecondition)
}

func (r *recovered) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	if err := r.rt.Kill(ctx, r.id, int(sig), &gorunc.KillOpts{All: all}); err != nil {
		return fmt.Errorf("kill %q: %v: %w", r.id, err, errdefs.ErrNotFound)
	}
	return nil
}

// Wait polls the init's pidfd until it exits.
func (r *recovered) Wait(ctx context.Context) (backend.ExitStatus, error) {
	fd, err := unix.PidfdOpen(r.pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return r.lostExit(), nil
	}
	if err != nil {
		return backend.ExitStatus{}, err
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 500)
		if n > 0 {
			// Still our child (the same process recovered it)? Then reap
			// it and know its status; else init reaps it.
			var ws unix.WaitStatus
			if wpid, err := unix.Wait4(r.pid, &ws, unix.WNOHANG, nil); err == nil && wpid == r.pid {
				return backend.ExitStatus{Code: exitcode.Of(ws), ExitedAt: time.Now().UTC()}, nil
			}
			return r.lostExit(), nil
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return backend.ExitStatus{}, err
		}
		if ctx.Err() != nil {
			return backend.ExitStatus{}, ctx.Err()
		}
	}
}

func (r *recovered) ResizePTY(ctx context.Context, w, h uint32) error {
	return fmt.Errorf("terminal of a recovered container: %w", errdefs.ErrNotImplemented)
}

func (r *recovered) CloseStdin(ctx context.Context) error { return nil }

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
