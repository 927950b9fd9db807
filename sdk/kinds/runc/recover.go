package runc

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/exitcode"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/hostroot"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/keptio"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/pidfd"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/procstat"
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
	status, ok := quickStatus(rt.Root, cfg.ID)
	if !ok {
		st, err := rt.State(ctx, cfg.ID)
		if err != nil {
			return nil, fmt.Errorf("runc state of %q: %v: %w", cfg.ID, err, errdefs.ErrNotFound)
		}
		status = st.Status
	}
	rootfs := ""
	if len(cfg.Rootfs) > 0 {
		rootfs = filepath.Join(cfg.Bundle, "rootfs")
	}
	c := &container{s: s, id: cfg.ID, bundle: cfg.Bundle, rootfs: rootfs, root: hostroot.Of(cfg, rootfs), rt: rt, execs: map[string]*proc{}}
	p := newProc(c, cfg.ID, true, nullStdio(cfg.Stdio))
	p.pid = int(pid)
	switch status {
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

// execState is the recovery state of an exec'd process (see
// backend.RecoveryStater): its start time, which tells it from a later
// process with the same pid.
type execState struct {
	StartTime uint64 `json:"startTime"`
}

// RecoveryState returns the exec'd process's start time.
func (p *proc) RecoveryState() ([]byte, error) {
	p.mu.Lock()
	st := execState{StartTime: p.startTime}
	p.mu.Unlock()
	return json.Marshal(st)
}

// RecoverExec re-attaches to an exec'd process after a sandboxer restart,
// as RecoverContainer does to a container: its FIFO ends are held again
// (or taken back from the FDStore) and a terminal kept in the store is
// taken back and its copies resumed. A started process is the recorded one
// only if its pid still names a process started at the recorded start
// time; then it is watched through a pidfd (and signalled through it).
// Otherwise it exited while no sandboxer watched it: its exit code comes
// from [Config.OrphanExit], else it is unknown (255). One whose start was
// cut short by the restart but that runc did start (its pid file names a
// process that started before the file was written) is recovered as
// started, so that it can be killed and waited for (containerd, told the
// start failed, kills and deletes it); one never started can be started.
func (c *container) RecoverExec(ctx context.Context, cfg backend.ExecConfig, rec backend.ExecRecord) (backend.Process, error) {
	if cfg.Process == nil {
		return nil, fmt.Errorf("exec %q in container %q has no process spec: %w", cfg.ID, c.id, errdefs.ErrInvalidArgument)
	}
	var st execState
	if len(rec.State) > 0 {
		if err := json.Unmarshal(rec.State, &st); err != nil {
			return nil, fmt.Errorf("recovery state of exec %q: %v: %w", cfg.ID, err, errdefs.ErrInvalidArgument)
		}
	}
	p := newProc(c, cfg.ID, false, nullStdio(cfg.Stdio))
	p.spec = *cfg.Process
	p.spec.Terminal = cfg.Stdio.Terminal
	if rec.Pid == 0 && !rec.Exited {
		if pid, start, ok := startedByRunc(p.pidFile()); ok {
			rec.Pid, st.StartTime = uint32(pid), start
		}
	}
	if rec.Pid != 0 {
		b := c.s.b
		p.pid, p.startTime, p.state = int(rec.Pid), st.StartTime, stateRunning
		p.io = recoverIO(b.cfg.FIFOHolder, p.stdio)
		if keptTerminal(p.stdio) && b.cfg.FDStore != nil {
			tty, err := keptio.ResumeTerminal(keptio.NewSet(b.cfg.FDStore, p.ttyName()))
			if err != nil {
				_ = p.io.Close()
				return nil, fmt.Errorf("resume terminal of exec %q: %w", cfg.ID, err)
			}
			if tty != nil {
				b.addTTY(tty)
				p.tty = tty
			}
		}
		if rec.Exited {
			p.SetExited(int(exitcode.Unknown)) // the engine has its status
		} else {
			b.watchRecoveredExec(p)
		}
	}
	c.mu.Lock()
	c.execs[cfg.ID] = p
	c.mu.Unlock()
	return p, nil
}

// startedByRunc reads the pid file runc wrote for an exec'd process, and
// returns the pid and start time of the process it names if that process
// started at most a few seconds before the file was written (runc writes
// it once the process exists), so that a pid reused later is not taken.
func startedByRunc(pidFile string) (int, uint64, bool) {
	pid, err := gorunc.ReadPidFile(pidFile)
	if err != nil || pid <= 0 {
		return 0, 0, false
	}
	fi, err := os.Stat(pidFile)
	if err != nil {
		return 0, 0, false
	}
	start, err := procstat.StartTime(pid)
	if err != nil {
		return 0, 0, false
	}
	// The file's time on the boot clock, which process start times count
	// in (clock ticks, 100 a second).
	var boot unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot); err != nil {
		return 0, 0, false
	}
	written := time.Duration(boot.Nano()) - time.Since(fi.ModTime())
	const tick = 10 * time.Millisecond
	started := time.Duration(start) * tick
	if started > written+2*tick || started < written-5*time.Second {
		return 0, 0, false
	}
	return pid, start, true
}

// watchRecoveredExec watches a recovered exec'd process through a pidfd,
// once its pid is known to still name it (the start time it had).
func (b *Backend) watchRecoveredExec(p *proc) {
	fd, err := unix.PidfdOpen(p.pid, 0)
	if err != nil {
		p.SetExited(int(b.lostExit(p.pid)))
		return
	}
	// Checked after the pidfd is open: a pid reused before the open shows
	// another start time now, and the pidfd's process cannot be replaced.
	if t, err := procstat.StartTime(p.pid); err != nil || p.startTime == 0 || t != p.startTime {
		unix.Close(fd)
		p.SetExited(int(b.lostExit(p.pid)))
		return
	}
	sig, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		p.SetExited(int(b.lostExit(p.pid)))
		return
	}
	p.mu.Lock()
	p.pidfd = sig
	p.mu.Unlock()
	b.wg.Go(func() {
		ex, err := pidfd.Wait(b.life, p.pid, fd)
		if err != nil { // closing: the process keeps running
			p.mu.Lock()
			if p.pidfd >= 0 {
				unix.Close(p.pidfd)
				p.pidfd = -1
			}
			p.mu.Unlock()
			return
		}
		if ex.Child {
			p.SetExited(int(exitcode.Of(ex.Status)))
			return
		}
		p.SetExited(int(b.lostExit(p.pid)))
	})
}
