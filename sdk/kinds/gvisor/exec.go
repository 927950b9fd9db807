package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/pdeathsig"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/exitcode"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/keptio"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/pidfd"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/procstat"
)

// execProc is an exec'd process: a `runsc exec` host process (started
// with --detach: runsc leaves a child of its own behind, reparented to
// this process, the child subreaper) that runs the process in the sandbox,
// forwards signals to it and exits with its status.
//
// Its stdio is that of the `runsc exec` process, which hands it to the
// sandbox: pipes, copied here from and to the stdio paths, or a terminal
// whose master runsc sends through the console socket, copied here too
// (package keptio). With the backend's FDStore every descriptor of the
// copies is kept beyond this process, so that after a restart RecoverExec
// resumes them with no byte lost.
//
// Its exit is watched through a pidfd, and the `runsc exec` process is
// left a zombie until the engine recorded the exit (ExitRecorded) or
// Delete: its status is reported without reaping it, so that if this
// process dies before the engine recorded the exit, the process that reaps
// it next (the supervisor) learns the status and the next sandboxer
// reports the real exit code, not 255.
type execProc struct {
	c     *container
	id    string
	spec  []byte // the process's OCI spec (JSON)
	stdio backend.Stdio

	mu      sync.Mutex
	state   execState
	pid     int
	ipid    int    // the process's pid in the sandbox (0: unknown)
	start   uint64 // the `runsc exec` process's start time
	pidfd   int    // signals it (-1: none)
	child   bool   // a child of this process: reaped by Delete
	streams *keptio.Streams
	tty     *keptio.Terminal
	exited  chan struct{}
	code    uint32
	at      time.Time
}

type execState int

const (
	execCreated execState = iota
	execRunning
	execStopped
	execDeleted
)

func newExecProc(c *container, id string, spec []byte, stdio backend.Stdio) *execProc {
	return &execProc{c: c, id: id, spec: spec, stdio: stdio, pidfd: -1, exited: make(chan struct{})}
}

// keptSet is where the backend's FDStore keeps the process's stdio.
func (p *execProc) keptSet() *keptio.Set {
	return keptio.NewSet(p.c.s.b.cfg.FDStore, "gvisor/"+p.c.s.cfg.ID+"/"+p.c.id+"/exec/"+p.id)
}

// pidFile is where runsc writes the `runsc exec` process's pid.
func (p *execProc) pidFile() string { return filepath.Join(p.c.bundle, "exec-"+p.id+".pid") }

// internalPidFile is where runsc writes the process's pid in the
// sandbox's root PID namespace (what `runsc kill --pid` takes).
func (p *execProc) internalPidFile() string {
	return filepath.Join(p.c.bundle, "exec-"+p.id+".ipid")
}

// specFile holds the process's spec for `runsc exec --process`.
func (p *execProc) specFile() string { return filepath.Join(p.c.bundle, "exec-"+p.id+".json") }

// Start runs `runsc exec --detach` and watches the process it leaves.
func (p *execProc) Start(ctx context.Context) (uint32, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case execCreated:
	case execDeleted:
		return 0, fmt.Errorf("exec %q was deleted: %w", p.id, errdefs.ErrNotFound)
	default:
		return 0, fmt.Errorf("exec %q was already started: %w", p.id, errdefs.ErrFailedPrecondition)
	}
	b := p.c.s.b
	ctx, cancel := context.WithTimeout(ctx, b.cfg.CommandTimeout)
	defer cancel()
	if err := os.WriteFile(p.specFile(), p.spec, 0o600); err != nil {
		return 0, fmt.Errorf("write process spec of exec %q: %w", p.id, err)
	}
	defer os.Remove(p.specFile())
	args := append(globalArgs(p.c.rt), "exec", "--process", p.specFile(), "--detach", "--pid-file", p.pidFile(), "--internal-pid-file", p.internalPidFile())
	var (
		rio    gorunc.IO
		socket *gorunc.Socket
		err    error
	)
	switch {
	case p.stdio.Terminal:
		if socket, err = gorunc.NewTempConsoleSocket(); err != nil {
			return 0, fmt.Errorf("console socket: %w", err)
		}
		defer socket.Close()
		args = append(args, "--console-socket", socket.Path())
	case p.stdio.Stdin == "" && p.stdio.Stdout == "" && p.stdio.Stderr == "":
		if rio, err = gorunc.NewNullIO(); err != nil {
			return 0, err
		}
	default:
		if rio, p.streams, err = pipeStreams(b, p.keptSet(), p.stdio); err != nil {
			return 0, err
		}
	}
	fail := func(err error) (uint32, error) {
		if rio != nil {
			rio.Close()
		}
		p.closeIO()
		_ = os.Remove(p.pidFile())
		_ = os.Remove(p.internalPidFile())
		return 0, err
	}
	cmd := exec.CommandContext(ctx, b.cfg.Binary, append(args, p.c.id)...)
	cmd.WaitDelay = time.Second
	out, err := os.CreateTemp(p.c.bundle, ".runsc-exec-")
	if err != nil {
		return fail(err)
	}
	defer os.Remove(out.Name())
	defer out.Close()
	if rio != nil {
		rio.Set(cmd)
	}
	if cmd.Stdout == nil {
		cmd.Stdout = out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = out
	}
	type master struct {
		tty *keptio.Terminal
		err error
	}
	var conc chan master
	if socket != nil {
		conc = make(chan master, 1)
		go func() {
			con, err := socket.ReceiveMaster()
			if err != nil {
				conc <- master{err: err}
				return
			}
			fd, err := unix.FcntlInt(con.Fd(), unix.F_DUPFD_CLOEXEC, 0)
			con.Close()
			if err != nil {
				conc <- master{err: err}
				return
			}
			tty, err := keptio.StartTerminal(p.keptSet(), os.NewFile(uintptr(fd), "pty master"), p.stdio.Stdin, p.stdio.Stdout)
			conc <- master{tty, err}
		}()
	}
	// It dies with this process (a `runsc exec --detach` returns once the
	// process it leaves behind runs, which is not its child).
	err = pdeathsig.Run(cmd, unix.SIGKILL)
	if rio != nil {
		// The `runsc exec` process holds the process's ends now.
		if c, ok := rio.(interface{ CloseAfterStart() error }); ok {
			_ = c.CloseAfterStart()
		}
	}
	if err != nil {
		if socket != nil {
			socket.Close() // ends a wait for the master
			if m := <-conc; m.tty != nil {
				_ = m.tty.Close()
			}
		}
		msg, _ := os.ReadFile(out.Name())
		return fail(fmt.Errorf("runsc exec in %s: %v: %s%s", p.c.id, err, strings.TrimSpace(string(msg)), lastLogLine(p.c.rt.Log)))
	}
	pid, err := gorunc.ReadPidFile(p.pidFile())
	if err != nil {
		return fail(fmt.Errorf("pid of exec %q: %w", p.id, err))
	}
	if conc != nil {
		var m master
		select {
		case m = <-conc:
		case <-ctx.Done():
			socket.Close()
			if m = <-conc; m.err == nil {
				m.err = ctx.Err()
			}
		}
		if m.err != nil {
			if m.tty != nil {
				_ = m.tty.Close()
			}
			_ = unix.Kill(pid, unix.SIGKILL) // the process has no terminal
			p.pid, p.child = pid, true
			p.watch()
			return fail(fmt.Errorf("terminal of exec %q: %w", p.id, m.err))
		}
		p.tty = m.tty
		b.addKept(p.tty)
	}
	// Read before the exit is watched: until then an exited process is a
	// zombie, and its start time is still there.
	p.start, _ = procstat.StartTime(pid)
	p.ipid, _ = gorunc.ReadPidFile(p.internalPidFile())
	p.pid, p.child, p.state = pid, true, execRunning
	p.watch()
	return uint32(pid), nil
}

// watch waits for the `runsc exec` process (p.pid, a child of this
// process) through a pidfd and records its exit without reaping it.
// Called with p.mu held.
func (p *execProc) watch() {
	b := p.c.s.b
	fd, err := unix.PidfdOpen(p.pid, 0)
	if err != nil {
		go p.setExited(p.lostExit())
		return
	}
	if sig, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0); err == nil {
		p.pidfd = sig
	}
	pid := p.pid
	b.wg.Go(func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-b.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		if _, err := pidfd.WaitNoReap(ctx, pid, fd); err != nil {
			return // closing: the process keeps running
		}
		code, ok := procstat.ExitOfZombie(pid)
		if !ok {
			code = p.lostExit()
		}
		p.setExited(code)
	})
}

// lostExit is the exit code of a `runsc exec` process that this process
// cannot reap (it exited while no sandboxer watched it).
func (p *execProc) lostExit() uint32 {
	if f := p.c.s.b.cfg.OrphanExit; f != nil {
		if code, _, ok := f(p.pid); ok {
			return code
		}
	}
	return exitcode.Unknown
}

// setExited records the exit, once the output copies drained (or after a
// moment), so that Wait's callers find the output complete.
func (p *execProc) setExited(code uint32) {
	p.mu.Lock()
	streams, tty := p.streams, p.tty
	p.mu.Unlock()
	if streams != nil {
		streams.Drained(2 * time.Second)
	}
	if tty != nil {
		tty.Exited(2 * time.Second)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.exited:
		return
	default:
	}
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
	if p.state == execRunning {
		p.state = execStopped
	}
	p.code, p.at = code, time.Now().UTC()
	close(p.exited)
	if p.state == execDeleted {
		p.reap() // deleted before its exit was seen
	}
}

// ExitRecorded reaps the `runsc exec` process once the engine recorded its
// exit.
func (p *execProc) ExitRecorded() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reap()
}

// reap reaps the exited `runsc exec` process if it is a child of this
// process. Called with p.mu held.
func (p *execProc) reap() {
	select {
	case <-p.exited:
	default:
		return // running (or its exit not seen yet)
	}
	if p.child && p.pid > 0 {
		procstat.Reap(p.pid)
		p.child = false
	}
}

// Pid is the host pid of the `runsc exec` process.
func (p *execProc) Pid() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return uint32(p.pid)
}

// RecoveryState returns the `runsc exec` process's start time.
func (p *execProc) RecoveryState() ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return json.Marshal(execRecovery{StartTime: p.start, InternalPid: p.ipid})
}

// execRecovery is the recovery state of an exec'd process (see
// backend.RecoveryStater): the start time that tells its `runsc exec`
// process from a later process with the same pid, and the process's pid
// in the sandbox.
type execRecovery struct {
	StartTime   uint64 `json:"startTime"`
	InternalPid int    `json:"internalPid,omitempty"`
}

// Kill signals the process. SIGKILL and SIGSTOP, which the `runsc exec`
// process cannot catch and forward, go to the process in the sandbox with
// `runsc kill --pid` (a SIGKILL of the `runsc exec` process alone would
// end it and leave the process running in the sandbox, as an ExecSync's
// timeout did); other signals go to the `runsc exec` process, which
// forwards them.
func (p *execProc) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	p.mu.Lock()
	switch {
	case p.state == execDeleted:
		p.mu.Unlock()
		return fmt.Errorf("exec %q was deleted: %w", p.id, errdefs.ErrNotFound)
	case p.pid == 0:
		p.mu.Unlock()
		return fmt.Errorf("process not created: %w", errdefs.ErrFailedPrecondition)
	case p.state == execStopped || p.pidfd < 0:
		p.mu.Unlock()
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	ipid := p.ipid
	p.mu.Unlock()
	if (sig == unix.SIGKILL || sig == unix.SIGSTOP) && ipid > 0 {
		err := p.c.s.runscWith(ctx, p.c.rt, p.c.bundle, "kill", "--pid", strconv.Itoa(ipid), p.c.id, strconv.Itoa(int(sig)))
		if err == nil {
			return nil
		}
		p.mu.Lock()
		done := p.state != execRunning
		p.mu.Unlock()
		if done {
			return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
		}
		if sig == unix.SIGSTOP {
			return fmt.Errorf("exec kill error: %w", err)
		}
		// The sandbox does not answer: end the `runsc exec` process at
		// least.
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd < 0 {
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	if err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
		}
		return fmt.Errorf("exec kill error: %w", err)
	}
	return nil
}

func (p *execProc) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-p.exited:
		p.mu.Lock()
		defer p.mu.Unlock()
		return backend.ExitStatus{Code: p.code, ExitedAt: p.at}, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

func (p *execProc) ResizePTY(ctx context.Context, width, height uint32) error {
	p.mu.Lock()
	tty := p.tty
	p.mu.Unlock()
	if tty == nil {
		return fmt.Errorf("exec %q has no terminal: %w", p.id, errdefs.ErrFailedPrecondition)
	}
	return tty.Resize(width, height)
}

// CloseStdin lets go of the held write end of the stdin FIFO.
func (p *execProc) CloseStdin(ctx context.Context) error {
	p.mu.Lock()
	tty, streams := p.tty, p.streams
	p.mu.Unlock()
	switch {
	case tty != nil:
		return tty.CloseStdin()
	case streams != nil:
		return streams.CloseInput()
	}
	return nil
}

// Delete releases the process's stdio and reaps its `runsc exec` process.
// A running process cannot be deleted.
func (p *execProc) Delete(ctx context.Context) error {
	p.mu.Lock()
	if p.state == execRunning {
		p.mu.Unlock()
		return fmt.Errorf("cannot delete a running process: %w", errdefs.ErrFailedPrecondition)
	}
	if p.state == execDeleted {
		p.mu.Unlock()
		return nil
	}
	p.state = execDeleted
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
	p.reap()
	p.mu.Unlock()
	p.closeIO()
	_ = os.Remove(p.pidFile())
	_ = os.Remove(p.internalPidFile())
	p.c.mu.Lock()
	delete(p.c.execs, p.id)
	p.c.mu.Unlock()
	return nil
}

// closeIO releases the stdio copies (in the FDStore too).
func (p *execProc) closeIO() {
	b := p.c.s.b
	if p.streams != nil {
		_ = b.closeKept(p.streams)
	}
	if p.tty != nil {
		_ = b.closeKept(p.tty)
	}
}

// RecoverExec re-attaches to an exec'd process after a sandboxer restart.
// Its stdio copies resume from what the backend's FDStore kept (without a
// store they are gone). A started process is the recorded one only if its
// pid still names a process started at the recorded start time; then it
// is watched through a pidfd (and signalled through it), and its exit code
// comes from [Config.OrphanExit] (the supervisor reaped it), else it is
// unknown (255). Otherwise it exited while no sandboxer watched it, and
// its exit code comes from OrphanExit too. One whose start was cut short
// by the restart but that runsc did start (its pid file names a `runsc
// exec` process for it) is recovered as started, so that it can be killed
// and waited for; one never started can be started.
func (c *container) RecoverExec(ctx context.Context, cfg backend.ExecConfig, rec backend.ExecRecord) (backend.Process, error) {
	if cfg.Process == nil {
		return nil, fmt.Errorf("exec %q in container %q has no process spec: %w", cfg.ID, c.id, errdefs.ErrInvalidArgument)
	}
	var st execRecovery
	if len(rec.State) > 0 {
		if err := json.Unmarshal(rec.State, &st); err != nil {
			return nil, fmt.Errorf("recovery state of exec %q: %v: %w", cfg.ID, err, errdefs.ErrInvalidArgument)
		}
	}
	data, err := json.Marshal(cfg.Process)
	if err != nil {
		return nil, err
	}
	p := newExecProc(c, cfg.ID, data, nullStdio(cfg.Stdio))
	if rec.Pid == 0 && !rec.Exited {
		if pid, ok := p.startedByRunsc(); ok {
			rec.Pid = uint32(pid)
			st.StartTime, _ = procstat.StartTime(pid)
		}
	}
	if rec.Pid != 0 {
		b := c.s.b
		if b.cfg.FDStore != nil {
			set := p.keptSet()
			if p.stdio.Terminal {
				tty, err := keptio.ResumeTerminal(set)
				if err != nil {
					return nil, fmt.Errorf("resume terminal of exec %q: %w", cfg.ID, err)
				}
				if tty != nil {
					p.tty = tty
					b.addKept(tty)
				}
			} else {
				p.streams = keptio.NewStreams(set)
				if err := p.streams.Resume(); err != nil {
					_ = p.streams.Close()
					return nil, fmt.Errorf("resume stdio of exec %q: %w", cfg.ID, err)
				}
				b.addKept(p.streams)
			}
		}
		p.mu.Lock()
		p.pid, p.start, p.ipid, p.state = int(rec.Pid), st.StartTime, st.InternalPid, execRunning
		if p.ipid == 0 {
			// Its start was cut short, or it was recorded by an older
			// sandboxer.
			p.ipid, _ = gorunc.ReadPidFile(p.internalPidFile())
		}
		if rec.Exited {
			p.state = execStopped
			p.mu.Unlock()
			// The engine has its status; what is left of its output
			// drains meanwhile.
			go p.setExited(exitcode.Unknown)
		} else {
			p.watchRecovered()
			p.mu.Unlock()
		}
	}
	c.mu.Lock()
	c.execs[cfg.ID] = p
	c.mu.Unlock()
	return p, nil
}

// watchRecovered watches a recovered `runsc exec` process, once its pid
// is known to still name it (the start time it had). Called with p.mu
// held.
func (p *execProc) watchRecovered() {
	fd, err := unix.PidfdOpen(p.pid, 0)
	if err != nil {
		go p.setExited(p.lostExit())
		return
	}
	// Checked after the pidfd is open: a pid reused before the open shows
	// another start time now, and the pidfd's process cannot be replaced.
	if t, err := procstat.StartTime(p.pid); err != nil || p.start == 0 || t != p.start {
		unix.Close(fd)
		go p.setExited(p.lostExit())
		return
	}
	unix.Close(fd)
	// Still a child when the same process recovers it (tests): then it
	// is reaped by Delete.
	var info unix.Siginfo
	p.child = unix.Waitid(unix.P_PID, p.pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil) == nil
	p.watch()
}

// startedByRunsc reads the pid file of an exec whose start was cut short,
// and returns the pid it names if that process is the `runsc exec` of
// this exec (its command line names the pid file), so that a pid reused
// later is not taken.
func (p *execProc) startedByRunsc() (int, bool) {
	pid, err := gorunc.ReadPidFile(p.pidFile())
	if err != nil || pid <= 0 {
		return 0, false
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0, false
	}
	args := strings.Split(string(cmd), "\x00")
	hasExec, hasPidFile := false, false
	for i, a := range args {
		hasExec = hasExec || a == "exec"
		hasPidFile = hasPidFile || a == "--pid-file="+p.pidFile() || (a == "--pid-file" && i+1 < len(args) && args[i+1] == p.pidFile())
	}
	return pid, hasExec && hasPidFile
}
