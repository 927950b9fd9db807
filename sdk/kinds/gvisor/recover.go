package gvisor

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/exitcode"
)

// RecoverContainer re-attaches to a subcontainer after a sandboxer restart,
// by runsc's state: it can be signalled, waited for (`runsc wait`) and
// deleted; its stdio copies are gone, and exec into it is not offered.
func (s *sandbox) RecoverContainer(ctx context.Context, cfg backend.ContainerConfig, pid uint32) (backend.Container, error) {
	rt := s.runtime(cfg.Bundle)
	// containerd may remove the bundle (and the log in it) while we are
	// away: log to runsc's stderr instead.
	rt.Log = ""
	sctx, cancel := context.WithTimeout(ctx, s.b.cfg.CommandTimeout)
	defer cancel()
	if _, err := rt.State(sctx, cfg.ID); err != nil {
		return nil, fmt.Errorf("runsc state of %q: %v: %w", cfg.ID, err, errdefs.ErrNotFound)
	}
	// Its gofer is still a child of this process when the same process
	// recovers it (tests); else the host's init reaps it.
	s.reapGofer(cfg.ID)
	rootfs := ""
	if len(cfg.Rootfs) > 0 {
		rootfs = filepath.Join(cfg.Bundle, "rootfs")
	}
	r := &recovered{s: s, id: cfg.ID, rt: rt, pid: pid, rootfs: rootfs, done: make(chan struct{})}
	ctx, r.stop = context.WithCancel(context.Background())
	go func() {
		select {
		case <-s.b.stop:
			r.stop()
		case <-ctx.Done():
		}
	}()
	go func() {
		code, err := runscWait(ctx, s.b.cfg.Binary, []string{"--root", rt.Root}, cfg.ID)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			code = exitcode.Unknown
		}
		r.code, r.at = uint32(code), time.Now().UTC()
		close(r.done)
	}()
	s.mu.Lock()
	s.recovered = append(s.recovered, cfg.ID)
	s.mu.Unlock()
	return r, nil
}

type recovered struct {
	s      *sandbox
	id     string
	rt     *gorunc.Runc
	pid    uint32
	rootfs string
	stop   context.CancelFunc

	done chan struct{}
	code uint32
	at   time.Time
}

func (r *recovered) Init() backend.Process { return recoveredInit{r} }

func (r *recovered) Exec(ctx context.Context, cfg backend.ExecConfig) (backend.Process, error) {
	return nil, fmt.Errorf("exec into a container recovered after a restart: %w", errdefs.ErrNotImplemented)
}

func (r *recovered) Delete(ctx context.Context) error {
	r.stop()
	return nil
}

// recoveredInit is the init process of a recovered container.
type recoveredInit struct{ *recovered }

func (r recoveredInit) Start(ctx context.Context) (uint32, error) {
	return 0, fmt.Errorf("container %q was already started: %w", r.id, errdefs.ErrFailedPrecondition)
}

func (r recoveredInit) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	ctx, cancel := context.WithTimeout(ctx, r.s.b.cfg.CommandTimeout)
	defer cancel()
	if err := r.rt.Kill(ctx, r.id, int(sig), &gorunc.KillOpts{All: all}); err != nil {
		return fmt.Errorf("kill %q: %v: %w", r.id, err, errdefs.ErrNotFound)
	}
	return nil
}

func (r recoveredInit) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-r.done:
		return backend.ExitStatus{Code: r.code, ExitedAt: r.at}, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

func (r recoveredInit) ResizePTY(ctx context.Context, w, h uint32) error {
	return fmt.Errorf("terminal of a recovered container: %w", errdefs.ErrNotImplemented)
}

func (r recoveredInit) CloseStdin(ctx context.Context) error { return nil }

// Delete removes the runsc container and unmounts its rootfs.
func (r recoveredInit) Delete(ctx context.Context) error {
	err := r.s.runsc(ctx, "delete", "--force", r.id)
	if err != nil && notExist(err) {
		err = nil
	}
	if r.rootfs != "" {
		err = errors.Join(err, mount.UnmountRecursive(r.rootfs, 0))
	}
	return err
}

// Pid is the sandbox's pid, as the container reported before the restart.
func (r recoveredInit) Pid() uint32 { return r.pid }
