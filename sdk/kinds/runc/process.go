package runc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/keptio"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/procstat"
)

// procState is where a process is in its life, as containerd's runc shim
// tracks it.
type procState int

const (
	stateCreated procState = iota
	stateRunning
	statePaused
	stateStopped
	stateDeleted
)

func (s procState) String() string {
	return [...]string{"created", "running", "paused", "stopped", "deleted"}[s]
}

// proc is a container's init or exec'd process, driven through runc. It
// follows containerd's runc shim (process.Init and process.Exec): the
// same states, runc calls, errors and exit codes; only the stdio differs
// (see FIFOHolder).
type proc struct {
	c     *container
	id    string // the container ID for the init, else the exec ID
	init  bool
	spec  specs.Process // an exec'd process's spec
	stdio backend.Stdio

	io      *procIO
	tty     *keptio.Terminal // a terminal copied here (see keptTerminal)
	console console.Console  // else a terminal copied by containerd's console copy
	wg      sync.WaitGroup   // the console copy

	// mu serializes the state changes, as in containerd: runc calls are
	// made under it, so an exit seen during Start is recorded after it.
	mu     sync.Mutex
	state  procState
	pid    int
	status int
	exited time.Time
	done   chan struct{}
	// startTime is an exec'd process's start time (clock ticks after
	// boot), read before it is watched (it cannot be reaped before):
	// it tells the process from a later one with its pid after a
	// restart (see RecoverExec).
	startTime uint64
	// pidfd signals a recovered exec'd process (-1: none), so that a
	// signal never reaches a process that reused its pid.
	pidfd int
	// zombie: an exec'd process that exited is left unreaped until the
	// engine recorded its exit (see ExitRecorded).
	zombie bool
}

func newProc(c *container, id string, init bool, stdio backend.Stdio) *proc {
	return &proc{c: c, id: id, init: init, stdio: stdio, done: make(chan struct{}), pidfd: -1}
}

func (p *proc) rt() *gorunc.Runc { return p.c.rt }

// pidFile is where runc writes the process's pid.
func (p *proc) pidFile() string {
	if p.init {
		return filepath.Join(p.c.bundle, "init.pid")
	}
	return filepath.Join(p.c.bundle, p.id+".pid")
}

// ioContext carries the containerd namespace a logging binary or console
// copy is told.
func (p *proc) ioContext(ctx context.Context) context.Context {
	if _, err := namespaces.NamespaceRequired(ctx); err != nil {
		return namespaces.WithNamespace(ctx, p.c.s.cfg.Namespace)
	}
	return ctx
}

// create runs `runc create` for the init (its state is "created" after).
func (p *proc) create(ctx context.Context) (retErr error) {
	b := p.c.s.b
	ctx = p.ioContext(ctx)
	t0 := time.Now()
	pio, err := openIO(ctx, b.cfg.FIFOHolder, p.stdio, p.id, p.c.s.cfg.Namespace)
	if err != nil {
		return fmt.Errorf("failed to create init process I/O: %w", err)
	}
	b.span(PhaseIO, p.c.s.cfg.ID, p.c.id, t0)
	p.io = pio
	defer func() {
		if retErr != nil {
			_ = pio.Close()
		}
	}()
	opts := &gorunc.CreateOpts{PidFile: p.pidFile()}
	var socket *gorunc.Socket
	if p.stdio.Terminal {
		if socket, err = gorunc.NewTempConsoleSocket(); err != nil {
			return fmt.Errorf("failed to create OCI runtime console socket: %w", err)
		}
		defer socket.Close()
		opts.ConsoleSocket = socket
	} else {
		opts.IO = pio
	}
	t0 = time.Now()
	err = p.rt().Create(ctx, p.id, p.c.bundle, opts)
	pio.closeChildEnds() // the container has them now
	if err != nil {
		return p.runtimeError(err, "OCI runtime create failed")
	}
	b.span(PhaseRuncCreate, p.c.s.cfg.ID, p.c.id, t0)
	defer func() {
		if retErr != nil { // the container exists: remove it
			_ = p.rt().Delete(context.WithoutCancel(ctx), p.id, &gorunc.DeleteOpts{Force: true})
		}
	}()
	if socket != nil {
		if err := p.copyConsole(ctx, socket); err != nil {
			return err
		}
	}
	pid, err := gorunc.ReadPidFile(opts.PidFile)
	if err != nil {
		return fmt.Errorf("failed to retrieve OCI runtime container pid: %w", err)
	}
	p.pid = pid
	return nil
}

// ttyName is where the store keeps the process's terminal.
func (p *proc) ttyName() string {
	name := "runc/tty/" + p.c.s.cfg.Namespace + "/" + p.c.id
	if !p.init {
		name += "/exec/" + p.id
	}
	return name
}

// copyConsole receives the pty master from runc and copies it to and from
// the FIFOs.
func (p *proc) copyConsole(ctx context.Context, socket *gorunc.Socket) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	master, err := socket.ReceiveMaster()
	if err != nil {
		return fmt.Errorf("failed to retrieve console master: %w", err)
	}
	b := p.c.s.b
	if keptTerminal(p.stdio) {
		fd, err := unix.FcntlInt(master.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		master.Close()
		if err != nil {
			return fmt.Errorf("console master: %w", err)
		}
		tty, err := keptio.StartTerminal(keptio.NewSet(b.cfg.FDStore, p.ttyName()), os.NewFile(uintptr(fd), "pty master"), p.stdio.Stdin, p.stdio.Stdout)
		if err != nil {
			return fmt.Errorf("failed to start console copy: %w", err)
		}
		b.addTTY(tty)
		p.tty = tty
		return nil
	}
	cons, err := p.c.s.b.platform.CopyConsole(ctx, master, p.id, p.stdio.Stdin, p.stdio.Stdout, p.stdio.Stderr, &p.wg)
	if err != nil {
		master.Close()
		return fmt.Errorf("failed to start console copy: %w", err)
	}
	p.console = cons
	return nil
}

// Start starts the init (`runc start`) or runs the exec'd process (`runc
// exec --detach`), and returns its host pid.
func (p *proc) Start(ctx context.Context) (uint32, error) {
	pid, err := p.start(ctx)
	if err == nil && !p.init {
		// Watched from now on (not under mu, which the exit takes): an
		// exec'd process that already exited is a zombie until then, so
		// its start time can still be read.
		st, _ := procstat.StartTime(pid)
		p.mu.Lock()
		p.startTime = st
		p.mu.Unlock()
		p.c.s.b.watchExec(pid, p)
	}
	return uint32(pid), err
}

func (p *proc) start(ctx context.Context) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case stateCreated:
	case stateDeleted:
		return 0, errors.New("cannot start a deleted process")
	default:
		return 0, fmt.Errorf("cannot start a %s process", p.state)
	}
	if p.init {
		t0 := time.Now()
		if err := p.rt().Start(ctx, p.id); err != nil {
			return 0, p.runtimeError(err, "OCI runtime start failed")
		}
		p.c.s.b.span(PhaseRuncStart, p.c.s.cfg.ID, p.c.id, t0)
		p.state = stateRunning
		return p.pid, nil
	}
	if err := p.startExec(ctx); err != nil {
		return 0, err
	}
	p.state = stateRunning
	return p.pid, nil
}

func (p *proc) startExec(ctx context.Context) (retErr error) {
	ctx = p.ioContext(ctx)
	pio, err := openIO(ctx, p.c.s.b.cfg.FIFOHolder, p.stdio, p.id, p.c.s.cfg.Namespace)
	if err != nil {
		return fmt.Errorf("failed to create init process I/O: %w", err)
	}
	p.io = pio
	defer func() {
		if retErr != nil {
			_ = pio.Close()
		}
	}()
	opts := &gorunc.ExecOpts{PidFile: p.pidFile(), Detach: true}
	var socket *gorunc.Socket
	if p.stdio.Terminal {
		if socket, err = gorunc.NewTempConsoleSocket(); err != nil {
			return fmt.Errorf("failed to create runc console socket: %w", err)
		}
		defer socket.Close()
		opts.ConsoleSocket = socket
	} else {
		opts.IO = pio
	}
	err = p.rt().Exec(ctx, p.c.id, p.spec, opts)
	pio.closeChildEnds()
	if err != nil {
		return p.runtimeError(err, "OCI runtime exec failed")
	}
	pid, err := gorunc.ReadPidFile(opts.PidFile)
	if err != nil {
		return fmt.Errorf("failed to retrieve OCI runtime exec pid: %w", err)
	}
	p.pid = pid
	if socket != nil {
		if err := p.copyConsole(ctx, socket); err != nil {
			_ = unix.Kill(pid, unix.SIGKILL) // the process has no terminal copy
			return err
		}
	}
	return nil
}

// Pid is the process's host pid (the init's exists after create).
func (p *proc) Pid() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return uint32(p.pid)
}

// Kill signals the process: the init through `runc kill` (all: every
// process of the container), an exec'd process directly.
func (p *proc) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == stateDeleted {
		return fmt.Errorf("cannot kill a deleted process: %w", errdefs.ErrNotFound)
	}
	if p.init {
		return checkKillError(p.rt().Kill(ctx, p.id, int(sig), &gorunc.KillOpts{All: all}))
	}
	switch {
	case p.pid == 0:
		return fmt.Errorf("process not created: %w", errdefs.ErrFailedPrecondition)
	case !p.exited.IsZero():
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	var err error
	if p.pidfd >= 0 {
		err = unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	} else {
		err = unix.Kill(p.pid, sig)
	}
	if err != nil {
		return fmt.Errorf("exec kill error: %w", checkKillError(err))
	}
	return nil
}

// ExitRecorded reaps an exec'd process left unreaped (see
// Backend.watchExec) once the engine recorded its exit.
func (p *proc) ExitRecorded() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reap()
}

// reap reaps an exited exec'd process left unreaped. Called with p.mu
// held.
func (p *proc) reap() {
	if p.zombie {
		procstat.Reap(p.pid)
		p.zombie = false
	}
}

// SetExited records the process's exit status (from Backend.watch).
func (p *proc) SetExited(status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case stateStopped, stateDeleted:
		return
	}
	paused := p.state == statePaused
	p.exited, p.status, p.state = time.Now(), status, stateStopped
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
	if p.console != nil {
		_ = p.c.s.b.platform.ShutdownConsole(context.Background(), p.console)
	}
	if p.tty != nil {
		tty := p.tty
		p.wg.Go(func() { tty.Exited(2 * time.Second) })
	}
	close(p.done)
	if paused {
		// A container frozen with its init gone: thaw what is left.
		if err := p.rt().Resume(context.Background(), p.id); err != nil {
			log.L.WithError(err).Error("resuming exited container from paused state")
		}
	}
}

// Wait waits for the process's exit.
func (p *proc) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-p.done:
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return backend.ExitStatus{Code: uint32(p.status), ExitedAt: p.exited.UTC()}, nil
}

// ResizePTY resizes the process's terminal, if it has one.
func (p *proc) ResizePTY(ctx context.Context, width, height uint32) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.state == stateDeleted:
		return errors.New("cannot resize a deleted process")
	case !p.init && p.state == stateStopped:
		return errors.New("cannot resize a stopped container")
	case p.tty != nil:
		return p.tty.Resize(width, height)
	case p.console == nil:
		return nil
	}
	return p.console.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}

// CloseStdin releases the held write end of the stdin FIFO.
func (p *proc) CloseStdin(ctx context.Context) error {
	p.mu.Lock()
	pio, tty := p.io, p.tty
	p.mu.Unlock()
	err := pio.closeStdin()
	if tty != nil {
		err = errors.Join(err, tty.CloseStdin())
	}
	return err
}

// Delete releases the process: the init's `runc delete` and rootfs
// unmount, and the stdio either way.
func (p *proc) Delete(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case stateRunning, statePaused:
		return fmt.Errorf("cannot delete a %s process", p.state)
	case stateDeleted:
		return fmt.Errorf("cannot delete a deleted process: %w", errdefs.ErrNotFound)
	}
	if p.init {
		p.c.oom.Flush() // before runc removes the cgroup
	}
	if err := waitTimeout(ctx, &p.wg, 10*time.Second); err != nil {
		log.G(ctx).WithError(err).Errorf("failed to drain process %s io", p.id)
	}
	var err error
	if p.init {
		err = p.rt().Delete(ctx, p.id, nil)
		// runc may have removed the container already.
		if err != nil {
			if strings.Contains(err.Error(), "does not exist") {
				err = nil
			} else {
				err = p.runtimeError(err, "failed to delete task")
			}
		}
	}
	if cerr := p.io.Close(); cerr != nil {
		log.G(ctx).WithError(cerr).Warnf("release stdio of process %s", p.id)
	}
	if p.tty != nil {
		if cerr := p.c.s.b.closeTTY(p.tty); cerr != nil {
			log.G(ctx).WithError(cerr).Warnf("release terminal of process %s", p.id)
		}
	}
	if p.init {
		if err2 := mount.UnmountRecursive(p.c.rootfs, 0); err2 != nil {
			log.G(ctx).WithError(err2).Warn("failed to cleanup rootfs mount")
			if err == nil {
				err = fmt.Errorf("failed rootfs umount: %w", err2)
			}
		}
	} else {
		p.reap()
		_ = os.Remove(p.pidFile())
		p.c.mu.Lock()
		delete(p.c.execs, p.id)
		p.c.mu.Unlock()
	}
	if err != nil {
		return err
	}
	p.state = stateDeleted
	return nil
}

// pause freezes the container (the init's process).
func (p *proc) pause(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case stateRunning:
	case stateCreated:
		return errors.New("cannot pause task in created state")
	case statePaused:
		return errors.New("cannot pause a paused container")
	case stateStopped:
		return errors.New("cannot pause a stopped container")
	default:
		return errors.New("cannot pause a deleted process")
	}
	if err := p.rt().Pause(ctx, p.id); err != nil {
		return p.runtimeError(err, "OCI runtime pause failed")
	}
	p.state = statePaused
	return nil
}

// resume thaws the container.
func (p *proc) resume(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case statePaused:
	case stateCreated:
		return errors.New("cannot resume task in created state")
	case stateRunning:
		return errors.New("cannot resume a running process")
	case stateStopped:
		return errors.New("cannot resume a stopped container")
	default:
		return errors.New("cannot resume a deleted process")
	}
	if err := p.rt().Resume(ctx, p.id); err != nil {
		return p.runtimeError(err, "OCI runtime resume failed")
	}
	p.state = stateRunning
	return nil
}

// update changes the container's resources.
func (p *proc) update(ctx context.Context, res *specs.LinuxResources) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case stateStopped:
		return errors.New("cannot update a stopped container")
	case stateDeleted:
		return errors.New("cannot update a deleted process")
	}
	return p.rt().Update(ctx, p.id, res)
}

// canExec tells whether the container takes a new process.
func (p *proc) canExec() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case statePaused, stateStopped, stateDeleted:
		return fmt.Errorf("cannot exec in a %s state", p.state)
	}
	return nil
}

// runtimeError is containerd's: runc's last logged error when there is
// one, else err.
func (p *proc) runtimeError(rErr error, msg string) error {
	if rErr == nil {
		return nil
	}
	rMsg, err := lastRuntimeError(p.rt())
	switch {
	case err != nil:
		return fmt.Errorf("%s: %s (%s): %w", msg, "unable to retrieve OCI runtime error", err.Error(), rErr)
	case rMsg == "":
		return fmt.Errorf("%s: %w", msg, rErr)
	default:
		return fmt.Errorf("%s: %s", msg, rMsg)
	}
}

// lastRuntimeError reads the last error in runc's JSON log.
func lastRuntimeError(r *gorunc.Runc) (string, error) {
	if r.Log == "" {
		return "", nil
	}
	f, err := os.OpenFile(r.Log, os.O_RDONLY, 0o400)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var (
		errMsg string
		entry  struct {
			Level string
			Msg   string
			Time  time.Time
		}
	)
	dec := json.NewDecoder(f)
	for err = nil; err == nil; {
		if err = dec.Decode(&entry); err != nil && err != io.EOF {
			return "", err
		}
		if entry.Level == "error" {
			errMsg = strings.TrimSpace(entry.Msg)
		}
	}
	return errMsg, nil
}

// checkKillError is containerd's classification of kill errors.
func checkKillError(err error) error {
	if err == nil {
		return nil
	}
	if strings.Contains(err.Error(), "os: process already finished") ||
		strings.Contains(err.Error(), "container not running") ||
		strings.Contains(strings.ToLower(err.Error()), "no such process") ||
		errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	} else if strings.Contains(err.Error(), "does not exist") {
		return fmt.Errorf("no such container: %w", errdefs.ErrNotFound)
	}
	return fmt.Errorf("unknown error after kill: %w", err)
}

// waitTimeout waits for wg, at most timeout.
func waitTimeout(ctx context.Context, wg *sync.WaitGroup, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
