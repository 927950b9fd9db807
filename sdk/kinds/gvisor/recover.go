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
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/hostroot"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/keptio"
)

// RecoverContainer re-attaches to a subcontainer after a sandboxer restart,
// by runsc's state: it can be signalled, waited for (`runsc wait`),
// exec'd into, paused, resumed and deleted. Its stdio copies (pipes or a
// terminal) resume from what the backend's FDStore kept; without a store
// they are gone.
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
	ctr := &container{s: s, id: cfg.ID, bundle: cfg.Bundle, rt: rt, root: hostroot.Of(cfg, rootfs), cgroupfs: cfg.Spec != nil && mountsCgroupfs(cfg.Spec), execs: map[string]*execProc{}}
	r := &recovered{container: ctr, pid: pid, rootfs: rootfs, done: make(chan struct{})}
	if s.b.cfg.FDStore != nil {
		ip := &initProc{c: ctr}
		if cfg.Stdio.Terminal {
			tty, err := keptio.ResumeTerminal(ip.keptSet())
			if err != nil {
				return nil, fmt.Errorf("resume terminal of %q: %w", cfg.ID, err)
			}
			if tty != nil {
				r.tty = tty
				s.b.addKept(tty)
			}
		} else {
			r.streams = keptio.NewStreams(ip.keptSet())
			if err := r.streams.Resume(); err != nil {
				_ = r.streams.Close()
				return nil, fmt.Errorf("resume stdio of %q: %w", cfg.ID, err)
			}
			s.b.addKept(r.streams)
		}
	}
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
		if r.streams != nil {
			r.streams.Drained(2 * time.Second)
		}
		if r.tty != nil {
			r.tty.Exited(2 * time.Second)
		}
		r.code, r.at = uint32(code), time.Now().UTC()
		if code != 0 {
			s.failed(cfg.ID) // an OOM kill is reported before the exit is seen
		}
		close(r.done)
	}()
	s.mu.Lock()
	s.recovered = append(s.recovered, cfg.ID)
	s.ctrEnds[cfg.ID] = r.end
	s.mu.Unlock()
	return r, nil
}

// recovered is a container re-attached after a restart: exec, pause,
// resume and stats as for one this process created, its init watched by
// `runsc wait`.
type recovered struct {
	*container
	pid     uint32
	rootfs  string
	stop    context.CancelFunc
	streams *keptio.Streams
	tty     *keptio.Terminal

	done chan struct{}
	code uint32
	at   time.Time
}

func (r *recovered) Init() backend.Process { return recoveredInit{r} }

func (r *recovered) Delete(ctx context.Context) error {
	r.stop()
	r.s.forget(r.id)
	return nil
}

// end tells whether the container runs and when its init failed (see
// containerEnd).
func (r *recovered) end() (bool, time.Time) {
	select {
	case <-r.done:
		if r.code != 0 {
			return false, r.at
		}
		return false, time.Time{}
	default:
		return true, time.Time{}
	}
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
	if r.tty == nil {
		return fmt.Errorf("container %q has no terminal (or it was lost in a restart): %w", r.id, errdefs.ErrFailedPrecondition)
	}
	return r.tty.Resize(w, h)
}

func (r recoveredInit) CloseStdin(ctx context.Context) error {
	switch {
	case r.tty != nil:
		return r.tty.CloseStdin()
	case r.streams != nil:
		return r.streams.CloseInput()
	}
	return nil
}

// Delete removes the runsc container and unmounts its rootfs.
func (r recoveredInit) Delete(ctx context.Context) error {
	err := r.s.runsc(ctx, "delete", "--force", r.id)
	if err != nil && notExist(err) {
		err = nil
	}
	if r.streams != nil {
		err = errors.Join(err, r.s.b.closeKept(r.streams))
	}
	if r.tty != nil {
		err = errors.Join(err, r.s.b.closeKept(r.tty))
	}
	if r.rootfs != "" {
		err = errors.Join(err, mount.UnmountRecursive(r.rootfs, 0))
	}
	return err
}

// Pid is the sandbox's pid, as the container reported before the restart.
func (r recoveredInit) Pid() uint32 { return r.pid }
