package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/pdeathsig"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/keptio"
)

// initProc is a subcontainer's init. It is not containerd's runc
// process.Init because runsc differs from runc for subcontainers: their
// stdio is the one of `runsc start` (not of `runsc create`), their
// terminal's master comes through the console socket at start, and their
// exit is known from `runsc wait` (the pid runsc reports is the
// sandbox's).
type initProc struct {
	c        *container
	stdio    backend.Stdio
	rootfs   string
	pid      int
	terminal bool

	rio    gorunc.IO      // pipes to the container (no terminal)
	socket *gorunc.Socket // console socket (terminal)
	// streams copy the pipes, tty the terminal's master, with their
	// descriptors kept in the backend's FDStore (see package keptio).
	streams *keptio.Streams
	tty     *keptio.Terminal
	stdin   io.Closer // a terminal's stdin FIFO, held from create to start

	mu      sync.Mutex
	started bool
	// startFailed: runsc start failed, the sentry may hold the container's
	// stdio and rootfs files until the sandbox ends.
	startFailed bool
	// ended: the init's exit was seen (runsc wait returned), its
	// output may still be draining before exited is closed.
	ended   bool
	exited  chan struct{}
	code    int
	at      time.Time
	deleted bool
}

// newInitProc prepares the stdio of a subcontainer's init before `runsc
// create`: the console socket for a terminal, else pipes copied to the
// stdio paths (FIFOs or files). The caller passes create the socket.
func newInitProc(ctx context.Context, c *container, stdio backend.Stdio, rootfs string) (_ *initProc, retErr error) {
	p := &initProc{c: c, stdio: stdio, rootfs: rootfs, terminal: stdio.Terminal, exited: make(chan struct{})}
	defer func() {
		if retErr != nil {
			p.closeIO()
		}
	}()
	if p.terminal {
		s, err := gorunc.NewTempConsoleSocket()
		if err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		p.socket = s
		if stdio.Stdin != "" {
			// Held from create on, as containerd's shim does, so that
			// the writer's open does not wait for start.
			in, err := fifo.OpenFifo(context.Background(), stdio.Stdin, unix.O_RDONLY|unix.O_NONBLOCK, 0)
			if err != nil {
				return nil, fmt.Errorf("open stdin %s: %w", stdio.Stdin, err)
			}
			p.stdin = in
		}
		return p, nil
	}
	if stdio.Stdin == "" && stdio.Stdout == "" && stdio.Stderr == "" {
		return p, nil
	}
	rio, streams, err := pipeStreams(p.c.s.b, p.keptSet(), stdio)
	if err != nil {
		return nil, err
	}
	p.rio, p.streams = rio, streams
	p.c.s.b.addKept(p.streams)
	return p, nil
}

// keptSet is where the backend's FDStore keeps the init's stdio.
func (p *initProc) keptSet() *keptio.Set {
	return keptio.NewSet(p.c.s.b.cfg.FDStore, "gvisor/"+p.c.s.cfg.ID+"/"+p.c.id)
}

// createArgs are the stdio flags of `runsc create`.
func (p *initProc) createArgs() []string {
	if p.socket != nil {
		return []string{"--console-socket", p.socket.Path()}
	}
	return nil
}

// Start runs `runsc start` with the container's stdio, then waits for the
// init's exit with `runsc wait`.
func (p *initProc) Start(ctx context.Context) (uint32, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return 0, fmt.Errorf("container %q was already started: %w", p.c.id, errdefs.ErrFailedPrecondition)
	}
	ctx, cancel := context.WithTimeout(ctx, p.c.s.b.cfg.CommandTimeout)
	defer cancel()
	s := p.c.s
	cmd := exec.CommandContext(ctx, s.b.cfg.Binary, append(globalArgs(p.c.rt), "start", p.c.id)...)
	cmd.WaitDelay = time.Second
	if p.rio != nil {
		p.rio.Set(cmd)
	}
	var conc chan error
	if p.socket != nil {
		conc = make(chan error, 1)
		go func() {
			con, err := p.socket.ReceiveMaster()
			if err == nil {
				var fd int
				fd, err = unix.FcntlInt(con.Fd(), unix.F_DUPFD_CLOEXEC, 0)
				con.Close()
				if err == nil {
					p.tty, err = keptio.StartTerminal(p.keptSet(), os.NewFile(uintptr(fd), "pty master"), p.stdio.Stdin, p.stdio.Stdout)
				}
				if err == nil {
					s.b.addKept(p.tty)
					if p.stdin != nil { // the terminal holds its own
						p.stdin.Close()
						p.stdin = nil
					}
				}
			}
			conc <- err
		}()
	}
	out, err := os.CreateTemp(p.c.bundle, ".runsc-start-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	if cmd.Stdout == nil {
		cmd.Stdout = out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = out
	}
	err = pdeathsig.Run(cmd, unix.SIGKILL)
	if p.rio != nil {
		// The sandbox holds the container's ends now.
		if c, ok := p.rio.(interface{ CloseAfterStart() error }); ok {
			_ = c.CloseAfterStart()
		}
	}
	if err != nil {
		// A gofer may have started: reap it, or runsc delete waits for it.
		s.reapGofer(p.c.id)
		p.startFailed = true
		if p.socket != nil {
			p.socket.Close()
		}
		msg, _ := os.ReadFile(out.Name())
		return 0, fmt.Errorf("runsc start %s: %v: %s%s", p.c.id, err, msg, lastLogLine(p.c.rt.Log))
	}
	if conc != nil {
		select {
		case err := <-conc:
			if err != nil {
				return 0, fmt.Errorf("terminal of %s: %w", p.c.id, err)
			}
		case <-ctx.Done():
			p.socket.Close()
			return 0, fmt.Errorf("terminal of %s: runsc sent no master: %w", p.c.id, ctx.Err())
		}
	}
	p.started = true
	s.reapGofer(p.c.id)
	p.c.waitInit()
	p.c.showStartLimits(ctx)
	return uint32(p.pid), nil
}

// end tells whether the container runs and when its init failed (see
// containerEnd).
func (p *initProc) end() (bool, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.exited:
		if p.code != 0 {
			return false, p.at
		}
		return false, time.Time{}
	default:
		return true, time.Time{}
	}
}

// setExited records the init's exit; the output copies get a moment to
// drain so that Wait's callers find the output complete.
func (p *initProc) setExited(code int) {
	p.mu.Lock()
	drain := p.started
	p.ended = true
	p.mu.Unlock()
	if drain {
		if p.streams != nil {
			p.streams.Drained(2 * time.Second)
		}
		if p.tty != nil {
			p.tty.Exited(2 * time.Second)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.exited:
		return
	default:
	}
	p.code, p.at = code, time.Now().UTC()
	if code != 0 {
		p.c.s.failed(p.c.id) // an OOM kill is reported before the exit is seen
	}
	close(p.exited)
}

func (p *initProc) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	p.mu.Lock()
	started := p.started
	p.mu.Unlock()
	if !started {
		// Created but not (or not successfully) started: nothing runs
		// in the sandbox yet, so the signal ends it, as it ends a runc
		// container's waiting init. Delete removes it from runsc.
		p.setExited(128 + int(sig))
		return nil
	}
	select {
	case <-p.exited:
		return fmt.Errorf("container %q has exited: %w", p.c.id, errdefs.ErrNotFound)
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, p.c.s.b.cfg.CommandTimeout)
	defer cancel()
	if err := p.c.rt.Kill(ctx, p.c.id, int(sig), &gorunc.KillOpts{All: all}); err != nil {
		// The init may have exited just before the signal: its exit is
		// then being drained (ended), not yet reported by runsc wait
		// (runsc's state says stopped), or not even that (the sentry
		// has no such process, runsc's state still says running).
		// containerd's stop treats not found as "already gone" and
		// waits for the exit.
		p.mu.Lock()
		ended := p.ended
		p.mu.Unlock()
		if ended || noSuchProcess(err) || p.c.stopped(ctx) {
			return fmt.Errorf("container %q has exited: %w", p.c.id, errdefs.ErrNotFound)
		}
		return fmt.Errorf("kill %q: %w", p.c.id, err)
	}
	return nil
}

func (p *initProc) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-p.exited:
		return backend.ExitStatus{Code: uint32(p.code), ExitedAt: p.at}, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

func (p *initProc) ResizePTY(ctx context.Context, width, height uint32) error {
	p.mu.Lock()
	tty := p.tty
	p.mu.Unlock()
	if tty == nil {
		return fmt.Errorf("container %q has no terminal: %w", p.c.id, errdefs.ErrFailedPrecondition)
	}
	return tty.Resize(width, height)
}

// CloseStdin lets go of the held write end of the stdin FIFO: the
// container reads end of file once containerd's writer is closed too.
func (p *initProc) CloseStdin(ctx context.Context) error {
	switch {
	case p.tty != nil:
		return p.tty.CloseStdin()
	case p.streams != nil:
		return p.streams.CloseInput()
	}
	return nil
}

// Delete removes the subcontainer from runsc and releases its stdio and
// rootfs.
func (p *initProc) Delete(ctx context.Context) error {
	p.mu.Lock()
	if p.deleted {
		p.mu.Unlock()
		return nil
	}
	p.deleted = true
	p.mu.Unlock()
	err := p.c.s.runsc(ctx, "delete", "--force", p.c.id)
	if err != nil && notExist(err) {
		err = nil
	}
	p.closeIO()
	p.mu.Lock()
	failed := p.startFailed
	p.mu.Unlock()
	if p.rootfs != "" && failed {
		err = errors.Join(err, mount.UnmountRecursive(p.rootfs, unix.MNT_DETACH))
	} else if p.rootfs != "" {
		if uerr := mount.UnmountRecursive(p.rootfs, 0); uerr != nil {
			// The sentry can still hold files of a container whose start
			// failed (directfs): detach the mount, it goes with them.
			err = errors.Join(err, mount.UnmountRecursive(p.rootfs, unix.MNT_DETACH))
		}
	}
	return err
}

func (p *initProc) closeIO() {
	if p.rio != nil {
		p.rio.Close()
	}
	if p.stdin != nil {
		p.stdin.Close()
	}
	if p.socket != nil {
		p.socket.Close()
	}
	if p.streams != nil {
		_ = p.c.s.b.closeKept(p.streams)
	}
	if p.tty != nil {
		_ = p.c.s.b.closeKept(p.tty)
	}
}

// Pid is the sandbox's pid: runsc has no host process per container.
func (p *initProc) Pid() uint32 { return uint32(p.pid) }

// lastLogLine is the last message in runsc's JSON log, as ": msg" (or "").
func lastLogLine(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var l struct {
			Msg string `json:"msg"`
		}
		if json.Unmarshal([]byte(lines[i]), &l) == nil && l.Msg != "" {
			return ": " + l.Msg
		}
	}
	return ""
}

// pipeStreams makes the pipes a process (a subcontainer's init, an exec'd
// process) gets as its stdio from runsc, and the copies between them and
// the stdio paths (FIFOs or files), kept in set. The caller passes the
// IO to runsc and closes it on failure.
func pipeStreams(b *Backend, set *keptio.Set, stdio backend.Stdio) (_ gorunc.IO, _ *keptio.Streams, retErr error) {
	rio, err := gorunc.NewPipeIO(0, 0, func(o *gorunc.IOOption) {
		o.OpenStdin = stdio.Stdin != ""
		o.OpenStdout = stdio.Stdout != ""
		o.OpenStderr = stdio.Stderr != ""
	})
	if err != nil {
		return nil, nil, err
	}
	streams := keptio.NewStreams(set)
	defer func() {
		if retErr != nil {
			rio.Close()
			_ = streams.Close()
		}
	}()
	for _, o := range []struct {
		stream, path string
		r            io.Reader
	}{{"stdout", stdio.Stdout, rio.Stdout()}, {"stderr", stdio.Stderr, rio.Stderr()}} {
		if o.path == "" {
			continue
		}
		f, ok := o.r.(*os.File)
		if !ok {
			return nil, nil, fmt.Errorf("%s pipe is a %T", o.stream, o.r)
		}
		if err := streams.Output(o.stream, f, o.path); err != nil {
			return nil, nil, fmt.Errorf("open %s %s: %w", o.stream, o.path, err)
		}
	}
	if stdio.Stdin != "" {
		f, ok := rio.Stdin().(*os.File)
		if !ok {
			return nil, nil, fmt.Errorf("stdin pipe is a %T", rio.Stdin())
		}
		if err := streams.Input(f, stdio.Stdin); err != nil {
			return nil, nil, fmt.Errorf("open stdin %s: %w", stdio.Stdin, err)
		}
	}
	b.addKept(streams)
	return rio, streams, nil
}

// noSuchProcess reports a kill that found no process to signal (runsc
// kill: "signaling process in container ... PID 0: no such process"), as
// containerd's runc shim recognizes runc's (process/utils.go
// checkKillError).
func noSuchProcess(err error) bool {
	return errors.Is(err, syscall.ESRCH) || strings.Contains(strings.ToLower(err.Error()), "no such process")
}
