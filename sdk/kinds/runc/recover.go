package runc

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/exitcode"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/hostroot"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/keptio"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/pidfd"
)

// RecoverContainer re-attaches to a container after a sandboxer restart:
// it is a container like one this process created, in the state runc
// reports, so that it can be started (if it was only created), signalled,
// paused, updated, exec'd into and deleted. Its init was reparented away
// from this process, so its exit is observed through a pidfd; its exit
// code comes from [Config.OrphanExit] (the supervisor that reaped it),
// else it is unknown (reported as 255). Its stdio FIFOs never depended on
// this process (see FIFOHolder); the FIFO ends held for it are held again
// (see recoverIO), and a terminal kept in [Config.FDStore] is taken back
// and its copies resumed. Without a store a terminal's copy is gone with
// the process that made it.
func (s *sandbox) RecoverContainer(ctx context.Context, cfg backend.ContainerConfig, pid uint32) (backend.Container, error) {
	rt := s.b.runtime(s.cfg.Namespace, cfg.Bundle)
	// containerd may remove the bundle (and with it runc's log file) while
	// we are away: log to runc's stderr instead.
	rt.Log, rt.LogFormat = "", ""
	st, err := rt.State(ctx, cfg.ID)
	if err != nil {
		return nil, fmt.Errorf("runc state of %q: %v: %w", cfg.ID, err, errdefs.ErrNotFound)
	}
	rootfs := ""
	if len(cfg.Rootfs) > 0 {
		rootfs = filepath.Join(cfg.Bundle, "rootfs")
	}
	c := &container{s: s, id: cfg.ID, bundle: cfg.Bundle, rootfs: rootfs, root: hostroot.Of(cfg, rootfs), rt: rt, execs: map[string]*proc{}}
	p := newProc(c, cfg.ID, true, nullStdio(cfg.Stdio))
	p.pid = int(pid)
	switch st.Status {
	case "created":
		p.state = stateCreated
	case "paused":
		p.state = statePaused
	default: // running, or stopped: the watch reports the exit
		p.state = stateRunning
	}
	p.io = recoverIO(s.b.cfg.FIFOHolder, p.stdio)
	if keptTerminal(p.stdio) && s.b.cfg.FDStore != nil {
		tty, err := keptio.ResumeTerminal(keptio.NewSet(s.b.cfg.FDStore, p.ttyName()))
		if err != nil {
			_ = p.io.Close()
			return nil, fmt.Errorf("resume terminal of %q: %w", cfg.ID, err)
		}
		if tty != nil {
			s.b.addTTY(tty)
			p.tty = tty
		}
	}
	c.init = p
	c.cg, _ = loadCgroup(p.pid)
	c.oom = s.b.watchOOM(p.pid, func() {
		if s.cfg.Events != nil {
			s.cfg.Events.OOM(s.cfg.ID, cfg.ID)
		}
	})
	s.b.watchRecovered(p)
	s.mu.Lock()
	s.ctrs[cfg.ID] = c
	s.mu.Unlock()
	return c, nil
}

// watchRecovered waits for the exit of a recovered init through a pidfd:
// still this process's child (the same process recovered it), its status
// is known; else its exit code comes from lostExit.
func (b *Backend) watchRecovered(p *proc) {
	fd, err := unix.PidfdOpen(p.pid, 0)
	if err != nil {
		p.SetExited(int(b.lostExit(p.pid)))
		return
	}
	b.wg.Go(func() {
		ex, err := pidfd.Wait(b.life, p.pid, fd)
		if err != nil {
			return // closing: the container keeps running
		}
		if ex.Child {
			p.SetExited(int(exitcode.Of(ex.Status)))
			return
		}
		p.SetExited(int(b.lostExit(p.pid)))
	})
}

// lostExit is the exit code of a recovered init that this process cannot
// reap.
func (b *Backend) lostExit(pid int) uint32 {
	if b.cfg.OrphanExit != nil {
		if code, _, ok := b.cfg.OrphanExit(pid); ok {
			return code
		}
	}
	return uint32(exitcode.Unknown)
}
